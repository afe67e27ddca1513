"""Issue 16 end to end: the VPS keeps a copy of chosen pages while home is up and serves them
while the cable is out (200, home's content, Age); other paths get the friendly 503, a
private/no-store page is never kept, and home's live pages are back after."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.budget import budget
from tests.e2e.conftest import cli, configure, crowd
from tests.e2e import labkit
from tests.e2e.labkit import report, start_watch, status
from tests.e2e.vpsmem import describe, footprint
from tests.helpers import wait_until
from vpnoffload.lab.netns import Lab

pytestmark = pytest.mark.root

HOSTNAME = "blog.example.org"
#: Issue 16: serving copies during an outage, every vpnoffload process together (RSS).
OUTAGE_MB = 32

def visit(lab: Lab, path: str, method: str = "GET") -> dict:
    return labkit.visit(lab, timeout=3, path=path, method=method)


def kept(lab: Lab, site: Path, limit: float) -> dict:
    """The service's offline_copy status once its first fetch is done (within ``limit`` s)."""
    def fetched() -> tuple[bool, dict]:
        entry = status(lab, site)[1]["services"][0].get("offline_copy") or {}
        return bool(entry.get("last_fetch")), entry
    return wait_until("the first offline-copy fetch", fetched, limit, interval=0.3)


def _served_copy(reply: dict) -> tuple[bool, dict]:
    """Is ``reply`` the kept copy (the page server has taken over the port and read its index)?"""
    return reply["status"] == 200 and "X-Offline-Copy" in reply.get("headers", {}), reply


def test_kept_pages_served_while_the_cable_is_out(lab: Lab, sites: tuple[Path, Path], capsys,
                                                  tmp_path: Path) -> None:
    vps_site, home_site = sites
    configure(lab, vps_site, home_site,
              ["web", "--listen", "80", "--target", "8080", "--check", "http:/", "--hostname", HOSTNAME,
               "--offline-copy", "/about.html", "--offline-copy", "/private"])
    lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080")
    assert lab.wait_tcp("home", "127.0.0.1", 8080)
    cli(lab, "vps", vps_site, "up", "vps")
    cli(lab, "home", home_site, "up", "home")
    started = time.monotonic()
    watch = start_watch(lab, vps_site, tmp_path / "watch.log")
    try:
        live = visit(lab, "/about.html")
        assert live["status"] == 200 and "written at home" in live["body"] and "X-Offline-Copy" not in live["headers"]

        # The first fetch within 15 s of watch starting: /about.html kept, /private refused.
        entry = kept(lab, vps_site, 15)
        report(capsys, f"first offline copy {time.monotonic() - started:.1f} s after watch started: {entry}")
        assert entry.get("kept") == 1 and entry["paths"] == 2, entry
        assert "/private refuse: Cache-Control: private" in entry["result"], entry
        index = vps_site / "state" / "run" / "copies" / "web"
        assert (index / "index").exists() and len([p for p in index.iterdir() if p.name != "index"]) == 1

        lab.pull_cable()
        crowd(lab, "^503 ", since=time.time())
        copy = wait_until("the kept copy is served", lambda: _served_copy(visit(lab, "/about.html")), 10)
        assert copy["status"] == 200, copy
        assert "written at home" in copy["body"] and "the live site is back soon" in copy["body"]
        assert copy["headers"]["Content-Type"] == "text/html; charset=utf-8" and copy["headers"].get("X-Offline-Copy")
        assert int(copy["headers"]["Age"]) >= 1
        head = visit(lab, "/about.html", "HEAD")
        assert head["status"] == 200 and head["body"] == "" and head["headers"]["Content-Length"] == \
            copy["headers"]["Content-Length"]
        for path in ("/private", "/whoami", "/"):
            other = visit(lab, path)
            assert other["status"] == 503 and HOSTNAME in other["body"], (path, other)
        outage = footprint(lab)
        report(capsys, f"serving copies during the outage: {describe(outage)} (goal <= {OUTAGE_MB} MB)")
        assert outage["rss_kb"] <= OUTAGE_MB * 1024

        lab.plug_cable()
        crowd(lab, "^200 ", since=time.time(), limit=30)
        back = visit(lab, "/about.html")
        assert back["status"] == 200 and "X-Offline-Copy" not in back["headers"], back
        assert visit(lab, "/private")["status"] == 200
    finally:
        watch.terminate()
        watch.wait(10)
        cli(lab, "home", home_site, "down", "home")
        cli(lab, "vps", vps_site, "down", "vps")
    assert time.monotonic() - started < budget().offline_copy_run
