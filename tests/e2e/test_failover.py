"""Issue 4 end to end: the watchdog swaps visitors to the friendly page when home's
cable is pulled and back when it is plugged in, with real OpenVPN, iptables and
conntrack in four namespaces. Measured times are printed in the test output.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from tests.budget import STEADY_RSS_KB, budget
from tests.e2e.conftest import cli, configure, crowd, openvpn_pids
from tests.e2e.labkit import HOSTNAME, report, start_watch, status, visit, wait_status
from tests.e2e.vpsmem import describe, footprint, wait_for_roles
from vpnoffload.lab.netns import Lab

pytestmark = pytest.mark.root

#: Issue 14: the sum of every vpnoffload process on the VPS (OpenVPN aside), RSS (steady: tests/budget.py).
OUTAGE_MB = 24

def test_cable_pulled_friendly_page_then_back(lab: Lab, sites: tuple[Path, Path], capsys, tmp_path: Path) -> None:
    vps_site, home_site = sites
    configure(lab, vps_site, home_site,
              ["web", "--listen", "80", "--target", "8080", "--check", "http:/", "--hostname", HOSTNAME],
              ["shell", "--listen", "2222", "--target", "2223"])
    lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080")
    lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "2223")
    assert lab.wait_tcp("home", "127.0.0.1", 8080) and lab.wait_tcp("home", "127.0.0.1", 2223)
    cli(lab, "vps", vps_site, "up", "vps")
    cli(lab, "home", home_site, "up", "home")
    log = tmp_path / "watch.log"
    watch = start_watch(lab, vps_site, log)

    # Healthy: served from home; status says so with exit 0.
    first = visit(lab)
    assert first["status"] == 200 and first["body"].strip() == lab.visitor_address
    # (OpenVPN rewrites its status file every 2 s, so the new home may take that long to show.)
    code, data = wait_status(lab, vps_site, 0)
    assert data["tunnel"]["up"] and {s["state"] for s in data["services"]} == {"forwarding"}

    # Pull the cable: the friendly page within 3 s, after which no request hangs or fails.
    pulled = time.time()
    lab.pull_cable()
    took = crowd(lab, "^503 ", since=pulled)
    report(capsys, f"cable pulled -> friendly page after {took:.2f} s (budget {budget().failover:g} s)")
    assert took <= budget().failover
    page = visit(lab)
    assert page["status"] == 503
    assert page["headers"].get("Retry-After") and page["headers"].get("Cache-Control") == "no-store"
    assert HOSTNAME in page["body"] and "<style>" in page["body"]
    replies = [visit(lab) for _ in range(5)]
    assert all(r["status"] == 503 and r["seconds"] < budget().page_reply for r in replies), replies
    # Lean during the outage: the watchdog and the page server (the swap child has gone).
    roles = wait_for_roles(lab, {"watchdog", "page server"}, limit=10)
    assert roles == {"watchdog", "page server"}, roles
    outage = footprint(lab)
    report(capsys, f"vpnoffload on the VPS during the outage: {describe(outage)} (goal <= {OUTAGE_MB} MB)")
    assert outage["rss_kb"] <= OUTAGE_MB * 1024
    # A non-HTTP service is refused at once, never left hanging.
    probe = lab.tcp_probe("visitor", lab.vps_address, 2222, timeout=2)
    assert probe == "refused", probe
    code, data = status(lab, vps_site)
    states = {s["name"]: s["state"] for s in data["services"]}
    assert code == 1 and states == {"web": "fallback", "shell": "fallback"}, data

    # Kill the watchdog mid-outage: the page stays; a new watchdog converges to fallback.
    watch.send_signal(signal.SIGKILL)
    watch.wait(5)
    assert visit(lab)["status"] == 503
    # status tells the truth without a watchdog too: the rules still serve the page.
    code, data = status(lab, vps_site)
    assert code == 1 and not data["watchdog"]["running"]
    assert {s["name"]: s["state"] for s in data["services"]} == {"web": "fallback", "shell": "fallback"}
    watch = start_watch(lab, vps_site, log)
    code, data = status(lab, vps_site)
    assert code == 1 and {s["state"] for s in data["services"]} == {"fallback"}
    assert visit(lab)["status"] == 503

    # Plug the cable back: the real site within 5 s.
    plugged = time.time()
    lab.plug_cable()
    took = crowd(lab, "^200 ", since=plugged, limit=30)
    report(capsys, f"cable plugged -> real site after {took:.2f} s (budget {budget().recovery:g} s)")
    assert took <= budget().recovery
    assert visit(lab)["body"].strip() == lab.visitor_address
    assert lab.wait_tcp("visitor", lab.vps_address, 2222, timeout=5)
    code, data = wait_status(lab, vps_site, 0)
    assert {s["state"] for s in data["services"]} == {"forwarding"}

    # Lean: after a full outage-and-recovery cycle (this watchdog saw the recovery) the page
    # server has been stopped again and the watchdog is all of vpnoffload on the VPS.
    roles = wait_for_roles(lab, {"watchdog"}, limit=15)
    assert roles == {"watchdog"}, roles
    steady = footprint(lab)
    report(capsys, f"vpnoffload on the VPS, home up again: {describe(steady)} (goal <= {STEADY_RSS_KB} KiB)")
    assert steady["rss_kb"] <= STEADY_RSS_KB
    assert visit(lab)["status"] == 200

    # Restarting a watchdog while all is well changes nothing for visitors.
    watch.send_signal(signal.SIGTERM)
    assert watch.wait(10) == 0
    assert visit(lab)["status"] == 200

    cli(lab, "home", home_site, "down", "home")
    cli(lab, "vps", vps_site, "down", "vps")
    assert openvpn_pids(lab, "vps") == [] and openvpn_pids(lab, "home") == []
    print(log.read_text())
