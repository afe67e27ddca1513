"""Issue 29 (3) end to end: IPv6 services on a VPS whose own firewall drops IPv6 too, on each shape.

The IPv6 lab of tests/e2e/test_ipv6.py, with the VPS's firewall made by each
host shape (tests/hostshapes.py; ufw is the real ufw, Docker's rules are
written for both families as dockerd does with IPv6 on): an IPv6 visitor is
served from home with its real address (the forward openings for the IPv6
DNAT and its replies are in the host's IPv6 chains), gets the friendly page
while home is down (the page server's IPv6 port is opened too), is served
again after the host's own reload (the watchdog puts the IPv6 openings back),
and ``down`` leaves the host exactly as before.

A running firewalld is the container lane's (tests/systemd/test_firewalld.py):
its own base chains accept DNATed traffic of both families, so IPv6 needs no
opening there; the firewalld-shaped table here (no daemon) gets them as native nftables.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests import hostshapes
from tests.e2e.conftest import cli, cli_argv, configure
from tests.e2e.labkit import TUNNEL_SUBNET6, down_both, wait_http
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot

pytestmark = pytest.mark.root

HOSTNAME = "blog.example.org"
#: dockerd with "ipv6": true writes the same chains with ip6tables (its bridge gets a documentation /64).
DOCKER6 = hostshapes.docker(subnet="2001:db8:d0c::/64").replace("127.0.0.0/8", "::1/128")


def install(lab: Lab, shape: str, files: Path) -> None:
    """The VPS's firewall as its own tool writes it (called again: the host's reload)."""
    if shape == "ufw":
        lab.exec("vps", "ufw", "--force", "enable")
        lab.exec("vps", "ufw", "reload")
        return
    if shape == "docker":
        (files / "docker4").write_text(hostshapes.DOCKER)
        (files / "docker6").write_text(DOCKER6)
        lab.exec("vps", "iptables-nft-restore", str(files / "docker4"))
        lab.exec("vps", "ip6tables-nft-restore", str(files / "docker6"))
        return
    (files / shape).write_text({"nftables": hostshapes.NFTABLES, "firewalld": hostshapes.FIREWALLD}[shape])
    lab.exec("vps", "nft", "-f", str(files / shape))


@pytest.mark.parametrize("shape", ["docker", "nftables", "ufw", "firewalld"])
def test_ipv6_service_through_the_vps_firewall(shape: str, lab6: Lab, sites: tuple[Path, Path], tmp_path: Path,
                                               request: pytest.FixtureRequest,
                                               capsys: pytest.CaptureFixture) -> None:
    if shape == "ufw":
        request.getfixturevalue("ufw_files")
    lab, (vps_site, home_site) = lab6, sites
    blog = lab.vps_spare_addresses6[0]
    url = f"http://[{blog}]/whoami"
    configure(lab, vps_site, home_site,
              ["blog", "--listen", f"[{blog}]:80", "--target", "8080", "--check", "http:/", "--hostname", HOSTNAME],
              init=("--tunnel-subnet6", TUNNEL_SUBNET6))
    lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080", "--bind", "::")
    assert lab.wait_tcp("home", "::1", 8080)
    install(lab, shape, tmp_path)
    before = {host: snapshot(lab, host) for host in ("vps", "home")}

    up = cli(lab, "vps", vps_site, "up", "vps")
    six = [line for line in up.stdout.splitlines() if "open in" in line and ("ip6" in line or "fd00:88::" in line
                                                                              or blog in line)]
    assert six, f"no IPv6 opening in the {shape} firewall:\n{up.stdout}"
    cli(lab, "home", home_site, "up", "home")
    took, body = wait_http(lab, url, 200, limit=20)
    assert body.strip() == lab.visitor_address6

    log = tmp_path / "watch.log"
    with open(log, "w") as out:
        watch = lab.popen("vps", *cli_argv("-c", str(vps_site / "vpnoffload.toml"), "watch"), stdout=out, stderr=out)
    try:
        wait_http(lab, url, 200, limit=10)
        lab.pull_cable()
        _, page = wait_http(lab, url, 503, limit=15)  # the page server's IPv6 port is open too
        assert HOSTNAME in page
        lab.plug_cable()
        wait_http(lab, url, 200, limit=30)

        install(lab, shape, tmp_path)  # the host rewrites its own rules (Docker restart, nft -f, ufw reload)
        took, body = wait_http(lab, url, 200, limit=15)
        assert body.strip() == lab.visitor_address6
        with capsys.disabled():
            print(f"\n[ipv6 {shape}] served again {took:.1f} s after the host's reload", flush=True)
    finally:
        watch.send_signal(signal.SIGTERM)
        watch.wait(10)
    down_both(lab, vps_site, home_site, before, openvpn_gone=False)
    if shape == "ufw":
        assert "vpnoffload" not in lab.exec("vps", "ufw", "show", "added").stdout
