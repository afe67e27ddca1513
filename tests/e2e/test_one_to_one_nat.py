"""Issue 13, item 1: a VPS behind a cloud's 1:1 NAT works with a plain ``init --vps-address <public>``.

The lab's router plays the provider: the VPS holds only 198.18.0.10/24, and the
router DNATs the public 203.0.113.10 (and the spare 203.0.113.11) to
198.18.0.10 (198.18.0.11) and SNATs them back. ``init`` finds the private
address by itself; a second service listens on the dedicated 203.0.113.11,
mapped in ``[vps] nat``. Visitors must be served from home with their own
address on both, get the friendly page while home's cable is out and home
again after, and ``down`` must leave both hosts exactly as they were.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import TUNNEL_SUBNET, cli, cli_argv
from tests.e2e.labkit import down_both, wait_reply
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

DEDICATED = "203.0.113.11"


def test_vps_behind_one_to_one_nat_needs_no_flag(nat_lab: Lab, sites: tuple[Path, Path]) -> None:
    lab = nat_lab
    vps_site, home_site = sites
    config = vps_site / "vpnoffload.toml"
    assert lab.exec("vps", "ip", "-4", "addr", "show", "dev", "eth0").stdout.count("inet ") == 1

    # --- on the VPS: init with the public address only; it finds the private one
    init = cli(lab, "vps", vps_site, "init", "--vps-address", lab.vps_address, "--tunnel-subnet", TUNNEL_SUBNET)
    assert "203.0.113.10 is on no interface: 1:1 NAT to 198.18.0.10 on eth0" in init.stdout, init.stdout
    assert 'local_address = "198.18.0.10"' in config.read_text()
    # The dedicated public address the provider maps to a secondary private one, as a user writes it.
    text = config.read_text().replace('local_address = "198.18.0.10"\n', 'local_address = "198.18.0.10"\n'
                                      f'nat = {{ "{DEDICATED}" = "{lab.nat_private(DEDICATED)}" }}\n')
    config.write_text(text)
    cli(lab, "vps", vps_site, "service", "add", "web", "--listen", "80", "--target", "8080", "--check", "http:/")
    cli(lab, "vps", vps_site, "service", "add", "blog", "--listen", f"{DEDICATED}:80", "--target", "8081",
        "--check", "http:/")
    (home_site / "state").mkdir(mode=0o755)
    cli(lab, "vps", vps_site, "render", "home", "--out", str(home_site / "state"))
    shutil.copy(config, home_site / "vpnoffload.toml")
    assert "\nremote 203.0.113.10 1194 udp\n" in (home_site / "state" / "home.ovpn").read_text()  # home dials the public one

    doctor = cli(lab, "vps", vps_site, "doctor", check=False).stdout
    assert "203.0.113.10 is on no interface: 1:1 NAT to 198.18.0.10 on eth0" in doctor, doctor
    assert f"{DEDICATED} maps 1:1 to 198.18.0.11" in doctor, doctor

    lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080", "--name", "home")
    lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8081", "--name", "blog-at-home")
    assert lab.wait_tcp("home", "127.0.0.1", 8080) and lab.wait_tcp("home", "127.0.0.1", 8081)
    before = {host: snapshot(lab, host) for host in ("vps", "home")}

    # --- up on both ends: OpenVPN binds the private address, DNAT matches the private ones
    up_vps = cli(lab, "vps", vps_site, "up", "vps").stdout
    cli(lab, "home", home_site, "up", "home")
    server_conf = next(vps_site.rglob("server.conf")).read_text()
    assert "\nlocal 198.18.0.10\n" in server_conf
    rules = lab.exec("vps", "iptables-legacy-save", "-t", "nat").stdout
    assert "-d 198.18.0.10/32 -p tcp -m tcp --dport 80" in rules and "-d 198.18.0.11/32" in rules, rules
    assert "203.0.113." not in rules, rules
    assert "add address 198.18.0.11/32 dev eth0" in up_vps and DEDICATED not in up_vps, up_vps
    assert DEDICATED not in lab.exec("vps", "ip", "addr").stdout

    web, blog = f"http://{lab.vps_address}/whoami", f"http://{DEDICATED}/whoami"
    for url in (web, blog):
        status, body = lab.http_get("visitor", url, timeout=5)
        assert status == 200 and body.strip() == lab.visitor_address, (url, status, body)
    assert "blog-at-home" in lab.http_get("visitor", f"http://{DEDICATED}/", timeout=5)[1]

    # --- home away: the friendly page on both addresses; back: home again
    lab.popen("vps", *cli_argv("-c", str(config), "watch"))
    lab.pull_cable()
    took = wait_reply(lab, web, "503", 10)[2]
    wait_reply(lab, blog, "503", 5)
    print(f"\n[1:1 NAT] cable pulled -> friendly page after {took:.2f} s")
    lab.plug_cable()
    took = wait_reply(lab, web, lab.visitor_address, 15)[2]
    wait_reply(lab, blog, lab.visitor_address, 5)
    print(f"[1:1 NAT] cable back -> home again after {took:.2f} s")

    # --- down on both ends leaves both hosts as they were
    down_both(lab, vps_site, home_site, before)


def test_up_vps_names_the_address_to_set_when_the_public_one_is_not_here(
        nat_lab: Lab, sites: tuple[Path, Path]) -> None:
    """A config without local_address (written elsewhere, say) on the NATed VPS: one line, nothing changed."""
    lab = nat_lab
    vps_site, _ = sites
    cli(lab, "vps", vps_site, "init", "--vps-address", lab.vps_address, "--local-address", "198.18.0.99",
        "--tunnel-subnet", TUNNEL_SUBNET)
    config = vps_site / "vpnoffload.toml"
    config.write_text(config.read_text().replace('local_address = "198.18.0.99"\n', ""))
    before = snapshot(lab, "vps")
    result = cli(lab, "vps", vps_site, "up", "vps", check=False)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'local_address = "198.18.0.10"' in lines[0] and "eth0" in lines[0], lines
    assert snapshot(lab, "vps") == before
