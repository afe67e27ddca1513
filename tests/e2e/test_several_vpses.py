"""Issue 25 end to end: one home box behind two VPSes.

Both VPSes are set up as the README says (the second with ``init --tunnel-subnet
10.89.0.0/24``); the home box joins both, the first config at ROOT/vpnoffload.toml
and the second at ROOT/vps2/vpnoffload.toml. A visitor is served through either
VPS with the visitor's real address seen at home; with one VPS cut off the other
still serves; ``down home`` of one leaves the other's path working; after both
downs the home box is exactly as before.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import TUNNEL_SUBNET, cli, cli_argv
from tests.helpers import wait_until
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot, snapshot_diff

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

SECOND_SUBNET = "10.89.0.0/24"
SERVICE = ["web", "--listen", "80", "--target", "8080", "--check", "http:/"]


def set_up_vps(lab: Lab, host: str, address: str, subnet: str, vps_site: Path, home_site: Path,
               home: str = "home", service: list[str] = SERVICE) -> None:
    """What the README says on a VPS, and what it says to copy to the home box."""
    cli(lab, host, vps_site, "init", "--vps-address", address, "--tunnel-subnet", subnet, "--home", home)
    cli(lab, host, vps_site, "service", "add", *service)
    home_site.mkdir(mode=0o755, exist_ok=True)
    (home_site / "state").mkdir(mode=0o755)
    cli(lab, host, vps_site, "render", "home", "--home", home, "--out", str(home_site / "state"))
    shutil.copy(vps_site / "vpnoffload.toml", home_site / "vpnoffload.toml")
    cli(lab, host, vps_site, "up", "vps")
    lab.popen(host, *cli_argv("-c", str(vps_site / "vpnoffload.toml"), "watch"))


def wait_served(lab: Lab, address: str, want: str, limit: float = 15, path: str = "/") -> str:
    """GET ``path`` on ``address`` from the visitor until the reply holds ``want``; the body."""
    def holds() -> tuple[bool, tuple[int, str]]:
        status, body = lab.http_get("visitor", f"http://{address}{path}", timeout=2)
        return want in f"{status} {body}", (status, body[:200])
    return wait_until(f"{address}: {want!r} in the reply", holds, limit, 0.2)[1]

@pytest.fixture
def root() -> Path:
    import os
    import tempfile

    made = Path(tempfile.mkdtemp(prefix="vpnoffload-e2e-"))
    os.chmod(made, 0o755)  # OpenVPN drops privileges and must still read its files
    yield made
    shutil.rmtree(made, ignore_errors=True)


def test_one_home_behind_two_vpses(lab2vps: Lab, root: Path) -> None:
    lab = lab2vps
    vps1, vps2, home = root / "vps1", root / "vps2", root / "home"
    for site in (vps1, vps2, home):
        site.mkdir(mode=0o755)
    lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080", "--name", "home")
    assert lab.wait_tcp("home", "127.0.0.1", 8080)
    before = snapshot(lab, "home")

    set_up_vps(lab, "vps", lab.vps_address, TUNNEL_SUBNET, vps1, home)
    set_up_vps(lab, "vps2", lab.vps2_address, SECOND_SUBNET, vps2, home / "vps2")
    first = cli(lab, "home", home, "up", "home").stdout
    second = cli(lab, "home", home / "vps2", "up", "home").stdout
    assert "vpnoffload0" in first and "lookup 7701" in first
    assert "vpnoffload1" in second and "lookup 7702" in second and "VPNOFFLOAD-T1-" in second
    assert "VPNOFFLOAD-IN" not in second  # the second tunnel's plan leaves the first's chains alone
    # A second `up` of either finds nothing to do.
    for site in (home, home / "vps2"):
        again = cli(lab, "home", site, "up", "home", "--dry-run").stdout
        assert "nothing to do" in again, again

    # Through either VPS, home sees the visitor's own address.
    for address in (lab.vps_address, lab.vps2_address):
        assert f"you are {lab.visitor_address}" in wait_served(lab, address, "served from home")

    # Home's own view: both VPSes, both tunnels up now.
    report = json.loads(cli(lab, "home", home, "status", "--json").stdout)
    tunnels = {t["vps"]: t for t in report["home"]["tunnels"]}
    assert set(tunnels) == {lab.vps_address, lab.vps2_address}, report
    assert all(t["up"] for t in tunnels.values()), report
    assert all(t["last_visitor"] is not None for t in tunnels.values()), report
    text = cli(lab, "home", home / "vps2", "status").stdout
    assert lab.vps_address in text and lab.vps2_address in text, text

    # The second VPS cut off from the internet: the first still serves.
    lab.pull_cable("vps2")
    status, body = lab.http_get("visitor", f"http://{lab.vps2_address}/", timeout=2)
    assert status == 0, (status, body)
    assert f"you are {lab.visitor_address}" in wait_served(lab, lab.vps_address, "served from home", 5)
    lab.plug_cable("vps2")
    wait_served(lab, lab.vps2_address, "served from home", 60)  # OpenVPN's ping-restart brings it back

    # down home for the second VPS: the first's path still works, its rules untouched.
    cli(lab, "home", home / "vps2", "down", "home")
    rules = lab.exec("home", "ip", "rule").stdout
    assert "lookup 7701" in rules and "lookup 7702" not in rules, rules
    assert "vpnoffload1" not in lab.exec("home", "ip", "link").stdout
    assert f"you are {lab.visitor_address}" in wait_served(lab, lab.vps_address, "served from home", 5)
    report = json.loads(cli(lab, "home", home, "status", "--json", check=False).stdout)
    tunnels = {t["vps"]: t for t in report["home"]["tunnels"]}
    assert tunnels[lab.vps_address]["up"] and not tunnels[lab.vps2_address]["up"], report

    cli(lab, "home", home, "down", "home")
    after = snapshot(lab, "home")
    after["processes"] = before["processes"]  # the web server is ours; OpenVPN must be gone (below)
    assert "openvpn" not in snapshot(lab, "home")["processes"]
    assert after == before, f"home differs after both downs:\n{snapshot_diff(before, after)}"
    for host, site in (("vps", vps1), ("vps2", vps2)):
        cli(lab, host, site, "down", "vps")


def test_container_at_home_behind_two_vpses(lab2vps: Lab, root: Path) -> None:
    """The target in a container behind Docker's published port (rules written by hand as
    dockerd writes them): its replies carry the container's address, so only each tunnel's
    own connection mark brings them back through the tunnel they came in on."""
    from tests.e2e.labkit import CONTAINER, PUBLISHED, make_container_home
    from tests.nslib import namespaces, unique

    lab = lab2vps
    vps1, vps2, home = root / "vps1", root / "vps2", root / "home"
    for site in (vps1, vps2, home):
        site.mkdir(mode=0o755)
    service = ["web", "--listen", "80", "--target", str(PUBLISHED), "--check", "http:/"]
    with namespaces(unique("ctr")) as (container,):
        make_container_home(lab, container)
        before = snapshot(lab, "home")

        set_up_vps(lab, "vps", lab.vps_address, TUNNEL_SUBNET, vps1, home, service=service)
        set_up_vps(lab, "vps2", lab.vps2_address, SECOND_SUBNET, vps2, home / "vps2", service=service)
        cli(lab, "home", home, "up", "home")
        cli(lab, "home", home / "vps2", "up", "home")

        for address, mark in ((lab.vps_address, 0x20000000), (lab.vps2_address, 0x40000000)):
            # Each watchdog started before home joined: it serves home once two checks passed.
            body = wait_served(lab, address, "200 ", path="/whoami")
            assert body.strip() == lab.visitor_address, (address, body)
            # The reply was routed by this tunnel's mark (the container's address is its source).
            conntrack = lab.exec("home", "conntrack", "-L", "-s", lab.visitor_address, "--reply-src", CONTAINER,
                                 check=False).stdout
            assert f"mark={mark} " in conntrack, (address, conntrack)
            lab.exec("home", "conntrack", "-D", "-s", lab.visitor_address, check=False)

        cli(lab, "home", home / "vps2", "down", "home")
        status, body = lab.http_get("visitor", f"http://{lab.vps_address}/whoami", timeout=5)
        assert status == 200 and body.strip() == lab.visitor_address, body
        cli(lab, "home", home, "down", "home")
        after = snapshot(lab, "home")
        after["processes"] = before["processes"]
        assert after == before, f"home differs after both downs:\n{snapshot_diff(before, after)}"
        for host, site in (("vps", vps1), ("vps2", vps2)):
            cli(lab, host, site, "down", "vps")


def test_two_home_boxes_behind_two_vpses(lab2vps: Lab, root: Path) -> None:
    """A service naming both homes on both VPSes; each home box joins both VPSes. With
    home's cable pulled, both VPSes serve from attic; the visitor's address is seen throughout."""
    lab = lab2vps
    vps1, vps2, home, attic = root / "vps1", root / "vps2", root / "home", root / "attic"
    for site in (vps1, vps2, home, attic):
        site.mkdir(mode=0o755)
    for name in ("home", "attic"):
        lab.popen(name, sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080", "--name", name)
        assert lab.wait_tcp(name, "127.0.0.1", 8080)
    service = [*SERVICE, "--homes", "home,attic"]
    for host, address, subnet, vps_site, sub in (("vps", lab.vps_address, TUNNEL_SUBNET, vps1, ""),
                                                 ("vps2", lab.vps2_address, SECOND_SUBNET, vps2, "vps2")):
        cli(lab, host, vps_site, "init", "--vps-address", address, "--tunnel-subnet", subnet)
        cli(lab, host, vps_site, "pki", "issue", "attic")
        cli(lab, host, vps_site, "service", "add", *service)
        for name, box in (("home", home), ("attic", attic)):
            site = box / sub if sub else box
            site.mkdir(mode=0o755, exist_ok=True)
            (site / "state").mkdir(mode=0o755)
            cli(lab, host, vps_site, "render", "home", "--home", name, "--out", str(site / "state"))
            shutil.copy(vps_site / "vpnoffload.toml", site / "vpnoffload.toml")
        cli(lab, host, vps_site, "up", "vps")
        lab.popen(host, *cli_argv("-c", str(vps_site / "vpnoffload.toml"), "watch"))
    for name, box in (("home", home), ("attic", attic)):
        for site in (box, box / "vps2"):
            cli(lab, name, site, "up", "home", "--home", name)

    for address in (lab.vps_address, lab.vps2_address):
        assert f"you are {lab.visitor_address}" in wait_served(lab, address, "served from home")
    report = json.loads(cli(lab, "attic", attic, "status", "--json").stdout)
    assert [(t["vps"], t["home"], t["up"]) for t in report["home"]["tunnels"]] == [
        (lab.vps_address, "attic", True), (lab.vps2_address, "attic", True)], report

    lab.pull_cable("home")
    for address in (lab.vps_address, lab.vps2_address):
        assert f"you are {lab.visitor_address}" in wait_served(lab, address, "served from attic", 10)
    lab.plug_cable("home")
    for address in (lab.vps_address, lab.vps2_address):
        wait_served(lab, address, "served from home", 60)

    for name, box in (("home", home), ("attic", attic)):
        for site in (box / "vps2", box):
            cli(lab, name, site, "down", "home", "--home", name)
    for host, site in (("vps", vps1), ("vps2", vps2)):
        cli(lab, host, site, "down", "vps")
