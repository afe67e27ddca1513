"""The fleet's monitoring: the watchdog's metrics, the Prometheus alert rules (promtool) and the
Grafana dashboard shipped in the Ansible collection, checked against a real scrape."""

from __future__ import annotations

import json
import os
import re
import socket
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from tests.helpers import MONITORING, RULES, firing_test, promtool, run_rule_test, scrape_samples
from vpnoffload.fallback import copies
from vpnoffload.lean import accessdrops
from vpnoffload.lean.snapshot import ConfigView
from vpnoffload.model import Access, Config, Home, Service, Tunnel, Vps
from vpnoffload.watch.decide import Watchdog
from vpnoffload.watch.health import Result
from vpnoffload.watch.metrics import MetricsServer, exposition

DASHBOARD = MONITORING / "vpnoffload-fleet.dashboard.json"
#: Series Prometheus itself adds to every target's scrape.
SYNTHETIC = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
                "bool", "inf", "nan"}


def fleet_config() -> Config:
    """Every kind of service the metrics describe: two homes, kept pages, access rules."""
    return Config(
        vps=Vps(IPv4Address("203.0.113.10")),
        tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
        homes={"flat": Home("flat", IPv4Address("198.51.100.2")), "office": Home("office", IPv4Address("198.51.100.3"))},
        services={
            "blog": Service("blog", IPv4Address("203.0.113.10"), 80, "flat", 8080, fallback="page",
                            hostname="blog.example.org", backups=("office",), offline_copy=("/",),
                            access=Access(deny=(IPv4Network("192.0.2.0/24"),))),
            "git": Service("git", IPv4Address("203.0.113.10"), 22, "office", 2222),
        },
    )


def dog(up: bool = True) -> Watchdog:
    result = Result("up", 0.002, "ok") if up else Result("down", 0.5, "refused")
    watchdog = Watchdog(ConfigView.of(fleet_config()), lambda a, f: None, lambda s, h, c: result)
    watchdog.start()
    return watchdog


def scrape(watchdog: Watchdog, run: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """One HTTP scrape of the real metrics server (the kernel's drop counters faked: no root here)."""
    monkeypatch.setattr(accessdrops, "read", lambda numbers: {name: {"deny": 3} for name in numbers.values()})
    os.makedirs(copies.service_dir(run, "blog"), exist_ok=True)
    copies.write_index(run, "blog", {"format": 1, "last_fetch": 1000.0, "result": "1/1 fetched",
                                     "pages": {"/": {"file": "x", "size": 7, "fetched": 900.0}}})
    server = MetricsServer("127.0.0.1:0", watchdog, run)
    server.start()
    try:
        with socket.create_connection(server.server_address[:2], timeout=5) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
    finally:
        server.shutdown()
        server.server_close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


# ------------------------------------------------------------------ the metrics


def test_each_home_tunnel_from_openvpn_or_from_the_checks() -> None:
    watchdog = dog()
    watchdog.openvpn = {"clients": {"flat": {"real_address": "192.0.2.66:40000"}}, "read_at": 0.0}
    text = exposition(watchdog)
    assert 'vpnoffload_home_tunnel_up{home="flat"} 1' in text
    assert 'vpnoffload_home_tunnel_up{home="office"} 0' in text  # not in OpenVPN's list
    watchdog.openvpn = None  # OpenVPN's list unread: the checks through the tunnel speak
    for st in watchdog.status.values():
        for home, hh in st.homes.items():
            hh.answered = home == "office"
    text = exposition(watchdog)
    assert 'vpnoffload_home_tunnel_up{home="flat"} 0' in text
    assert 'vpnoffload_home_tunnel_up{home="office"} 1' in text


def test_heartbeat_memory_and_refresh_interval(tmp_path: Path) -> None:
    watchdog = dog()
    samples = {name: value for name, _, value in scrape_samples(exposition(watchdog, str(tmp_path)))}
    assert samples["vpnoffload_watch_interval_seconds"] == 0.5
    last = max(s.last_check for s in watchdog.status.values())
    assert last > 0 and samples["vpnoffload_watch_last_round_timestamp_seconds"] == pytest.approx(last, abs=0.001)
    assert 1_000_000 < samples["process_resident_memory_bytes"] < 2_000_000_000
    assert samples["vpnoffload_offline_copy_interval_seconds"] == 600.0


def test_the_snapshot_view_keeps_which_services_have_access_rules() -> None:
    # The watchdog reads a ConfigView, not the model: without the flag no drop counter was ever shown.
    assert accessdrops.restricted(ConfigView.of(fleet_config())) == {1: "blog"}


# ------------------------------------------------------------------ the alert rules


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    code, out = promtool("check", "rules", str(RULES))
    assert code == 0 and "SUCCESS" in out, out
    code, out = promtool("test", "rules", "vpnoffload.rules.test.yml", cwd=MONITORING)
    assert code == 0, out


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    assert {"VpnoffloadServiceOnPage", "VpnoffloadTunnelDown", "VpnoffloadWatchdogDown",
            "VpnoffloadOfflineCopyStale"} <= alerts
    tests = (MONITORING / "vpnoffload.rules.test.yml").read_text().split("- eval_time:")[1:]
    quiet = {re.search(r"alertname: (\w+)", t)[1] for t in tests if "exp_alerts: []" in t}  # type: ignore[index]
    firing = {re.search(r"alertname: (\w+)", t)[1] for t in tests if "exp_labels:" in t}  # type: ignore[index]
    assert quiet == firing == alerts
    for rule in RULES.read_text().split("- alert: ")[1:]:
        assert re.search(r"severity: (critical|warning)", rule) and "summary:" in rule and "description:" in rule


@pytest.mark.parametrize("up", [True, False])
def test_a_real_scrape_fires_exactly_service_on_page_when_home_is_down(tmp_path: Path, up: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    watchdog = dog(up)
    for _ in range(3):
        watchdog.tick()  # fall = 2 failed checks: on the page
    watchdog.openvpn = {"clients": {"flat": {}, "office": {}}, "read_at": 0.0}
    samples = scrape_samples(scrape(watchdog, str(tmp_path), monkeypatch))
    now = max(s.last_check for s in watchdog.status.values())
    firing = [] if up else [{"alertname": "VpnoffloadServiceOnPage", "severity": "critical", "service": name}
                            for name in ("blog", "git")]
    code, out = run_rule_test(tmp_path / "scrape.test.yml", firing_test(samples, firing, now))
    assert code == 0, out


# ------------------------------------------------------------------ the dashboard


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, ranges, label lists and
    Grafana's variables taken out; function names are followed by '(')."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\{?\w+\}?", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in data["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    """The ``expr`` of every rule, a folded (``>-``) one joined into one line."""
    lines, found = RULES.read_text().splitlines(), []
    for i, line in enumerate(lines):
        match = re.match(r"(\s*)expr: (.*)", line)
        if match is None:
            continue
        if match[2] != ">-":
            found.append(match[2])
            continue
        body = []
        for more in lines[i + 1:]:
            if len(more) - len(more.lstrip()) <= len(match[1]):
                break
            body.append(more.strip())
        found.append(" ".join(body))
    return found


def test_dashboard_reads_only_metrics_the_watchdog_emits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watchdog = dog()
    watchdog.openvpn = {"clients": {"flat": {}}, "read_at": 0.0}
    emitted = {name for name, _, _ in scrape_samples(scrape(watchdog, str(tmp_path), monkeypatch))}
    exprs = dashboard_exprs()
    read = set().union(*map(metric_names, exprs))
    assert read - emitted - SYNTHETIC == set()
    # Each panel of the brief has its metric.
    assert {"vpnoffload_service_forwarding", "vpnoffload_home_tunnel_up", "vpnoffload_check_latency_seconds",
            "vpnoffload_swaps_total", "vpnoffload_offline_copy_age_seconds", "process_resident_memory_bytes"} <= read
    assert all('instance=~"$instance"' in e for e in exprs)
    # The rules read only emitted metrics too.
    assert set().union(*map(metric_names, rule_exprs())) - emitted - SYNTHETIC == set()


def test_dashboard_shape_and_valid_promql(tmp_path: Path) -> None:
    data = json.loads(DASHBOARD.read_text())
    assert data["schemaVersion"] >= 36
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query" and variables["instance"]["includeAll"]
    for panel in data["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    # Every expression, with Grafana's variables filled in, is PromQL that Prometheus accepts.
    filled = [e.replace("$instance", ".*").replace("$__rate_interval", "5m").replace("$__range", "6h")
              for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:expr{i}", "expr": e}
                                                         for i, e in enumerate(filled)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps(rules))
    code, out = promtool("check", "rules", str(path))
    assert code == 0, out
