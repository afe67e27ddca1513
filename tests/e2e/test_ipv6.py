"""Issue 7 (1) end to end: a service on a dedicated IPv6 address of the VPS.

The lab is built with IPv6 on every link (documentation prefix 2001:db8::/32
only; the tunnel uses the ULA fd00:88::/64). A visitor asks for
http://[2001:db8:1::80]/, the VPS DNATs it with ip6tables to home's IPv6 tunnel
address, home answers through the tunnel thanks to its IPv6 policy routing, and
sees the visitor's real IPv6 address. An IPv4 service runs beside it, the
friendly page covers the IPv6 service while home's cable is out, and ``down``
restores both hosts exactly.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import HOME_TUNNEL_ADDRESS, cli, cli_argv, configure
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot
from tests.e2e.labkit import TUNNEL_SUBNET6, down_both, wait_http

pytestmark = pytest.mark.root

HOME_TUNNEL_ADDRESS6 = "fd00:88::2"  # derived from home's IPv4 tunnel address .2
HOSTNAME = "blog.example.org"


def test_dedicated_ipv6_address_real_visitor_page_and_clean_down(
        lab6: Lab, sites: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    lab, (vps_site, home_site) = lab6, sites
    blog = lab.vps_spare_addresses6[0]
    blog_url = f"http://[{blog}]/whoami"

    # --- on the VPS: a tunnel with an IPv6 subnet, one IPv6 and one IPv4 service
    configure(lab, vps_site, home_site,
              ["blog", "--listen", f"[{blog}]:80", "--target", "8080", "--check", "http:/", "--hostname", HOSTNAME],
              ["web", "--listen", "80", "--target", "8081"], init=("--tunnel-subnet6", TUNNEL_SUBNET6))
    doctor = cli(lab, "vps", vps_site, "doctor", check=False)
    assert "2001:db8:1::/64" in doctor.stdout, doctor.stdout

    # Home serves on every address (IPv6 and IPv4); 9090 is not offloaded.
    for port in ("8080", "8081", "9090"):
        lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", port, "--bind", "::")
        assert lab.wait_tcp("home", "::1", int(port))
    before = {host: snapshot(lab, host) for host in ("vps", "home")}

    up_vps = cli(lab, "vps", vps_site, "up", "vps")
    assert f"add address {blog}/128" in up_vps.stdout and "ip6tables nat" in up_vps.stdout, up_vps.stdout
    up_home = cli(lab, "home", home_site, "up", "home")
    assert "default (IPv6)" in up_home.stdout, up_home.stdout

    # The IPv6 visitor reaches home over the tunnel, and home sees its real IPv6 address.
    status, body = lab.http_get("visitor", blog_url, timeout=5)
    assert (status, body.strip()) == (200, lab.visitor_address6)
    # The IPv4 service beside it still works, with the real IPv4 visitor address.
    status, body = lab.http_get("visitor", f"http://{lab.vps_address}/whoami", timeout=5)
    assert (status, body.strip()) == (200, lab.visitor_address)
    # A port of home that is not offloaded is not reachable over IPv6 either.
    assert lab.tcp_probe("visitor", blog, 9090, timeout=1) != "open"
    assert lab.tcp_probe("vps", HOME_TUNNEL_ADDRESS6, 9090, timeout=1) != "open"
    assert lab.tcp_probe("vps", HOME_TUNNEL_ADDRESS, 9090, timeout=1) != "open"
    # Home's own IPv6 traffic keeps its own uplink.
    route = lab.exec("home", "ip", "-6", "route", "get", lab.visitor_address6).stdout
    assert "eth0" in route and "vpnoffload0" not in route, route
    # doctor on both ends knows who carries the data channel: the tun device OpenVPN made
    # (this kernel's DCO module, if any, must then have been refused: a warning), or the kernel's ovpn.
    dco_loaded = any(Path("/sys/module", name).exists() for name in ("ovpn", "ovpn_dco_v2"))
    for end, site in (("vps", vps_site), ("home", home_site)):
        line = next(ln for ln in cli(lab, end, site, "doctor", check=False).stdout.splitlines() if "] dco: " in ln)
        tun = "dco: not in use: vpnoffload0 is a tun device"
        assert (tun in line and line.startswith("[warn]" if dco_loaded else "[  ok]")) or \
            "data channel offload in use: vpnoffload0" in line, line
    # A second up changes nothing.
    assert "nothing to do" in cli(lab, "vps", vps_site, "up", "vps").stdout
    assert "nothing to do" in cli(lab, "home", home_site, "up", "home").stdout

    # Home's cable out: the friendly page for the IPv6 service; back in: home again.
    watch = lab.popen("vps", *cli_argv("-c", str(vps_site / "vpnoffload.toml"), "watch"))
    wait_http(lab, blog_url, 200, limit=10)
    pulled = time.monotonic()
    lab.pull_cable()
    took, page = wait_http(lab, blog_url, 503, limit=15)
    assert HOSTNAME in page
    with capsys.disabled():
        print(f"\n[ipv6] cable pulled -> friendly page on [{blog}] after {time.monotonic() - pulled:.2f} s")
    lab.plug_cable()
    took, body = wait_http(lab, blog_url, 200, limit=30)
    assert body.strip() == lab.visitor_address6
    watch.terminate()
    watch.wait(10)

    # down on both ends restores every table (ip6tables too), rule, route, address and sysctl.
    down_both(lab, vps_site, home_site, before)
