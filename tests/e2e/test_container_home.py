"""Issue 13, item 2: the home server is a container behind Docker's published port.

The home box is shaped as Docker makes it: a bridge ``docker0`` with a container
namespace behind it, iptables-nft rules as dockerd writes them (FORWARD policy
DROP, DOCKER-USER, the published port's DNAT in nat DOCKER and its ACCEPT in
filter DOCKER), and forwarding on. The container's replies leave it with the
container's address, so only the connection mark vpnoffload puts on flows from
the tunnel routes them back through it. The visitor must be served with the
visitor's real address, get the page while home is away, be served again after,
and ``down`` must leave both hosts exactly as they were.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import hostshapes
from tests.e2e.conftest import cli, cli_argv, configure
from tests.e2e.labkit import wait_reply
from tests.nslib import in_ns, namespaces, unique
from vpnoffload.lab.netns import Lab, child_env
from vpnoffload.lab.snapshot import snapshot, snapshot_diff

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

BRIDGE = "docker0"
BRIDGE_ADDRESS = "198.18.5.1/24"  # the "private" side, as ENVIRONMENT.md asks
CONTAINER = "198.18.5.2"
PUBLISHED = 8080  # `docker run -p 8080:80`
INSIDE = 80

# What dockerd (Debian 12's docker.io, iptables-nft) writes with one container publishing 8080 -> 80.
DOCKER_RULES = hostshapes.docker(BRIDGE, "198.18.5.0/24", published=((PUBLISHED, CONTAINER, INSIDE),))


def make_container_home(lab: Lab, container_ns: str) -> None:
    """docker0 in the home namespace, one container behind it, Docker's rules, forwarding on."""
    home = lab.namespace("home")
    lab.exec("home", "ip", "link", "add", BRIDGE, "type", "bridge")
    lab.exec("home", "ip", "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE)
    lab.exec("home", "ip", "link", "set", BRIDGE, "up")
    veth = f"ve{unique('')[-6:]}"
    subprocess.run(["ip", "link", "add", veth, "netns", home, "type", "veth", "peer", "name", "eth0",
                    "netns", container_ns], check=True, timeout=10)
    lab.exec("home", "ip", "link", "set", veth, "master", BRIDGE, "up")
    in_ns(container_ns, "ip", "addr", "add", f"{CONTAINER}/24", "dev", "eth0")
    in_ns(container_ns, "ip", "link", "set", "eth0", "up")
    in_ns(container_ns, "ip", "route", "add", "default", "via", BRIDGE_ADDRESS.split("/")[0])
    lab.exec("home", "sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.exec("home", "iptables-nft-restore", input=DOCKER_RULES)


def test_container_behind_a_published_port_serves_visitors_with_their_address(
        lab: Lab, sites: tuple[Path, Path]) -> None:
    vps_site, home_site = sites
    configure(lab, vps_site, home_site, ["web", "--listen", "80", "--target", str(PUBLISHED), "--check", "http:/"])
    with namespaces(unique("ctr")) as (container,):
        make_container_home(lab, container)
        subprocess.Popen(["ip", "netns", "exec", container, sys.executable, "-m", "vpnoffload.lab.web",
                          "--port", str(INSIDE), "--name", "container"], env=child_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert lab.wait_tcp("home", CONTAINER, INSIDE)
        before = {host: snapshot(lab, host) for host in ("vps", "home")}

        cli(lab, "vps", vps_site, "up", "vps")
        up_home = cli(lab, "home", home_site, "up", "home").stdout
        assert "fwmark 0x20000000/0xe0000000 lookup 7701" in up_home and "VPNOFFLOAD-MARK" in up_home

        # Served by the container, which sees the visitor's own address.
        url = f"http://{lab.vps_address}/whoami"
        status, body = lab.http_get("visitor", url, timeout=5)
        assert status == 200 and body.strip() == lab.visitor_address, body
        # The reply went back through the tunnel by mark, not out of home's uplink.
        conntrack = lab.exec("home", "conntrack", "-L", "-s", lab.visitor_address, "--reply-src", CONTAINER,
                             check=False).stdout
        assert "mark=536870912" in conntrack or "mark=0x20000000" in conntrack, conntrack

        # Home away: the friendly page; back: the container again.
        lab.popen("vps", *cli_argv("-c", str(vps_site / "vpnoffload.toml"), "watch"))
        assert wait_reply(lab, url, lab.visitor_address, 10)[0] == 200
        lab.pull_cable()
        _, page, took = wait_reply(lab, url, "503", 10)
        print(f"\n[container home] cable pulled -> friendly page after {took:.2f} s")
        lab.plug_cable()
        _, body, took = wait_reply(lab, url, lab.visitor_address, 15)
        print(f"[container home] cable back -> container again after {took:.2f} s")

        cli(lab, "home", home_site, "down", "home")
        cli(lab, "vps", vps_site, "down", "vps")
        for host in ("vps", "home"):
            after = snapshot(lab, host)
            assert after == before[host], f"{host} differs after down:\n{snapshot_diff(before[host], after)}"
