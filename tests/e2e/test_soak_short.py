"""The suite's short version of bench/soak.py (issue 17 item 3): three cable pulls in one lab,
the watchdog SIGKILLed and restarted in the middle one, the OpenVPN client killed after it;
every outage shows the page and every recovery the site, status forwarding at the end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.budget import budget
from tests.e2e.conftest import crowd
from tests.e2e.labkit import deploy, kill, start_watch, through_outage, wait_status
from vpnoffload.lab.netns import Lab

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def test_three_pulls_with_a_watchdog_kill_and_a_client_kill(lab: Lab, sites: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    vps_site, _ = sites
    watch, _ = deploy(lab, sites, tmp_path)
    for pull in range(3):
        pulled = time.time()
        lab.pull_cable()
        assert crowd(lab, "^503 ", since=pulled) <= budget().failover
        if pull == 1:  # mid-outage: the watchdog dies and is started again
            watch.kill()
            watch.wait(5)
            watch = start_watch(lab, vps_site, tmp_path / "watch.log")
        plugged = time.time()
        lab.plug_cable()
        assert crowd(lab, "^200 ", since=plugged, limit=30) <= budget().recovery
    killed = time.time()
    assert kill(lab, "home", names=("openvpn",))
    page, back = through_outage(lab, since=killed, page_required=False)  # the keeper may beat the watchdog
    assert (page is None or page <= budget().failover) and back <= budget().restarted
    wait_status(lab, vps_site, 0, limit=10)
    watch.terminate()
    watch.wait(10)
