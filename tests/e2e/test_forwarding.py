"""Issue 3 end to end: four namespaces, real OpenVPN, python-iptables and pyroute2.

Only the CLI is used to set things up, as a user would on two real machines.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import HOME_TUNNEL_ADDRESS, cli, configure
from tests.e2e.labkit import down_both
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot

pytestmark = pytest.mark.root


def test_visitor_is_served_from_home_and_down_restores_everything(lab: Lab, sites: tuple[Path, Path]) -> None:
    vps_site, home_site = sites
    # --- on the VPS: init, one service, the home box's profile; "copied" to home
    configure(lab, vps_site, home_site, ["web", "--listen", "80", "--target", "8080", "--check", "http:/"])
    assert (home_site / "state" / "home.ovpn").stat().st_mode & 0o077 == 0

    web = lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080")
    secret = lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "9090")
    assert lab.wait_tcp("home", "127.0.0.1", 8080) and lab.wait_tcp("home", "127.0.0.1", 9090)
    before = {host: snapshot(lab, host) for host in ("vps", "home")}

    # --- dry runs change nothing
    dry = cli(lab, "vps", vps_site, "up", "vps", "--dry-run")
    assert "would change" in dry.stdout and "DNAT" in dry.stdout
    assert snapshot(lab, "vps") == before["vps"]

    # --- up on both ends
    up_vps = cli(lab, "vps", vps_site, "up", "vps")
    up_home = cli(lab, "home", home_site, "up", "home")
    print(up_vps.stdout, up_home.stdout)
    assert "DNAT" in up_vps.stdout and "lookup 7701" in up_home.stdout

    # (1) + (2): the visitor gets the home page through the VPS, and home sees the visitor's address
    status, body = lab.http_get("visitor", f"http://{lab.vps_address}/whoami", timeout=5)
    assert status == 200, body
    assert body.strip() == lab.visitor_address

    # (3): a home port that is not configured is not reachable through the VPS
    assert lab.tcp_probe("visitor", lab.vps_address, 9090, timeout=1) != "open"
    assert lab.tcp_probe("vps", HOME_TUNNEL_ADDRESS, 9090, timeout=1) != "open"
    # ...while home's own traffic still uses its own uplink (policy routing only for tunnel replies)
    route = lab.exec("home", "ip", "route", "get", lab.visitor_address).stdout
    assert "eth0" in route and "vpnoffload0" not in route

    # (4): a second up changes nothing
    again_vps = cli(lab, "vps", vps_site, "up", "vps")
    again_home = cli(lab, "home", home_site, "up", "home")
    assert "nothing to do" in again_vps.stdout, again_vps.stdout
    assert "nothing to do" in again_home.stdout, again_home.stdout

    # (5): down on both ends restores every table, rule, route, address and sysctl
    down_both(lab, vps_site, home_site, before)
    web.terminate()
    secret.terminate()
