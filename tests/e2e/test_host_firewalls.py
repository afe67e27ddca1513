"""Issue 12 end to end: vpnoffload on hosts with their own firewall, in the namespace lab.

One lab per pair of host shapes, one on the VPS and one on the home box
(tests/hostshapes.py; ufw is the real ufw): visitors are served from home with
their real address, get the friendly page while home is down, are served again
within 15 s after the VPS's own reload (the watchdog puts the openings back), and
``down`` leaves each host's ruleset byte-identical. After the home's own reload
the home keeper puts its openings back within 5 s and ``status`` there says so.
Every shape is on the VPS once and on the home box once; Docker and ufw are
paired across the two ends (each end's checks are its own, so a shape at home
needs no lab of its own with a plain VPS: that VPS is test_failover's).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from tests import hostshapes
from tests.e2e.conftest import cli, configure
from tests.e2e.labkit import HOSTNAME, down_both, start_watch, status, until
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot

pytestmark = pytest.mark.root

#: The home keeper puts the home's openings back within this after the home's own reload.
HOME_BACK_WITHIN = 5.0


def install(lab: Lab, shape: str, host: str, files: Path) -> None:
    """Make ``host``'s firewall what the host's own tool writes (the same call reloads it later)."""
    if shape == "ufw":
        lab.exec(host, "ufw", "--force", "enable")
        lab.exec(host, "ufw", "allow", "22/tcp")
        lab.exec(host, "ufw", "reload")  # a reload's chains differ a little from the first enable's
        return
    text = {"docker": hostshapes.DOCKER, "nftables": hostshapes.NFTABLES, "firewalld": hostshapes.FIREWALLD}[shape]
    (files / shape).write_text(text)
    tool = ("iptables-nft-restore",) if shape == "docker" else ("nft", "-f")
    lab.exec(host, *tool, str(files / shape))


def host_reload(lab: Lab, shape: str, host: str, files: Path) -> None:
    """The host rewriting its own rules: Docker restarting, nft -f, ufw reload."""
    if shape == "ufw":
        lab.exec(host, "ufw", "reload")
    else:
        install(lab, shape, host, files)


# (the VPS's shape, the home box's shape): ufw's files are global, so ufw runs in one
# namespace of the lab at a time.
SHAPES = [("docker", "ufw"), ("nftables", "nftables"), ("ufw", "docker"), ("firewalld", "firewalld")]


@pytest.mark.parametrize(("vps_shape", "home_shape"), SHAPES, ids=[f"{v}-vps-{h}-home" for v, h in SHAPES])
def test_host_firewall_shape(vps_shape: str, home_shape: str, lab: Lab, sites: tuple[Path, Path], tmp_path: Path,
                             request: pytest.FixtureRequest, capsys: pytest.CaptureFixture) -> None:
    if "ufw" in (vps_shape, home_shape):
        request.getfixturevalue("ufw_files")
    shapes = {"vps": vps_shape, "home": home_shape}
    vps_site, home_site = sites
    configure(lab, vps_site, home_site,
              ["web", "--listen", "80", "--target", "8080", "--check", "http:/", "--hostname", HOSTNAME])
    lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080")
    assert lab.wait_tcp("home", "127.0.0.1", 8080)
    for host, shape in shapes.items():
        install(lab, shape, host, tmp_path)
    before = {host: snapshot(lab, host) for host in ("vps", "home")}

    dry = cli(lab, "vps", vps_site, "up", "vps", "--dry-run")
    assert "open in" in dry.stdout, dry.stdout
    assert snapshot(lab, "vps") == before["vps"]
    doctor = cli(lab, "vps", vps_site, "doctor", check=False)
    assert "host firewall openings: up vps will open" in doctor.stdout, doctor.stdout
    if home_shape == "ufw":
        dry = cli(lab, "home", home_site, "up", "home", "--dry-run")
        assert "open in" in dry.stdout and "ufw" in dry.stdout, dry.stdout  # the target port from the tunnel

    cli(lab, "vps", vps_site, "up", "vps")
    cli(lab, "home", home_site, "up", "home")
    took, reply = until(lab, 200, 15)
    assert reply["body"].strip() == lab.visitor_address
    again = cli(lab, "vps", vps_site, "up", "vps")
    assert "nothing to do" in again.stdout, again.stdout
    log = tmp_path / "watch.log"
    watch = start_watch(lab, vps_site, log)
    code, data = status(lab, vps_site)
    fw = data["host_firewall"]
    assert fw["found"] and fw["opened"], fw
    text = cli(lab, "vps", vps_site, "status", check=False).stdout
    assert "host firewall:" in text and "opened in" in text, text

    # Home down: the friendly page (the page server's port is open in the host's firewall too).
    lab.pull_cable()
    until(lab, 503, 10)
    lab.plug_cable()
    until(lab, 200, 20)

    # The VPS rewrites its own rules: served again within 15 s, and status says what was put back.
    host_reload(lab, vps_shape, "vps", tmp_path)
    reloaded = time.monotonic()
    took, reply = until(lab, 200, 15)
    with capsys.disabled():
        print(f"\n[{vps_shape}] served again {took:.1f} s after the VPS's reload", flush=True)
    assert reply["body"].strip() == lab.visitor_address
    if vps_shape != "ufw":  # ufw writes our rules back itself
        deadline = reloaded + 10
        while time.monotonic() < deadline and "host firewall: reopened in" not in log.read_text():
            time.sleep(0.2)
        assert "host firewall: reopened in" in log.read_text(), log.read_text()
        code, data = status(lab, vps_site)
        assert data["host_firewall"]["reopened"] >= 1, data["host_firewall"]
    # The home keeper watches the home box's firewall (issue 29).
    keeper_log = next(home_site.rglob("home-keeper-*.log"))
    host_reload(lab, home_shape, "home", tmp_path)
    reloaded = time.monotonic()
    # Docker's chains drop nothing home needs (no opening there); ufw writes ours back itself.
    if home_shape not in ("docker", "ufw"):
        while time.monotonic() < reloaded + HOME_BACK_WITHIN and "host firewall: reopened in" not in (
                keeper_log.read_text()):
            time.sleep(0.1)
        back = time.monotonic() - reloaded
        assert "host firewall: reopened in" in keeper_log.read_text(), keeper_log.read_text()
        with capsys.disabled():
            print(f"\n[{home_shape}] home's openings back {back:.1f} s after home's reload", flush=True)
        home_status = json.loads(cli(lab, "home", home_site, "status", "--json").stdout)
        assert home_status["homes"][0]["host_firewall"]["reopened"] >= 1, home_status
        assert home_status["homes"][0]["keeper_pid"], home_status
        text = cli(lab, "home", home_site, "status").stdout
        assert "reopened by the home keeper after a host reload" in text and "keeper running" in text, text
    took, reply = until(lab, 200, HOME_BACK_WITHIN)
    assert reply["body"].strip() == lab.visitor_address

    watch.send_signal(signal.SIGTERM)
    assert watch.wait(10) == 0
    down_both(lab, vps_site, home_site, before, openvpn_gone=False)
    for host, shape in shapes.items():
        if shape == "ufw":
            added = lab.exec(host, "ufw", "show", "added").stdout
            assert "vpnoffload" not in added, added
