"""Issue 17, item 2 (rest): processes dying and boxes rebooting, in the namespace lab.

- (the OpenVPN server, then the client, killed and restarted by vpnoffload itself:
  test_fault_catalogue.py's ``openvpn-server-killed`` and ``openvpn-client-killed``, with
  the page within 3 s, the site back within 30 s, the watchdog's restart counted in
  ``status``, the keeper's ``up home`` logged, and ``down home`` restoring home at the end);
- the home box rebooting while visitors arrive: every process in its namespace
  killed, what a reboot wipes (policy rules, table 7701, our chains) wiped,
  ``up home`` run again as the boot unit would: the page meanwhile, home within
  30 s, and ``down home`` then leaves the box exactly as before ``up home``;
- the VPS rebooting while home is down: its processes killed, our chains,
  sysctls and addresses wiped, ``up vps`` then ``watch``: the page (not a
  timeout) within a few seconds of the watchdog, home back within 30 s of the cable.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.budget import budget
from tests.e2e.conftest import cli, crowd, openvpn_pids
from tests.e2e.labkit import (
    deploy,
    home_web,
    kill,
    start_watch,
    status,
    wait_status,
    wipe_like_a_reboot,
)
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot, snapshot_diff

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

def test_home_reboots_while_visitors_arrive(lab: Lab, sites: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    vps_site, home_site = sites
    watch, before = deploy(lab, sites, tmp_path)

    # Power cut: every process goes (openvpn, the keeper, the web server), the kernel forgets our state.
    cut = time.time()
    kill(lab, "home", everything=True)
    wipe_like_a_reboot(lab, "home")
    page = crowd(lab, "^503 ", since=cut)
    # Boot: the web server, then the boot unit's `up home`.
    home_web(lab)
    cli(lab, "home", home_site, "up", "home")
    back = crowd(lab, "^200 ", since=cut, limit=30)
    with capsys.disabled():
        print(f"\n[faults] home rebooted -> page after {page:.2f} s, site back after {back:.2f} s")
    assert page <= budget().failover and back <= budget().restarted
    code, data = wait_status(lab, vps_site, 0, limit=10)
    assert {s["state"] for s in data["services"]} == {"forwarding"}

    # `down home` after the reboot still restores exactly what was there before the first `up home`
    # (the boot-time sysctls are the defaults the record kept).
    cli(lab, "home", home_site, "down", "home")
    after = snapshot(lab, "home")
    assert after == before, snapshot_diff(before, after)
    watch.send_signal(signal.SIGTERM)
    watch.wait(10)
    cli(lab, "vps", vps_site, "down", "vps")


def test_vps_reboots_while_home_is_down(lab: Lab, sites: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    vps_site, home_site = sites
    watch, _ = deploy(lab, sites, tmp_path)
    lab.pull_cable()
    crowd(lab, "^503 ", since=time.time())

    # The VPS loses power: the watchdog, page server, OpenVPN go; so do our chains, sysctls, addresses.
    kill(lab, "vps", everything=True)
    watch.wait(5)
    wipe_like_a_reboot(lab, "vps")
    # Boot: the boot unit's `up vps`, then the watch unit.
    cli(lab, "vps", vps_site, "up", "vps")
    started = time.time()
    watch = start_watch(lab, vps_site, tmp_path / "watch2.log")
    page = crowd(lab, "^503 ", since=started)
    with capsys.disabled():
        print(f"\n[faults] VPS rebooted with home down -> page {page:.2f} s after the watchdog started")
    assert page <= budget().first_page
    code, data = status(lab, vps_site)
    assert code == 1 and {s["state"] for s in data["services"]} == {"fallback"}, data

    plugged = time.time()
    lab.plug_cable()
    back = crowd(lab, "^200 ", since=plugged, limit=35)
    with capsys.disabled():
        print(f"[faults] cable plugged -> site back after {back:.2f} s")
    assert back <= budget().restarted
    wait_status(lab, vps_site, 0, limit=10)
    watch.send_signal(signal.SIGTERM)
    watch.wait(10)
    cli(lab, "home", home_site, "down", "home")
    cli(lab, "vps", vps_site, "down", "vps")
    assert openvpn_pids(lab, "vps") == [] and openvpn_pids(lab, "home") == []
