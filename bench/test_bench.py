"""Checks of the benchmark's pure parts (no root, no lab): ``python -m pytest bench -q``."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import time
from pathlib import Path

import pytest

import bench as bench_pkg
from bench import bulk, failover, measure, memory, report, run, servers, stage, tunnel, web
from bench.stage import BULK_PORT

WRK_OUTPUT = """\
Running 5s test @ http://203.0.113.10:80/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.93ms    2.10ms  40.12ms   80.00%
    Req/Sec     4.98k   300.00     5.50k    70.00%
  Latency Distribution
     50%    5.93ms
     75%    7.00ms
     90%    8.50ms
     99%    1.25s
  29931 requests in 5.02s, 7.12MB read
  Socket errors: connect 1, read 2, write 0, timeout 4
  Non-2xx or 3xx responses: 12
Requests/sec:   5962.35
Transfer/sec:      1.42MB
"""


def test_parse_wrk_reads_rate_percentiles_and_errors() -> None:
    result = measure.parse_wrk(WRK_OUTPUT)
    assert result.requests == 29931 and result.seconds == pytest.approx(5.02)
    assert result.rps == pytest.approx(5962.35)
    assert result.p50_ms == pytest.approx(5.93) and result.p99_ms == pytest.approx(1250.0)
    assert result.errors == 7 and result.non_2xx == 12


def test_parse_wrk_without_errors_and_garbage() -> None:
    clean = "\n".join(line for line in WRK_OUTPUT.splitlines() if "Socket" not in line and "Non-2xx" not in line)
    result = measure.parse_wrk(clean)
    assert result.errors == 0 and result.non_2xx == 0
    with pytest.raises(ValueError, match="unexpected wrk output"):
        measure.parse_wrk("unable to connect to 203.0.113.10:80 Connection refused")


def test_parse_iperf3() -> None:
    text = json.dumps({"end": {"sum_received": {"bits_per_second": 123e6}, "sum_sent": {"retransmits": 7}}})
    result = measure.parse_iperf3(text)
    assert result.mbit_s == pytest.approx(123.0) and result.retransmits == 7
    with pytest.raises(ValueError, match="server is busy"):
        measure.parse_iperf3(json.dumps({"error": "the server is busy running a test"}))


def test_percentile_interpolates() -> None:
    assert measure.percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert measure.percentile([3.0], 95) == 3.0
    assert math.isnan(measure.percentile([], 95))
    assert measure.percentile(list(range(1, 21)), 95) == pytest.approx(19.05)


def test_edit_config_sets_replaces_and_deletes_before_inline_blocks() -> None:
    text = "dev tun\nmssfix 1400 mtu\ndata-ciphers AES-256-GCM\n<ca>\nPEM\n</ca>\n"
    out = tunnel.edit_config(text, [("data-ciphers", "CHACHA20-POLY1305"), ("mssfix", None), ("fast-io", "")])
    lines = out.splitlines()
    assert "mssfix 1400 mtu" not in lines and "data-ciphers CHACHA20-POLY1305" in lines
    assert lines.index("fast-io") < lines.index("<ca>")
    assert out.count("data-ciphers") == 1


def test_stock_client_takes_the_pki_blocks() -> None:
    profile = "dev x\n<ca>\nCA\n</ca>\n<cert>\nC\n</cert>\n<key>\nK\n</key>\n<tls-crypt>\nT\n</tls-crypt>\n"
    server, client = tunnel.stock_configs(profile, "203.0.113.10", "server")
    assert "keepalive 10 120" in server and "cipher AES-128-GCM" in server
    assert "server 198.51.100.0 255.255.255.0" in server
    assert "remote 203.0.113.10 1194" in client and "verify-x509-name server name" in client
    for block in ("<ca>\nCA\n</ca>", "<cert>\nC\n</cert>", "<key>\nK\n</key>", "<tls-crypt>\nT\n</tls-crypt>"):
        assert block in client


def _results() -> run.Results:
    r = run.Results(run.QUICK, "2026-01-01 00:00 UTC", {"CPU": "test", "cores": "2", "OS": "12"}, "python -m bench.run")
    r.web = [web.Cell(system, mode, conns, rps, 1.0, 9.0, 0, 0, 0, 0, 10.0, [rps])
             for mode in web.MODES for conns in (64, 1000)
             for system, rps in (("vpnoffload", 1300), ("nginx", 1000), ("nginx keepalive", 1200), ("HAProxy", 1100))]
    r.bulk = [bulk.Cell(p, d, v, 0, 0, [v]) for p, v in (("via vpnoffload", 96), ("via HAProxy", 90),
                                                          ("raw tunnel", 100)) for d in bulk.DIRECTIONS]
    r.memory = [memory.Sample("vpnoffload", n, n, 40000, 30000, n, n / 4, {"OpenVPN": (8000, 3000)}, (8000, 3000))
                for n in (1, 100, 1000)]
    r.failover = [failover.Cycle(1.5 + i / 100, 1.0, 2.5, 0) for i in range(20)]
    r.watchdog = [failover.WatchdogCost("idle", 10, 18000, 18000, 0.03, 0.0)]
    r.tunnel = [tunnel.Cell(v, d, m, 10, 50.0, 400.0, [m, m], [400.0, 400.0])
                for v, m in (("generated", 200), ("buffers 1 MiB", 260)) for d in tunnel.DIRECTIONS]
    own = {"watchdog": [10800, 5300]}
    r.footprint = {"steady": {"rss_kb": 10800, "pss_kb": 5300, "parts": own},
                   "outage": {"rss_kb": 21300, "pss_kb": 9400, "parts": {**own, "page server": [10500, 4100]}},
                   "flood": {"rss_kb": 22200, "pss_kb": 11600, "parts": {**own, "page server": [11400, 6300]},
                             "connections": 1000, "seconds": 25.0, "visits": [[503, 0.06], [503, 0.09]],
                             "flooder": {"opened": 5000, "dropped": 4000, "shortest_drop": 5.2, "longest_drop": 5.3}},
                   "goals_mb": {"steady": 16, "outage": 24, "flood": 32}}
    r.soak = {"pulls": 8, "minutes": 2.9, "every": 2, "failed_during_outage": 0,
              "failover_s": {"n": 8, "missed": 0, "p50": 1.46, "p95": 1.78, "max": 1.9},
              "recovery_s": {"n": 8, "missed": 0, "p50": 0.66, "p95": 0.85, "max": 1.05},
              "faults": {"watchdog": {"count": 1, "status_ok": 1, "page_s": None,
                                      "back_s": {"n": 1, "missed": 0, "p50": 0.9, "p95": 0.9, "max": 0.9},
                                      "failed_requests": 0},
                         "server": {"count": 1, "status_ok": 1, "page_s": {"n": 1, "missed": 0, "p50": 1.4,
                                                                          "p95": 1.4, "max": 1.4},
                                    "back_s": {"n": 1, "missed": 0, "p50": 11.9, "p95": 11.9, "max": 11.9},
                                    "failed_requests": 0},
                         "client": {"count": 1, "status_ok": 1, "page_s": {"n": 0, "missed": 1},
                                    "back_s": {"n": 1, "missed": 0, "p50": 15.3, "p95": 15.3, "max": 15.3},
                                    "failed_requests": 0},
                         "home-reboot": {"count": 1, "status_ok": 1, "page_s": {"n": 1, "missed": 0, "p50": 1.4,
                                                                               "p95": 1.4, "max": 1.4},
                                         "back_s": {"n": 1, "missed": 0, "p50": 4.1, "p95": 4.1, "max": 4.1},
                                         "failed_requests": 0}}}
    r.errors = {"item 9 (imaginary)": "RuntimeError: boom"}
    return r


def test_goals_and_report_render() -> None:
    results = _results()
    goals = {goal: ok for goal, _, ok in report.goals(results)}
    assert all(goals.values()), goals
    text = report.render(results, {"web": "img/bench-requests.png"})
    for heading in ("## Goals", "## 1.", "## 2.", "## 3.", "### vpnoffload's own footprint", "## 4.", "### Soak",
                    "## 5.", "## 6.", "## Reproduce"):
        assert heading in text
    assert "*Generated whole by `python -m bench.run` (quick profile) on 2026-01-01 00:00 UTC" in text
    assert "| outage, slow-connection flood | 21.7 |" in text and "soak: failover p95 ≤ 2 s over 8 pulls" in text
    assert "| OpenVPN client killed | 1 | – / – (0 of 1; the others never saw the page) |" in text
    assert "![requests per second" in text and "**FAILED**" in text and "boom" in text
    assert report.tuning_verdicts(results.tunnel) == {"buffers 1 MiB": "higher"}
    assert any(line.startswith("FAILED") for line in report.goal_lines(results))


def test_missed_goal_is_said_plainly() -> None:
    results = _results()
    results.web = [c for c in results.web if c.system != "vpnoffload"] + [
        web.Cell("vpnoffload", mode, conns, 1100, 1.0, 9.0, 0, 0, 0, 0, 10.0, [1100])
        for mode in web.MODES for conns in (64, 1000)]
    row = next(r for r in report.goals(results) if "nginx" in r[0])
    assert row[2] is False and "(miss" in row[1]
    assert "**MISSED**" in report.render(results, {})


def test_results_survive_json(tmp_path) -> None:
    results = _results()
    path = tmp_path / "r.json"
    path.write_text(json.dumps(run._jsonable(results)))
    again = run.load_results(path)
    assert report.render(again, {}) == report.render(results, {})


def test_a_missing_section_says_so_and_a_missed_soak_goal_is_plain() -> None:
    results = _results()
    results.footprint = None
    results.soak["failover_s"] = {"n": 7, "missed": 1, "p50": 1.7, "p95": 2.1, "max": 2.2}
    text = report.render(results, {})
    assert "### vpnoffload's own footprint: steady, outage, flood\n\n*Not measured in this run.*" in text
    row = next(r for r in report.goals(results) if r[0].startswith("soak: failover"))
    assert row[2] is False and "1 never happened" in row[1]


def test_the_reproduce_block_runs_on_stock_debian_as_root() -> None:
    text = report.render(_results(), {})
    block = text[text.index("## Reproduce"):].split("```")[1]
    assert "sudo" not in block and "\npip " not in block and "python -m" in block
    # Nothing stops at a question: iperf3's debconf question is asked at priority high.
    assert block.splitlines()[1].startswith("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ")
    assert ".venv/bin/pip install" in block and "python3-dev gcc" in block


def test_the_crowd_table_shows_each_kind_and_the_cable_goal() -> None:
    from bench import soak

    cycles = [{"prompt_page_s": 0.7 + i / 100, "prompt_back_s": 0.5, "neither": 0} for i in range(10)]
    cycles[3]["neither"] = 2
    faults = [{"kind": "home-stopped", "page_s": 0.8, "back_s": 0.3, "neither": 15},
              {"kind": "client", "page_s": None, "back_s": 2.4, "neither": 0},
              {"kind": "watchdog", "page_s": None, "back_s": 0.9}]
    crowd = soak.by_kind(cycles, faults)
    assert set(crowd) == {"cable", "home-stopped", "client"}
    assert crowd["cable"]["count"] == 10 and crowd["cable"]["neither"] == 2
    assert crowd["cable"]["page_s"]["p90"] <= 0.79 and crowd["client"]["page_s"] == {"n": 0, "missed": 1}
    lines = report._crowd_table({"crowd": crowd, "crowd_every": 0.05, "prompt": 0.3})
    assert any("HAProxy ~6 s" in line for line in lines)
    cable = next(line for line in lines if line.startswith("| cable pulled"))
    assert cable.endswith("| 2 | yes |") and "0.50 / 0.50 / 0.50" in cable
    assert next(line for line in lines if line.startswith("| OpenVPN killed at home")).startswith(
        "| OpenVPN killed at home | 1 | never |")
    slow = {"crowd": {"cable": {**crowd["cable"], "back_s": {"n": 10, "missed": 0, "p50": 1.0, "p90": 1.2,
                                                             "p95": 1.3, "max": 1.4}}}}
    assert next(line for line in report._crowd_table(slow) if line.startswith("| cable")).endswith("| **no** |")
    assert report._crowd_table({}) == []
    assert soak.prompt_after([[10.0, 10.5, 503, True], [10.2, 10.4, 503, True], [10.3, 10.35, 200, False]],
                             9.0) == 1.4
    assert soak.prompt_after([[10.0, 10.5, 503, True]], 9.0) is None
    assert soak.neither([[0, 0, 200, True], [0, 0, 503, True], [0, 0, 0, False], [0, 0, 502, False]]) == 2


def test_drop_counters_name_each_end_and_place(tmp_path, monkeypatch) -> None:
    from pathlib import Path

    from bench import watchstate

    snmp = ("Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
            "Udp: 100 0 7 90 7 2\n")
    dev = ("Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes "
           "packets errs drop fifo colls carrier compressed\n"
           "vpnoffload0: 10 1 0 3 0 0 0 0 20 2 0 11 0 0 0 0\n")
    netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 4 5\n"
    files = {"snmp": snmp, "dev": dev, "netstat": netstat}
    real = Path.read_text

    def fake(self: Path, *a: object, **k: object) -> str:
        if self.parts[:2] == ("/", "proc") and self.name in files:
            return files[self.name]
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", fake)
    counters = watchstate.drop_counters({"vps": 1}, "vpnoffload0")
    assert counters == {"vps udp rcvbuf": 7, "vps udp sndbuf": 2, "vps tun rx": 3, "vps tun tx": 11}
    assert watchstate.tunnel_drops([1], "vpnoffload0") == 23
    assert watchstate.listen_drops(1) == 5
    assert watchstate.counter_delta({"a": 1, "b": 2}, {"a": 1, "b": 5, "c": 1}) == {"b": 3, "c": 1}


def test_item6_new_connections_are_reported_and_survive_json(tmp_path) -> None:
    results = _results()
    web_runs = [tunnel.WebRun(v, rep, rps, 20.0, 0, 100.0, 90.0, {"vps tun tx": 5} if v == "generated" else {})
                for rep in range(2) for v, rps in (("generated", 4000.0), ("txqueuelen 1000", 4400.0))]
    results.tunnel_web, results.tunnel_web_runs = tunnel.web_cells(web_runs), web_runs
    assert tunnel.web_ratios(web_runs)["txqueuelen 1000"] == [1.1, 1.1]
    text = report.render(results, {})
    assert "### New connections through DNAT, per tunnel variant" in text
    assert "| **generated** | 4,000 | 1.00× |" in text and "vps tun tx 10" in text
    assert "| txqueuelen 1000 | 4,400 | 1.10× |" in text
    path = tmp_path / "r.json"
    path.write_text(json.dumps(run._jsonable(results)))
    assert report.render(run.load_results(path), {}) == text


def test_item1_says_where_drops_were() -> None:
    results = _results()
    results.web_runs = [web.Run("vpnoffload", "new", 64, rep, 4000, 5, 80, 0, 0, 0, 3, 120,
                                {"vps tun tx": 2, "home udp rcvbuf": 1}) for rep in range(2)]
    text = report.render(results, {})
    assert "- vpnoffload, new @64: vps tun tx 4, home udp rcvbuf 2" in text


def test_item6_says_which_cipher_goes_first() -> None:
    results = _results()
    results.tunnel = [tunnel.Cell(v, d, 500, 10, 50.0, eff, [500, 500], [eff, eff])
                      for v, eff in (("generated", 1000.0), ("CHACHA20-POLY1305", 900.0),
                                     ("no AES-NI: AES-256-GCM", 600.0), ("no AES-NI: CHACHA20-POLY1305", 840.0))
                      for d in tunnel.DIRECTIONS]
    text = report.render(results, {})
    assert ("- Cipher order: CHACHA20-POLY1305 carried, per VPS CPU-second, with AES instructions 0.90× / 0.90×; "
            "without (OpenSSL's capability mask) 1.40× / 1.40× the data of AES-256-GCM") in text


# ------------------------------------------------------------------ the bulk port's listener


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_listener_accepts_simultaneous_connections_and_stops_by_itself() -> None:
    port = _free_port()
    proc = subprocess.Popen(servers.listener_argv(port, "127.0.0.1", limit=20, accepts=40))
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until it listens
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        refused = 0
        for _ in range(19):  # what iperf3 failed at: two checks at the same moment, round after round
            pair = [socket.socket(), socket.socket()]
            for s in pair:
                s.settimeout(2)
                refused += s.connect_ex(("127.0.0.1", port)) != 0
            for s in pair:
                s.close()
        assert refused == 0
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        assert proc.wait(timeout=10) == 0  # the probe's, 38 and this one: the count bound (40) ends it
    finally:
        proc.kill()
        proc.wait()


def test_listener_ends_at_its_time_limit() -> None:
    proc = subprocess.Popen(servers.listener_argv(_free_port(), "127.0.0.1", limit=0.5, accepts=10))
    try:
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


class _FakeServers:
    """Stands in for bench.servers' start/stop: records what holds the port, in order."""

    def __init__(self, fail_iperf3: bool = False) -> None:
        self.events: list[str] = []
        self.fail_iperf3 = fail_iperf3

    def _running(self, name: str) -> servers.Running:
        return servers.Running(name, None, Path("/nonexistent"), "127.0.0.1", BULK_PORT)  # type: ignore[arg-type]

    def start_iperf3(self, lab: object, root: Path, host: str, port: int) -> servers.Running:
        self.events.append(f"start iperf3 {host}:{port}")
        if self.fail_iperf3:
            raise RuntimeError("iperf3 server did not start listening")
        return self._running("iperf3 server")

    def start_listener(self, lab: object, root: Path, host: str, port: int) -> servers.Running:
        self.events.append(f"start listener {host}:{port}")
        return self._running("port listener")

    def stop(self, running: servers.Running) -> None:
        self.events.append(f"stop {running.name}")


def _fake_stage(monkeypatch: pytest.MonkeyPatch, fake: _FakeServers) -> stage.Stage:
    for name in ("start_iperf3", "start_listener", "stop"):
        monkeypatch.setattr(servers, name, getattr(fake, name))
    listener = fake._running("port listener")
    return stage.Stage(None, None, stage.Narrator(), Path("/nonexistent"), "198.18.0.2", 0,  # type: ignore[arg-type]
                       fake._running("nginx"), listener)


def test_iperf3_holds_the_bulk_port_only_while_item_2_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServers()
    st = _fake_stage(monkeypatch, fake)
    with st.iperf3_serving() as iperf3:
        assert iperf3.name == "iperf3 server" and st.bulk_server is iperf3
    assert st.bulk_server.name == "port listener"
    assert fake.events == ["stop port listener", f"start iperf3 home:{BULK_PORT}", "stop iperf3 server",
                           f"start listener home:{BULK_PORT}"]


def test_the_listener_comes_back_when_the_runs_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServers()
    st = _fake_stage(monkeypatch, fake)
    with pytest.raises(RuntimeError, match="failed twice"), st.iperf3_serving():
        raise RuntimeError("iperf3 via vpnoffload upload failed twice")
    assert fake.events[-2:] == ["stop iperf3 server", f"start listener home:{BULK_PORT}"]
    assert st.bulk_server.name == "port listener"


def test_the_listener_comes_back_when_iperf3_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServers(fail_iperf3=True)
    st = _fake_stage(monkeypatch, fake)
    with pytest.raises(RuntimeError, match="did not start"), st.iperf3_serving():
        pass
    assert fake.events[-1] == f"start listener home:{BULK_PORT}" and st.bulk_server.name == "port listener"


def test_only_item_2_runs_iperf3_against_the_bulk_port() -> None:
    # Items 3/3b/4/4b/5 must not touch the port (the stage's listener holds it); item 6 has a lab of its own.
    for name in ("failover", "memory", "footprint", "soak", "web", "watchstate"):
        text = (Path(bench_pkg.__file__).parent / f"{name}.py").read_text()
        assert "iperf3" not in text and "BULK_PORT" not in text, name
