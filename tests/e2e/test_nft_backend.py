"""Issue 12 item 5 end to end: the whole visitor path with vpnoffload's own rules in
nftables (VPNOFFLOAD_FIREWALL=nft, as on a host without the legacy x_tables):
served from home with the visitor's address, the friendly page when home's cable
is pulled (the watchdog's swap child rewrites the nft rules), served again when
it is plugged back, and ``down`` leaves every table as it was.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from tests.budget import budget
from tests.e2e.conftest import cli, configure, crowd
from tests.e2e.labkit import HOSTNAME, down_both, start_watch, visit
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def legacy_rules(lab: Lab, host: str) -> str:
    return lab.exec(host, "iptables-legacy-save").stdout


def test_served_from_home_failover_and_back_with_the_nft_backend(
        lab: Lab, sites: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPNOFFLOAD_FIREWALL", "nft")  # every CLI run, the watchdog and its swap child inherit it
    vps_site, home_site = sites
    configure(lab, vps_site, home_site,
              ["web", "--listen", "80", "--target", "8080", "--check", "http:/", "--hostname", HOSTNAME])
    web = lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080")
    assert lab.wait_tcp("home", "127.0.0.1", 8080)
    before = {host: snapshot(lab, host) for host in ("vps", "home")}

    doctor = cli(lab, "vps", vps_site, "doctor", check=False)
    assert "nftables tables ip vpnoffload" in doctor.stdout + doctor.stderr, doctor.stdout

    cli(lab, "vps", vps_site, "up", "vps")
    cli(lab, "home", home_site, "up", "home")
    for host in ("vps", "home"):
        assert "VPNOFFLOAD" not in legacy_rules(lab, host)  # nothing in the legacy tables
    assert "dnat to 198.51.100.2:8080" in lab.exec("vps", "nft", "list", "table", "ip", "vpnoffload").stdout
    assert "VPNOFFLOAD-IN" in lab.exec("home", "nft", "list", "table", "ip", "vpnoffload").stdout

    first = visit(lab)
    assert first["status"] == 200 and first["body"].strip() == lab.visitor_address
    again = cli(lab, "vps", vps_site, "up", "vps")
    assert "nothing to do" in again.stdout, again.stdout

    log = tmp_path / "watch.log"
    watch = start_watch(lab, vps_site, log)
    try:
        pulled = time.time()
        lab.pull_cable()
        took = crowd(lab, "^503 ", since=pulled)
        assert took <= budget().nft_failover, took
        rules = lab.exec("vps", "nft", "list", "table", "ip", "vpnoffload").stdout
        assert "dnat to 198.51.100.2:8080" not in rules, rules
        assert re.search(r"dnat to [0-9.]+:503\b", rules), rules  # the swap child wrote nft: the page's port
        assert "VPNOFFLOAD" not in legacy_rules(lab, "vps")

        plugged = time.time()
        lab.plug_cable()
        took = crowd(lab, "^200 ", since=plugged, limit=30)
        assert took <= budget().nft_recovery, took
        assert visit(lab)["body"].strip() == lab.visitor_address
    finally:
        watch.terminate()
        watch.wait(10)

    down_both(lab, vps_site, home_site, before)
    web.terminate()
