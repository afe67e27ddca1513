"""The fleet's alert rules on a real watchdog's scrape: a VPS and a home box in the namespace lab,
the watchdog's metrics on loopback, each scrape fed to ``promtool test rules`` as a target's series.
Home up: no alert. Home's tunnel taken down: its service on the page and the tunnel down. The
watchdog stopped: nothing answers the scrape, and the watchdog-down alert fires."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import cli, configure
from tests.e2e.labkit import WEB, home_web, start_watch, wait_status
from tests.helpers import firing_test, run_rule_test, scrape_samples
from vpnoffload.lab.netns import Lab

pytestmark = pytest.mark.root

METRICS = "127.0.0.1:9477"
# Runs in the VPS's namespace: one scrape, its body on stdout (exit 3 when nothing answers).
SCRAPE = r"""
import sys, urllib.request
try:
    print(urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=3).read().decode(), end="")
except OSError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
"""


def scrape(lab: Lab) -> tuple[list[tuple[str, dict[str, str], float]], float] | None:
    """The watchdog's samples and the wall time of the scrape; None when nothing answers."""
    now = time.time()
    proc = lab.exec("vps", sys.executable, "-c", SCRAPE, METRICS, check=False, timeout=15)
    return (scrape_samples(proc.stdout), now) if proc.returncode == 0 else None


def sample(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float | None:
    return next((v for n, got, v in samples if n == name and got == labels), None)


def alerts_fire(tmp_path: Path, scraped: tuple[list, float] | None, firing: list[dict[str, str]]) -> None:
    samples, now = scraped if scraped is not None else ([], time.time())
    code, out = run_rule_test(tmp_path / "scrape.test.yml",
                              firing_test(samples, firing, now, up=0 if scraped is None else 1))
    assert code == 0, out


def with_metrics(site: Path) -> None:
    import tomlkit

    path = site / "vpnoffload.toml"
    doc = tomlkit.parse(path.read_text())
    doc.setdefault("watch", tomlkit.table())["metrics"] = METRICS
    path.write_text(tomlkit.dumps(doc))


def test_alert_rules_on_a_real_watchdogs_scrape(lab: Lab, sites: tuple[Path, Path], tmp_path: Path) -> None:
    vps_site, home_site = sites
    configure(lab, vps_site, home_site, WEB)
    with_metrics(vps_site)
    home_web(lab)
    cli(lab, "vps", vps_site, "up", "vps")
    cli(lab, "home", home_site, "up", "home")
    watch = start_watch(lab, vps_site, tmp_path / "watch.log")
    try:
        wait_status(lab, vps_site, 0, limit=10)
        healthy = scrape(lab)
        assert healthy is not None, (tmp_path / "watch.log").read_text()
        assert sample(healthy[0], "vpnoffload_service_forwarding", service="web") == 1
        assert sample(healthy[0], "vpnoffload_home_tunnel_up", home="home") == 1
        alerts_fire(tmp_path, healthy, [])

        cli(lab, "home", home_site, "down", "home")  # OpenVPN's client says goodbye (explicit-exit-notify)
        deadline = time.monotonic() + 20
        while True:
            away = scrape(lab)
            assert away is not None
            if (sample(away[0], "vpnoffload_service_forwarding", service="web") == 0
                    and sample(away[0], "vpnoffload_home_tunnel_up", home="home") == 0):
                break
            assert time.monotonic() < deadline, f"no fallback and tunnel down in the metrics within 20 s: {away}"
            time.sleep(0.3)
        alerts_fire(tmp_path, away, [
            {"alertname": "VpnoffloadServiceOnPage", "severity": "critical", "service": "web"},
            {"alertname": "VpnoffloadTunnelDown", "severity": "warning", "home": "home"}])
    finally:
        watch.terminate()
        watch.wait(10)
    assert scrape(lab) is None  # the watchdog is gone: nobody answers on its metrics address
    alerts_fire(tmp_path, None, [{"alertname": "VpnoffloadWatchdogDown", "severity": "critical"}])
