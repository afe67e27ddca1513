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

from pathlib import Path

import pytest

from tests.e2e.conftest import cli, cli_argv, configure
from tests.e2e.labkit import CONTAINER, PUBLISHED, down_both, make_container_home, wait_reply
from tests.nslib import namespaces, unique
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

def test_container_behind_a_published_port_serves_visitors_with_their_address(
        lab: Lab, sites: tuple[Path, Path]) -> None:
    vps_site, home_site = sites
    configure(lab, vps_site, home_site, ["web", "--listen", "80", "--target", str(PUBLISHED), "--check", "http:/"])
    with namespaces(unique("ctr")) as (container,):
        make_container_home(lab, container)
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

        down_both(lab, vps_site, home_site, before, openvpn_gone=False)
