"""Issue 7 (3) end to end: a service with two home boxes. New connections go to the
first healthy one, the visitor's real address is seen by whichever serves, and
the friendly page appears only when neither answers."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.budget import budget
from tests.e2e.conftest import cli, cli_argv, crowd
from tests.e2e import labkit
from tests.helpers import seconds_until
from vpnoffload.lab.netns import Lab

pytestmark = pytest.mark.root

def visit(lab: Lab) -> dict:
    return labkit.visit(lab, path="/")


def served_by(reply: dict) -> str | None:
    found = re.search(r"served from (\w+)", reply.get("body", ""))
    return found.group(1) if reply["status"] == 200 and found else ("page" if reply["status"] == 503 else None)


def wait_served_by(lab: Lab, who: str, limit: float = 10) -> float:
    return seconds_until(f"served by {who}", lambda: (served_by(r := visit(lab)) == who, r), limit, 0.1)

def test_first_healthy_home_serves_page_only_when_none(lab: Lab, sites: tuple[Path, Path], capsys) -> None:
    vps_site, home_site = sites
    attic_site = vps_site.parent / "attic"
    attic_site.mkdir(mode=0o755)
    # On the VPS: a second home box, then a service that prefers home and falls back to attic.
    cli(lab, "vps", vps_site, "init", "--vps-address", lab.vps_address, "--tunnel-subnet", "198.51.100.0/24")
    cli(lab, "vps", vps_site, "pki", "issue", "attic")
    configure_rest = ["web", "--listen", "80", "--target", "8080", "--check", "http:/", "--homes", "home,attic"]
    cli(lab, "vps", vps_site, "service", "add", *configure_rest)
    labkit.up_homes(lab, vps_site, {"home": home_site, "attic": attic_site})
    lab.popen("vps", *cli_argv("-c", str(vps_site / "vpnoffload.toml"), "watch"))

    wait_served_by(lab, "home")
    assert f"you are {lab.visitor_address}" in visit(lab)["body"]

    pulled = time.time()
    lab.pull_cable("home")
    took = crowd(lab, "^200 .*served from attic", since=pulled)
    with capsys.disabled():
        print(f"\n[several homes] home's cable pulled -> served by attic after {took:.2f} s")
    assert took <= budget().backup_home
    assert f"you are {lab.visitor_address}" in visit(lab)["body"]  # the backup sees the real visitor too
    status = json.loads(cli(lab, "vps", vps_site, "status", "--json", check=False).stdout)
    assert status["services"][0]["home"] == "attic" and status["services"][0]["state"] == "forwarding"

    lab.pull_cable("attic")
    crowd(lab, "^503 ", since=time.time())

    plugged = time.time()
    lab.plug_cable("home")
    took = crowd(lab, "^200 .*served from home", since=plugged, limit=30)
    with capsys.disabled():
        print(f"[several homes] home's cable back -> served by home after {took:.2f} s")
    lab.plug_cable("attic")
