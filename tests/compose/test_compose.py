"""The compose lab end to end: three containers, each running the vpnoffload CLI.

compose/entrypoint.sh does on each container what a person does on each
machine (init, service add, render home, up vps / up home, watch); these tests
only look from the visitor's side, at the VPS's TEST-NET address.
"""

from __future__ import annotations

import pytest

from tests.compose.conftest import VISITOR_ADDRESS, ComposeLab

#: The watchdog's defaults show an outage within ~3 s; allow for swap processes and a slow CI.
FAILOVER_TIMEOUT = 30.0
RECOVERY_TIMEOUT = 60.0

# The first test also builds and starts the lab (session fixture).
pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.timeout(900)]


def test_visitor_is_served_from_home_with_its_own_address(compose_lab: ComposeLab) -> None:
    own = compose_lab.exec("visitor", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert f" {VISITOR_ADDRESS}/" in own.stdout, own.stdout + own.stderr

    whoami = compose_lab.visitor_get("/whoami")
    assert whoami is not None and whoami.status == 200, whoami
    # Home saw the visitor's real address: forwarded through the tunnel, not proxied or NATed.
    assert whoami.body.strip() == VISITOR_ADDRESS

    page = compose_lab.visitor_get("/")
    assert page is not None and page.status == 200, page
    assert "served from home" in page.body

    # Home's own traffic keeps its own uplink; only replies to tunnel traffic use the tunnel.
    route = compose_lab.exec("home", "ip", "route", "get", VISITOR_ADDRESS).stdout
    assert "dev eth0" in route and "vpnoffload0" not in route, route
    rules = compose_lab.exec("home", "ip", "rule").stdout
    assert "lookup 7701" in rules, rules


def test_visitor_gets_the_friendly_page_while_home_is_down(compose_lab: ComposeLab) -> None:
    has_watch = compose_lab.exec("vps", "vpnoffload", "watch", "--help")
    # A broken `watch` command is a broken product, never a reason to skip.
    assert has_watch.returncode == 0, f"vpnoffload watch --help failed:\n{has_watch.stdout}{has_watch.stderr}"
    # `vpnoffload watch` re-executes itself (same pid) as a lean `python -I -S ... vpnoffload.watch.loop`.
    watching = compose_lab.exec("vps", "pgrep", "-f", "vpnoffload watch|vpnoffload[.]watch[.]loop")
    assert watching.returncode == 0, f"the watchdog is not running on the vps:\n{compose_lab.logs()}"

    # Freezing every process of home (OpenVPN and the web server) is home going
    # silent, as when its power or uplink fails; unpausing resumes the same tunnel.
    paused = compose_lab.compose("pause", "home")
    assert paused.returncode == 0, paused.stderr
    try:
        friendly = compose_lab.wait_for(
            "the visitor did not get the friendly page while home was down",
            lambda r: r is not None and r.status == 503, "/", FAILOVER_TIMEOUT)
        assert friendly is not None
        assert friendly.headers.get("retry-after", "").isdigit(), friendly.headers
        assert "served from home" not in friendly.body
    finally:
        compose_lab.compose("unpause", "home")

    back = compose_lab.wait_for(
        "home's page did not come back after home returned",
        lambda r: r is not None and r.status == 200, "/whoami", RECOVERY_TIMEOUT)
    assert back is not None and back.body.strip() == VISITOR_ADDRESS
