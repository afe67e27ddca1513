"""The Markdown report (docs/benchmarks.md) and its pictures, from one run's Results.

Every number in the report comes from the run; the prose around the tables is
either fixed method description or sentences computed from the numbers, so a
rerun never leaves stale claims behind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench import bulk, failover, measure, memory, plots, tunnel, web

if TYPE_CHECKING:
    from bench.run import Results

WEB_GOAL = 1.25  # vpnoffload req/s >= 1.25x the nginx reverse proxy
BULK_GOAL = 0.95  # through vpnoffload >= 0.95x the raw tunnel
MEMORY_GROWTH_LIMIT_KB = 1024  # "does not grow": at most 1 MiB more at the highest level than at the lowest
FAILOVER_GOAL = 3.0  # p95 seconds
RECOVERY_GOAL = 5.0
SOAK_GOAL = 2.0  # p95 seconds, failover and recovery, in the soak with faults (issue 17)
WATCHDOG_RSS_REFERENCE_MB = 32  # what tests/e2e/test_failover.py asserts
HELPS, HURTS = 1.10, 0.90  # a tuning "helps" if both directions gain >= 10 %


# ------------------------------------------------------------------ formatting


def _n(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}×"


def _mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out + [""]


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**MISSED**")


# ------------------------------------------------------------------ goals


def _web_ratios(cells: Sequence[web.Cell], against: str) -> list[tuple[str, int, float, float]]:
    """(mode, connections, ratio of medians, best ratio any two runs gave) of vpnoffload against ``against``."""
    out = []
    for c in cells:
        if c.system != "vpnoffload":
            continue
        other = next((o for o in cells if (o.system, o.mode, o.connections) == (against, c.mode, c.connections)), None)
        if other is not None:
            out.append((c.mode, c.connections, measure.ratio(c.rps, other.rps),
                        measure.ratio(max(c.runs or [c.rps]), min(other.runs or [other.rps]))))
    return out


def _bulk_ratios(cells: Sequence[bulk.Cell]) -> list[tuple[str, float, float]]:
    """(direction, ratio of medians, best ratio any two runs gave) of vpnoffload against the raw tunnel."""
    out = []
    for direction in bulk.DIRECTIONS:
        via = next((c for c in cells if c.path == "via vpnoffload" and c.direction == direction), None)
        raw = next((c for c in cells if c.path == "raw tunnel" and c.direction == direction), None)
        if via and raw:
            out.append((direction, measure.ratio(via.mbit_s, raw.mbit_s),
                        measure.ratio(max(via.runs or [via.mbit_s]), min(raw.runs or [raw.mbit_s]))))
    return out


def _against_goal(ratio: float, best: float, goal: float) -> str:
    """The ratio, marked when it misses the goal only by less than the runs' spread."""
    if ratio >= goal:
        return _x(ratio)
    return f"{_x(ratio)} (miss within run-to-run spread)" if best >= goal else f"{_x(ratio)} (miss)"


def _memory_growth(samples: Sequence[memory.Sample]) -> tuple[int, int, int] | None:
    """(lowest level, highest level, RSS growth KiB) of vpnoffload's userspace."""
    own = sorted((s for s in samples if s.system == "vpnoffload"), key=lambda s: s.connections)
    if len(own) < 2:
        return None
    return own[0].connections, own[-1].connections, own[-1].rss_kb - own[0].rss_kb


def _times(cycles: Sequence[failover.Cycle], attr: str) -> list[float]:
    return [getattr(c, attr) for c in cycles if getattr(c, attr) is not None]


def goals(results: Results) -> list[tuple[str, str, bool | None]]:
    """(goal, what was measured, met?) for the summary."""
    rows: list[tuple[str, str, bool | None]] = []
    if results.web:
        ratios = _web_ratios(results.web, "nginx")
        text = "; ".join(f"{'new conn.' if m == 'new' else 'keep-alive'} @{c}: {_against_goal(r, b, WEB_GOAL)}"
                         for m, c, r, b in ratios)
        rows.append((f"requests/s through vpnoffload ≥ {WEB_GOAL}× nginx reverse proxy (every case)", text,
                     all(r >= WEB_GOAL for _, _, r, _ in ratios) if ratios else None))
    if results.bulk:
        ratios = _bulk_ratios(results.bulk)
        rows.append((f"bulk throughput through vpnoffload ≥ {BULK_GOAL}× raw tunnel",
                     "; ".join(f"{d}: {_against_goal(r, b, BULK_GOAL)}" for d, r, b in ratios),
                     all(r >= BULK_GOAL for _, r, _ in ratios) if ratios else None))
    if results.memory:
        growth = _memory_growth(results.memory)
        if growth:
            low, high, kb = growth
            rows.append((f"vpnoffload's userspace memory does not grow with connections (≤ {MEMORY_GROWTH_LIMIT_KB // 1024} MiB "
                         f"from {low} to {high})", f"{kb:+,} KiB RSS", kb <= MEMORY_GROWTH_LIMIT_KB))
    if results.failover:
        fo, rc = _times(results.failover, "failover_s"), _times(results.failover, "recovery_s")
        missing = len(results.failover) - len(fo)
        p95 = measure.percentile(fo, 95)
        rows.append((f"failover p95 ≤ {FAILOVER_GOAL:g} s (cable pulled → friendly page)",
                     f"p95 {_n(p95, 2)} s over {len(results.failover)} pulls" + (f", {missing} never failed over" if missing else ""),
                     (p95 <= FAILOVER_GOAL and not missing) if fo else False))
        missing = len(results.failover) - len(rc)
        p95 = measure.percentile(rc, 95)
        rows.append((f"recovery p95 ≤ {RECOVERY_GOAL:g} s (cable back → real site)",
                     f"p95 {_n(p95, 2)} s" + (f", {missing} never recovered" if missing else ""),
                     (p95 <= RECOVERY_GOAL and not missing) if rc else False))
    rows += _footprint_goals(results.footprint)
    rows += _soak_goals(results.soak)
    return rows


def _footprint_goals(fp: dict | None) -> list[tuple[str, str, bool | None]]:
    rows: list[tuple[str, str, bool | None]] = []
    if not fp:
        return rows
    for key, what in (("steady", "home up"), ("outage", "serving the page"),
                      ("flood", f"{(fp.get('flood') or {}).get('connections', '?')} slow connections")):
        got, goal = fp.get(key) or {}, fp["goals_mb"][key]
        if got.get("rss_kb"):
            rows.append((f"vpnoffload's own processes ≤ {goal} MB RSS, {what}", f"{_mb(got['rss_kb'])} MiB",
                         got["rss_kb"] <= goal * 1024))
    return rows


def _soak_goals(sk: dict | None) -> list[tuple[str, str, bool | None]]:
    if not sk:
        return []
    rows: list[tuple[str, str, bool | None]] = []
    for key, what in (("failover_s", "failover"), ("recovery_s", "recovery")):
        s = sk[key]
        missed = f", {s['missed']} never happened" if s.get("missed") else ""
        rows.append((f"soak: {what} p95 ≤ {SOAK_GOAL:g} s over {sk['pulls']} pulls with faults",
                     f"p95 {_n(s.get('p95'), 2)} s{missed}", s.get("n", 0) > 0 and s["p95"] <= SOAK_GOAL
                     and not s.get("missed")))
    return rows


def goal_lines(results: Results) -> list[str]:
    lines = [f"{'MET   ' if ok else 'MISSED' if ok is not None else '  -   '} {goal}: {measured}"
             for goal, measured, ok in goals(results)]
    lines += [f"FAILED {item}: {error}" for item, error in results.errors.items()]
    return lines


# ------------------------------------------------------------------ images


def write_images(results: Results, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    if results.web:
        images["web"] = plots.web_chart(results.web, directory / "bench-requests.png")
    if results.bulk:
        images["bulk"] = plots.bulk_chart(results.bulk, directory / "bench-bulk.png")
    if results.memory:
        images["memory"] = plots.memory_chart(results.memory, directory / "bench-memory.png")
    if results.failover:
        images["failover"] = plots.failover_chart(results.failover, directory / "bench-failover.png",
                                                  (FAILOVER_GOAL, RECOVERY_GOAL))
    if results.tunnel:
        images["tunnel"] = plots.tunnel_chart(results.tunnel, directory / "bench-tunnel.png")
    return images


# ------------------------------------------------------------------ the report


def render(results: Results, images: dict[str, str]) -> str:
    p = results.profile
    out = [
        "# Benchmarks",
        "",
        "vpnoffload forwards a VPS port to a home box with kernel DNAT over an OpenVPN tunnel. This page compares it "
        "with what people run instead on the VPS (an nginx reverse proxy, HAProxy in TCP mode) over the *same* tunnel, "
        "and measures failover, memory and the tunnel config itself.",
        "",
        f"*Generated whole by `{results.command or 'python -m bench.run'}` ({p.name} profile) on {results.started}, "
        f"in {results.total_seconds / 60:.1f} minutes, on the machine described under [Machine](#machine). Every "
        "number and every sentence with a number on this page comes from that one run; rerun it to refresh the "
        "page (see [Reproduce](#reproduce)).*",
        "",
        "## Goals",
        "",
    ]
    rows = [(goal, measured, _verdict(ok)) for goal, measured, ok in goals(results)]
    rows += [(item, f"not measured: {error}", "**FAILED**") for item, error in results.errors.items()]
    out += _table(("goal", "measured", ""), rows, "llc")
    out += _method(results)
    out += _web_section(results, images.get("web"))
    out += _bulk_section(results, images.get("bulk"))
    out += _memory_section(results, images.get("memory"))
    out += _footprint_section(results)
    out += _failover_section(results, images.get("failover"))
    out += _soak_section(results)
    out += _watchdog_section(results)
    out += _tunnel_section(results, images.get("tunnel"))
    out += _reproduce(results)
    return "\n".join(out).rstrip() + "\n"


def _pair(rss_kb: float, pss_kb: float) -> str:
    return f"{_mb(rss_kb)} / {_mb(pss_kb)}"


def _opened(s: memory.Sample) -> str:
    text = f"{s.conntrack:,} ({s.conntrack_kb:,.0f} KiB)"
    return text if s.opened == s.connections else f"{text}; only {s.opened} opened"


def _image(path: str | None, alt: str) -> list[str]:
    return [f"![{alt}]({path})", ""] if path else []


def _method(results: Results) -> list[str]:
    m = results.machine
    out = [
        "## How it was measured",
        "",
        "Everything runs on one machine, in network namespaces built by `vpnoffload.lab.netns` (TEST-NET addresses only, "
        "no NAT, so every address is real):",
        "",
        "```",
        "visitor 192.0.2.2 ──┐",
        "                    ├── internet (router) ── vps 203.0.113.10 ══ OpenVPN (UDP) ══ home 192.0.2.66",
        "                    │                         tunnel 198.51.100.1               tunnel 198.51.100.2",
        "```",
        "",
        "vpnoffload is set up exactly as a user does it, with its own CLI (`init`, `service add`, `render home`, "
        "`up vps`, `up home`, `watch`; the step functions of `vpnoffload lab up`). The home box runs nginx serving "
        "one small static page, so the *path* is what gets measured, and on the port of a second service (`bulk`) "
        "iperf3 during item 2 and otherwise a listener that accepts and closes every connection (iperf3 serves one "
        "client at a time and closes its listener between tests, so the watchdog's checks would fail now and then "
        "and swap a healthy service out). On the VPS, next to vpnoffload's DNAT on port 80, "
        "run an nginx reverse proxy (port 8081: `proxy_pass` as tutorials write it; port 8083: the same with upstream "
        "keep-alive) and HAProxy in TCP mode (port 8082), all to the home box's tunnel address over the same tunnel. "
        "Load comes from `wrk` in the visitor's namespace.",
        "",
        f"**Read the absolute numbers with care.** The \"VPS\", the \"home box\", the visitor, the router and the load "
        f"generator all share this machine's {m.get('cores', '?')} cores, so both OpenVPN processes compete with wrk and "
        "nginx for CPU; on real machines each end has its own CPU and the internet adds latency. The *ratios* between "
        "systems measured in the same run are the meaningful part. Runs are short and interleaved (the order rotates "
        "each repetition) so that background load, if any, hurts every system alike; medians are reported.",
        "",
        "### Machine",
        "",
    ]
    rows = [(k, v if k != "OS" else f"Debian {v}") for k, v in m.items()]
    steal = {k: v for k, v in results.steal.items() if k.startswith("item")}
    if steal:
        rows.append(("hypervisor steal", ", ".join(f"{k.split(' (')[0]} {v:.0f} %" for k, v in steal.items())))
    out += _table(("", ""), rows, "ll")
    if results.steal and max(results.steal.values()) >= 5:
        out += ["*Hypervisor steal* is the share of CPU time the virtual machine's host gave to others while the item "
                "ran: this machine is a shared VM, so runs of the same thing vary. Differences smaller than the "
                "spread between repetitions (shown as *runs*) are noise.", ""]
    return out


def _web_section(results: Results, image: str | None) -> list[str]:
    out = ["## 1. Requests/s and latency through the VPS", ""]
    if not results.web:
        return out + [_failed(results, "item 1 (requests/s)"), ""]
    p = results.profile
    out += [
        f"`wrk -t{web.WRK_THREADS} -c N -d {p.wrk_seconds}s --latency` from the visitor; \"new connections\" adds "
        f"`Connection: close` (a new TCP connection per request), \"keep-alive\" reuses connections. "
        f"Median of {p.web_reps} run(s) per cell. *ratio* is vpnoffload's req/s divided by that system's.",
        "",
    ]
    rows = []
    for c in results.web:
        own = next((o for o in results.web if (o.system, o.mode, o.connections) == ("vpnoffload", c.mode, c.connections)), None)
        ratio = "" if c.system == "vpnoffload" or own is None else _x(measure.ratio(own.rps, c.rps))
        rows.append(("new connections" if c.mode == "new" else "keep-alive", str(c.connections), c.system,
                     _n(c.rps), ratio, _n(c.p50_ms, 1), _n(c.p99_ms, 1), _n(c.vps_cpu_ms_per_1k, 0),
                     _n(c.errors), _n(c.non_2xx), _n(c.false_failovers), _n(c.tunnel_drops),
                     " / ".join(_n(v) for v in c.runs)))
    out += _table(("mode", "conns", "system", "req/s", "ratio", "p50 ms", "p99 ms", "VPS CPU ms / 1k req",
                   "socket errors", "non-2xx", "watchdog swaps", "tunnel drops", "runs (req/s)"), rows,
                  "lrlrrrrrrrrrr")
    out += _image(image, "requests per second and p99 latency per system")
    out += ["Columns: *VPS CPU*: CPU time of all processes on the VPS (OpenVPN, and the proxy where there is one) "
            "per 1000 requests; kernel forwarding work (DNAT, TCP for the proxies) is not in it, since the lab's "
            "namespaces share one kernel. *socket errors* and *non-2xx* as counted by wrk; *watchdog swaps*: how often vpnoffload's "
            "watchdog moved the web service to the friendly page or back during the run (2 = out and back; any "
            "swap is a false failover, home was up all along); *tunnel drops*: packets the kernel dropped on the tunnel's path "
            "(UDP receive-buffer overflows and tun queue drops, both ends).", ""]
    out += _web_findings(results.web)
    out += _drop_places(results.web_runs or [])
    return out


def _drop_places(runs: Sequence[web.Run]) -> list[str]:
    """Where each cell's drops were, summed over its runs (runs from before the breakdown have none)."""
    totals: dict[tuple[str, str, int], dict[str, int]] = {}
    for r in runs:
        cell = totals.setdefault((r.system, r.mode, r.connections), {})
        for place, count in r.drops_at.items():
            cell[place] = cell.get(place, 0) + count
    lines = [f"{system}, {'new' if mode == 'new' else 'keep-alive'} @{conns}: "
             + ", ".join(f"{place} {_n(count)}" for place, count in sorted(places.items(), key=lambda kv: -kv[1]))
             for (system, mode, conns), places in totals.items() if places]
    if not lines:
        return []
    return ["Where packets were dropped (all runs of a cell; *tun tx*: the tun device's queue was full, "
            "*udp rcvbuf*: OpenVPN's socket receive buffer was full, *listen drops*: a listening socket dropped a "
            "SYN or handshake, not counted in *tunnel drops*):", "", *(f"- {line}" for line in lines), ""]


def _web_findings(cells: Sequence[web.Cell]) -> list[str]:
    out = []
    for against in ("nginx", "nginx keepalive", "HAProxy"):
        ratios = _web_ratios(cells, against)
        if ratios:
            text = ", ".join(f"{_x(r)} ({'new' if m == 'new' else 'keep-alive'}, {c})" for m, c, r, _ in ratios)
            out.append(f"- vpnoffload vs {against}: {text}.")
    swaps = [c for c in cells if c.false_failovers]
    if swaps:
        where = "; ".join(f"{c.system} {c.mode} @{c.connections}: {c.false_failovers}" for c in swaps)
        out.append(f"- **The watchdog swapped the healthy site to the friendly page under load** ({where}). "
                   "The load saturates the single OpenVPN tunnel, its queues fill and the health check (0.6 s "
                   "timeout, 2 failures in a row) times out: a false failover. This happens whichever system "
                   "carries the load, because they all share the tunnel the checks use.")
    own_new = [c for c in cells if c.system == "vpnoffload" and c.mode == "new"]
    ka_new = {c.connections: c for c in cells if c.system == "nginx keepalive" and c.mode == "new"}
    if any(c.connections in ka_new and ka_new[c.connections].rps > c.rps for c in own_new):
        out.append("- With new connections, nginx with upstream keep-alive beats vpnoffload: it completes each "
                   "visitor's handshake on the VPS and sends the request over an already open upstream connection, "
                   "so only the request and the answer cross the tunnel. With DNAT every visitor connection is a "
                   "connection to home: its SYN, ACK and FIN packets all pass through OpenVPN, which is the busiest "
                   "process here (see *VPS CPU*). The trade-off is the visitor's address: home sees it with "
                   "vpnoffload, and only the VPS's (plus an X-Forwarded-For header, for HTTP only) behind a proxy.")
    drops = [c for c in cells if c.connections >= 1000 and c.tunnel_drops]
    if drops:
        out.append("- At 1000 connections the tunnel is saturated whatever sits in front of it: the kernel drops "
                   "packets in front of OpenVPN (*tunnel drops*), and the p99 latencies of a second or more are TCP "
                   "retransmission timeouts, not processing time.")
    bad = [c for c in cells if c.system == "vpnoffload" and c.non_2xx]
    if bad:
        out.append("- vpnoffload runs with non-2xx answers were (partly) served the friendly page: their req/s "
                   "overstate what home served.")
    return out + [""] if out else []


def _bulk_section(results: Results, image: str | None) -> list[str]:
    out = ["## 2. Bulk throughput", ""]
    if not results.bulk:
        return out + [_failed(results, "item 2 (bulk)"), ""]
    p = results.profile
    out += [
        f"iperf3 (`-t {p.bulk_seconds}`, one TCP stream, median of {p.bulk_reps}) with its server at home (started "
        "for this item in place of the port's listener). *via "
        "vpnoffload*: client in the visitor's namespace to the VPS's public address, forwarded by a vpnoffload "
        "service; *via HAProxy*: the same client through HAProxy (TCP mode) on the VPS; *raw tunnel*: client on "
        "the VPS itself to the home box's tunnel address (no forwarding at all). upload = towards home, download = "
        "from home (`-R`). The two *via* paths also cross the lab's router and the VPS's forwarding, kernel work "
        "that on this machine competes with OpenVPN for the same cores (on real machines the router is the "
        "internet and costs the VPS nothing), so they are at a disadvantage against *raw tunnel* that real "
        "machines would not have; *via HAProxy* has the same hops and shows how much of the gap that is.",
        "",
    ]
    raw = {c.direction: c.mbit_s for c in results.bulk if c.path == "raw tunnel"}
    rows = [(c.path, c.direction, _n(c.mbit_s, 1), _x(measure.ratio(c.mbit_s, raw.get(c.direction, math.nan))),
             _n(c.retransmits), _n(c.false_failovers), " / ".join(_n(v, 0) for v in c.runs)) for c in results.bulk]
    out += _table(("path", "direction", "Mbit/s", "vs raw tunnel", "TCP retransmits", "watchdog swaps",
                   "runs (Mbit/s)"), rows, "llrrrrr")
    out += _image(image, "bulk throughput")
    for direction in bulk.DIRECTIONS:
        via = next((c for c in results.bulk if c.path == "via vpnoffload" and c.direction == direction), None)
        other = next((c for c in results.bulk if c.path == "via HAProxy" and c.direction == direction), None)
        if via and other:
            out.append(f"- {direction}: vpnoffload {_x(measure.ratio(via.mbit_s, other.mbit_s))} HAProxy's throughput.")
    swaps = sum(c.false_failovers for c in results.bulk)
    if swaps:
        out += [f"- **The watchdog swapped the (healthy) bulk service out {swaps} time(s)** while a transfer filled "
                "the tunnel: its TCP check timed out behind the queued data. Each swap refuses new connections "
                "and drops the service's forwarded flows until two checks pass again."]
    return out + [""]


def _memory_section(results: Results, image: str | None) -> list[str]:
    out = ["## 3. Memory on the VPS with idle connections held open", ""]
    if not results.memory:
        return out + [_failed(results, "item 3 (memory)"), ""]
    size = results.conntrack_object_size
    out += [
        "A holder in the visitor's namespace opens N connections, sends one keep-alive request on each and keeps "
        "them all open and idle while memory is read. *vpnoffload userspace* is OpenVPN + every vpnoffload process "
        "running (the watchdog; the friendly-page server only while a web service needs it); the nginx and HAProxy columns are all of their processes (they need OpenVPN too, which is not "
        "counted for them). RSS counts shared pages in every process, PSS splits them (fairer for nginx's master and "
        f"workers). *conntrack*: entries in the VPS's connection-tracking table at that moment (closed connections' "
        f"TIME_WAIT entries removed first), and their kernel memory at {size} bytes each (nf_conntrack slab "
        "object size).",
        "",
    ]
    levels = sorted({s.connections for s in results.memory})
    rows = []
    for level in levels:
        by = {s.system: s for s in results.memory if s.connections == level}
        row = [str(level)]
        own = by.get("vpnoffload")
        if own is not None:
            openvpn = own.parts.get("OpenVPN", (0, 0))
            extra = (own.rss_kb - openvpn[0], own.pss_kb - openvpn[1])
            row += [_pair(own.rss_kb, own.pss_kb), _pair(*openvpn), _pair(*extra), _opened(own)]
        else:
            row += ["–"] * 4
        for system in ("nginx", "HAProxy"):
            s = by.get(system)
            row += [_pair(s.rss_kb, s.pss_kb), _opened(s)] if s is not None else ["–", "–"]
        rows.append(row)
    out += _table(("conns", "vpnoffload: all (RSS / PSS MiB)", "of it OpenVPN", "of it vpnoffload's own processes",
                   "conntrack", "nginx (RSS / PSS MiB)", "conntrack", "HAProxy (RSS / PSS MiB)", "conntrack"),
                  rows, "rrrrrrrrr")
    out += ["The proxies need the same OpenVPN on the VPS as well; it is counted only in vpnoffload's column. "
            "Compare *vpnoffload's own processes* (the watchdog; the page server and swap child only while they "
            "run) with the proxies' columns for what each approach adds.", ""]
    growth = _memory_growth(results.memory)
    if growth:
        low, high, kb = growth
        out.append(f"From {low} to {high} held connections vpnoffload's userspace changed by {kb:+,} KiB: forwarded "
                   "connections live in the kernel (conntrack), not in any process.")
    if results.time_wait_entries is not None:
        out.append(f"Before the holders ran, the VPS's conntrack table held {results.time_wait_entries:,} entries in "
                   "TIME_WAIT (closed connections the kernel keeps tracking for a while, among them the watchdog's "
                   "health checks).")
    out.append("")
    out += _image(image, "memory on the VPS against connections held")
    return out


def _failover_section(results: Results, image: str | None) -> list[str]:
    out = ["## 4. Failover and recovery", ""]
    if not results.failover:
        return out + [_failed(results, "item 4 (failover)"), ""]
    cycles = results.failover
    out += [
        f"{len(cycles)} cable pulls (the router's side of home's uplink set down, as in the e2e tests). A crowd "
        f"process in the visitor's namespace opens a new connection every {failover.CROWD_EVERY:g} s (each in its "
        "own thread) and records what each got. *failover*: cable pulled → the first friendly page (HTTP 503) any "
        "visitor received; *recovery*: cable plugged back → the first page from home. The cable stays out until "
        f"{failover.STREAK} requests in a row got the friendly page.",
        "",
    ]
    rows = []
    for label, attr, goal in (("failover (pulled → friendly page)", "failover_s", FAILOVER_GOAL),
                              ("recovery (back → real site)", "recovery_s", RECOVERY_GOAL)):
        values = _times(cycles, attr)
        rows.append((label, _n(measure.median(values), 2), _n(measure.percentile(values, 95), 2),
                     _n(max(values) if values else None, 2), _n(min(values) if values else None, 2),
                     f"≤ {goal:g} s", str(len(cycles) - len(values))))
    out += _table(("", "median s", "p95 s", "max s", "min s", "goal (p95)", "never happened"), rows, "lrrrrrr")
    outage = [c.outage_s for c in cycles]
    failed = sum(c.failed_during_outage for c in cycles)
    out += [f"Each outage lasted {_n(min(outage), 1)}–{_n(max(outage), 1)} s. Requests that got no answer at all "
            f"while the cable was out (before the swap, or black-holed): {failed} in total.", ""]
    out += ["Per pull (s): failover " + ", ".join(_n(c.failover_s, 2) for c in cycles) + "; recovery " +
            ", ".join(_n(c.recovery_s, 2) for c in cycles) + ".", ""]
    out += _image(image, "failover and recovery times per cable pull")
    return out


def _alternatives_range(samples: Sequence[memory.Sample] | None, system: str) -> str:
    rss = [s.rss_kb for s in samples or [] if s.system == system]
    return f"{_mb(min(rss))}–{_mb(max(rss))}" if rss else "–"


def _parts(got: dict) -> str:
    return " + ".join(f"{name} {_mb(v[0])}" for name, v in (got.get("parts") or {}).items()) or "–"


def _footprint_section(results: Results) -> list[str]:
    out = ["### vpnoffload's own footprint: steady, outage, flood", ""]
    fp = results.footprint
    if not fp:
        return out + [_failed(results, "item 3b (footprint)"), ""]
    flood = fp.get("flood") or {}
    out += [
        "The sum of every vpnoffload process on the VPS except OpenVPN (RSS; PSS beside it), measured in this run "
        "as the e2e tests `tests/e2e/test_failover.py` and `tests/e2e/test_page_flood.py` assert it, next to what "
        "the alternatives took in item 3 (1 to 1000 held connections; they need the same OpenVPN, not counted "
        "here either). *steady*: home up; *outage*: home's cable pulled, visitors get the friendly page; *flood*: "
        f"still in the outage, {flood.get('connections', '?')} slow connections (a byte of a request head every "
        f"2 s, reopened when dropped) for {_n(flood.get('seconds'), 0)} s, the worst sum seen.",
        "",
    ]
    goals = fp["goals_mb"]
    rows = []
    for key, label in (("steady", "home up, steady"), ("outage", "outage, serving the page"),
                       ("flood", "outage, slow-connection flood")):
        got = fp.get(key) or {}
        rows.append((label, _mb(got["rss_kb"]) if got.get("rss_kb") else "–",
                     _mb(got["pss_kb"]) if got.get("pss_kb") else "–", _parts(got), f"≤ {goals[key]}",
                     _alternatives_range(results.memory, "nginx") if key == "steady" else "–",
                     _alternatives_range(results.memory, "HAProxy") if key == "steady" else "–"))
    out += _table(("situation", "vpnoffload (RSS MiB)", "PSS MiB", "processes (RSS MiB)", "goal (MB)",
                   "nginx proxy", "HAProxy"), rows, "lrrlrrr")
    visits = flood.get("visits") or []
    if visits:
        served = [v for v in visits if v[0] == 503]
        took = [v[1] for v in served]
        summary = flood.get("flooder") or {}
        out += [f"During the flood {len(served)} of {len(visits)} new visitors got the page"
                + (f", in {_n(min(took), 2)}–{_n(max(took), 2)} s each (starting the client in the visitor's "
                   "namespace included)" if took else "")
                + f". The flooder opened {summary.get('opened', '?')} connections in all; the page server closed "
                f"{summary.get('dropped', '?')} of them, after {_n(summary.get('shortest_drop'), 1)}–"
                f"{_n(summary.get('longest_drop'), 1)} s (its head deadline).", ""]
    out += ["During a swap the short-lived swap child (python-iptables + pyroute2) also runs, for about a second; "
            "none of the rows above includes it.", ""]
    return out


#: Issue 26's goal: p90 seconds to the prompt page after a pull, and to the site after the return.
CROWD_GOAL = 1.0
_KIND_LABELS = (("cable", "cable pulled"), ("server", "OpenVPN killed at the VPS"),
                ("client", "OpenVPN killed at home"), ("home-stopped", "home web server stopped"),
                ("home-reboot", "home rebooted"))


def _crowd_table(sk: dict) -> list[str]:
    """Issue 26's view: a crowd (a new connection every 50 ms) per fault kind, beside the peers' defaults."""
    crowd = sk.get("crowd")
    if not crowd:
        return []
    every, prompt = sk.get("crowd_every", 0.05), sk.get("prompt", 0.3)
    out = [f"As a crowd sees it (a new connection every {every * 1000:g} ms during each fault and each return): "
           f"seconds to the first *prompt* friendly page (a 503 that arrived within {prompt:g} s of that "
           "visitor's connect) and to the first prompt page from home, from the return (cable back, web server "
           "started) or, for faults that come back by themselves, from the fault; and the visitors who got "
           f"neither. Goal (cable): both p90 ≤ {CROWD_GOAL:g} s. For comparison, the defaults of the others "
           "(section 4): HAProxy ~6 s, cloudflared ~5 s, newt 3–5 s, frp ≥ 10 s.", ""]
    rows = []
    for kind, label in _KIND_LABELS:
        c = crowd.get(kind)
        if not c:
            continue
        page, back = c["page_s"], c["back_s"]

        def three(s: dict) -> str:
            if not s.get("n"):
                return "never"
            text = f"{_n(s.get('p50'), 2)} / {_n(s.get('p90'), 2)} / {_n(s.get('max'), 2)}"
            return text + (f" ({s['missed']} never)" if s.get("missed") else "")

        met = ""
        if kind == "cable":
            met = "yes" if all(s.get("n") and not s.get("missed") and s["p90"] <= CROWD_GOAL
                               for s in (page, back)) else "**no**"
        rows.append((label, str(c["count"]), three(page), three(back), str(c["neither"]), met))
    return out + _table(("fault", "count", "prompt page (p50 / p90 / max s)", "site back (p50 / p90 / max s)",
                         "got neither", "goal met"), rows, "lrrrrc")


def _soak_section(results: Results) -> list[str]:
    out = ["### Soak: cable pulls with faults mixed in", ""]
    sk = results.soak
    if not sk:
        return out + [_failed(results, "item 4b (soak)"), ""]
    p = results.profile
    out += [
        f"{sk['pulls']} cable pulls in {_n(sk['minutes'], 1)} minutes (at most {p.soak_pulls} pulls and "
        f"{p.soak_minutes:g} minutes), measured as in item 4; one pull in every {sk['every']} also injects a fault, in "
        "turn: the watchdog SIGKILLed mid-outage and started again; after the pull, the VPS's OpenVPN server "
        "SIGKILLed (the watchdog restarts it); home's OpenVPN client SIGKILLed (the home keeper runs `up home` "
        "again); home's web server stopped with the tunnel up (started again once the page shows); a home reboot "
        "(its OpenVPN and keeper SIGKILLed, policy rules, table 7701 and chains wiped, "
        "`up home` again). After every fault `status` is asked until it exits 0 with every service forwarding.",
        "",
    ]
    rows = []
    for key, label in (("failover_s", "failover (pulled → friendly page)"), ("recovery_s", "recovery (back → real site)")):
        s = sk[key]
        ok = s.get("n", 0) > 0 and s["p95"] <= SOAK_GOAL and not s.get("missed")
        rows.append((label, _n(s.get("p50"), 2), _n(s.get("p95"), 2), _n(s.get("max"), 2), f"≤ {SOAK_GOAL:g} s",
                     str(s.get("missed", 0)), "yes" if ok else "**no**"))
    out += _table(("", "p50 s", "p95 s", "max s", "goal (p95)", "never happened", "met"), rows, "lrrrrrc")
    out += [f"Requests that got no answer at all during the outages: {sk['failed_during_outage']}.", ""]
    rows = []
    for kind, label in (("watchdog", "watchdog killed mid-outage"), ("server", "OpenVPN server killed"),
                        ("client", "OpenVPN client killed"), ("home-stopped", "home web server stopped"),
                        ("home-reboot", "home reboot")):
        f = sk["faults"].get(kind) or {}
        if not f.get("count"):
            continue
        page, back = f.get("page_s"), f.get("back_s") or {}
        page_text = "(already on the page)" if page is None else (
            f"{_n(page.get('p50'), 2)} / {_n(page.get('max'), 2)}" + (f" ({page['n']} of {f['count']}; the others "
                                                                      "never saw the page)" if page.get("missed") else ""))
        rows.append((label, str(f["count"]), page_text, f"{_n(back.get('p50'), 1)} / {_n(back.get('max'), 1)}",
                     f"{f['status_ok']}/{f['count']}", str(f.get("failed_requests", 0))))
    if rows:
        out += _table(("fault", "count", "page after (p50 / max s)", "site back after (p50 / max s)",
                       "status true after", "failed requests"), rows, "lrrrrr")
    out += _crowd_table(sk)
    return out


def _watchdog_section(results: Results) -> list[str]:
    out = ["## 5. The watchdog's own cost", ""]
    if not results.watchdog:
        return out + [_failed(results, "item 5 (watchdog cost)"), ""]
    out += [
        "`vpnoffload watch` (the lean entry point, as systemd runs it), read from /proc: resident memory, its peak "
        "(VmHWM), and CPU time (utime+stime) over the window. During an outage it forks a short-lived helper that "
        "swaps the rules; that helper's CPU shows in the last column (cutime+cstime). The outage window includes "
        "the swap to the friendly page, with visitors arriving every "
        f"{failover.CROWD_EVERY:g} s.",
        "",
    ]
    rows = [(w.phase, _n(w.seconds, 1), _mb(w.rss_kb), _mb(w.hwm_kb), f"{w.cpu_percent:.2f} %",
             f"{w.cpu_total_percent:.2f} %") for w in results.watchdog]
    out += _table(("phase", "window s", "RSS MiB", "peak RSS MiB", "CPU (own)", "CPU (with swap helper)"), rows, "lrrrrr")
    if results.watchdog_steady_rss_kb:
        pulls = len(results.failover or [])
        out += [f"After all {pulls} cable pulls of item 4 its RSS was {_mb(results.watchdog_steady_rss_kb)} MiB "
                f"(the e2e test asserts ≤ {WATCHDOG_RSS_REFERENCE_MB} MB).", ""]
    return out


def _tunnel_section(results: Results, image: str | None) -> list[str]:
    out = ["## 6. The tunnel: vpnoffload's OpenVPN config vs a stock one, and tunings", ""]
    if not results.tunnel:
        return out + [_failed(results, "item 6 (tunnel configs)"), ""]
    p = results.profile
    facts = results.tunnel_facts
    out += [
        "OpenVPN run by hand in a lab of its own (vps and home namespaces through the router), each end pinned to a "
        "core of its own (`taskset`) as on two machines, iperf3 between the two tunnel addresses "
        f"(`-t {p.tunnel_seconds}`, one TCP stream; {p.tunnel_reps} repetition(s)"
        + ("; every variant once, then all again" if p.tunnel_reps > 1 else "") + "). *generated* is exactly what "
        "vpnoffload renders; *stock* is what angristan/openvpn-install writes with its defaults (PiVPN's template "
        "differs mainly in `keepalive 15 120` and a CBC cipher, which OpenVPN 2.6 peers replace with AES-256-GCM "
        "through cipher negotiation anyway). Every other variant is the generated config with the change named, on "
        "both ends.",
        "",
        "*×* compares each repetition with the generated config's run of the same repetition (median of those "
        "ratios), which cancels slow drifts of the machine's speed. *Mbit per CPU-s*: megabits carried per second "
        "of CPU the VPS's OpenVPN used — what a byte costs a small VPS, and much steadier than Mbit/s when other "
        "work competes for the CPU.",
        "",
    ]
    if facts:
        out += [f"With the generated config OpenVPN settled on data cipher {facts.cipher or '?'}, tun MTU "
                f"{facts.mtu} and tun txqueuelen {facts.txqueuelen}. This kernel's socket buffer limits: "
                f"rmem_default {facts.rmem_default:,}, rmem_max {facts.rmem_max:,}, wmem_max {facts.wmem_max:,} "
                "bytes; OpenVPN's sndbuf/rcvbuf are capped at the *_max values (212,992 on a stock kernel).", ""]
    variants = {v.name: v for v in tunnel.VARIANTS}
    rows = []
    for name in dict.fromkeys(c.variant for c in results.tunnel):
        row = [f"**{name}**" if name == "generated" else name, variants[name].description if name in variants else ""]
        for direction in tunnel.DIRECTIONS:
            c = _tunnel_cell(results.tunnel, name, direction)
            if c is None:
                row += ["–", "", "–"]
                continue
            row += [_n(c.mbit_s, 0), _x(_paired(results.tunnel, name, direction, "runs")), _n(c.mbit_per_cpu_s, 0)]
        cells = [c for c in results.tunnel if c.variant == name]
        row.append(_n(sum(c.retransmits for c in cells)))
        row.append("; ".join(" / ".join(_n(v, 0) for v in c.runs) for c in cells))
        rows.append(row)
    dirs = tunnel.DIRECTIONS
    out += _table(("variant", "what", f"{dirs[0]} Mbit/s", "×", "Mbit per CPU-s", f"{dirs[1]} Mbit/s", "×",
                   "Mbit per CPU-s", "TCP retransmits", "runs (Mbit/s)"), rows, "llrrrrrrrr")
    out += _image(image, "tunnel throughput per config variant")
    out += _tunnel_findings(results.tunnel)
    out += _tunnel_web(results)
    return out


def _tunnel_web(results: Results) -> list[str]:
    """Item 1's new-connection case over each variant's tunnel (when the profile measured it)."""
    if not results.tunnel_web:
        return []
    ratios = tunnel.web_ratios(results.tunnel_web_runs or [])
    rows = []
    for c in results.tunnel_web:
        drops = ", ".join(f"{place} {_n(n)}" for place, n in sorted(c.drops_at.items(), key=lambda kv: -kv[1]))
        rows.append((f"**{c.variant}**" if c.variant == "generated" else c.variant, _n(c.rps),
                     _x(measure.median(ratios.get(c.variant, []))), _n(c.p99_ms, 1), _n(c.vps_cpu_ms_per_1k, 0),
                     _n(c.home_cpu_ms_per_1k, 0), _n(c.errors), drops or "0", " / ".join(_n(v) for v in c.runs)))
    p = results.profile
    return ["### New connections through DNAT, per tunnel variant", "",
            f"After each variant's iperf3 runs, wrk from the visitor (`-c {tunnel.WEB_CONNECTIONS}`, "
            f"`-d {p.tunnel_web_seconds}s`, `Connection: close`) to the VPS's address, DNATed in the VPS's kernel to "
            "an nginx at home's tunnel address, home answering through the tunnel: item 1's new-connection case, "
            "per config. *×*: against the generated config in the same repetition (median). *OpenVPN CPU*: each "
            "end's OpenVPN per 1000 requests. *drops*: where the kernel dropped packets, all repetitions.", "",
            *_table(("variant", "req/s", "×", "p99 ms", "VPS OpenVPN CPU ms / 1k req", "home OpenVPN CPU ms / 1k req",
                     "socket errors", "drops", "runs (req/s)"), rows, "lrrrrrrlr"), ""]


def _tunnel_cell(cells: Sequence[tunnel.Cell], variant: str, direction: str) -> tunnel.Cell | None:
    return next((c for c in cells if c.variant == variant and c.direction == direction), None)


def _paired_ratios(cells: Sequence[tunnel.Cell], variant: str, direction: str, attr: str) -> list[float]:
    """Per repetition: the variant's value / the generated config's value in the same repetition."""
    mine, base = _tunnel_cell(cells, variant, direction), _tunnel_cell(cells, "generated", direction)
    if mine is None or base is None:
        return []
    return [measure.ratio(a, b) for a, b in zip(getattr(mine, attr), getattr(base, attr), strict=False)]


def _paired(cells: Sequence[tunnel.Cell], variant: str, direction: str, attr: str) -> float:
    return measure.median(_paired_ratios(cells, variant, direction, attr))


def tuning_verdicts(cells: Sequence[tunnel.Cell], attr: str = "runs") -> dict[str, str]:
    """'higher', 'lower' or 'no clear difference' per variant against the generated config,
    on throughput (``runs``) or efficiency (``efficiency_runs``); 'not judged' from one run.

    Higher when, in both directions, the median of its per-repetition ratios is >= HELPS
    and no single repetition came out below 1.0 (lower: the mirror image); anything else
    is within the run-to-run noise.
    """
    verdicts = {}
    for name in dict.fromkeys(c.variant for c in cells):
        if name == "generated":
            continue
        per_dir = [_paired_ratios(cells, name, d, attr) for d in tunnel.DIRECTIONS]
        per_dir = [r for r in per_dir if r]
        if not per_dir or min(len(r) for r in per_dir) < 2:
            verdicts[name] = "not judged (one repetition)"
            continue
        higher = all(measure.median(r) >= HELPS and min(r) >= 1.0 for r in per_dir)
        lower = all(measure.median(r) <= HURTS and max(r) <= 1.0 for r in per_dir)
        verdicts[name] = "higher" if higher else "lower" if lower else "no clear difference"
    return verdicts


def _tunnel_findings(cells: Sequence[tunnel.Cell]) -> list[str]:
    throughput, efficiency = tuning_verdicts(cells, "runs"), tuning_verdicts(cells, "efficiency_runs")
    out = [f"Verdicts against the generated config: *higher* when, both ways, the median of the per-repetition "
           f"ratios is ≥ {HELPS:.2f}× and no repetition came out below 1×; *lower* is the mirror image "
           f"(≤ {HURTS:.2f}×); anything else is within this machine's run-to-run noise. TCP retransmits count "
           "packets lost inside the two hosts (socket buffers and queues in front of OpenVPN that overflow).", ""]
    variants = {v.name: v for v in tunnel.VARIANTS}
    base_rtx = sum(c.retransmits for c in cells if c.variant == "generated")
    for name in throughput:
        unsafe = "" if variants.get(name, tunnel.Variant(name, "")).safe else " (not safe on every path)"
        rtx = sum(c.retransmits for c in cells if c.variant == name)
        out.append(f"- {name}{unsafe}: throughput **{throughput[name]}**, CPU efficiency **{efficiency[name]}**; "
                   f"retransmits {rtx:,} vs {base_rtx:,}")
    return out + _cipher_order(cells) + [""]


def _cipher_order(cells: Sequence[tunnel.Cell]) -> list[str]:
    """The two ciphers against each other, with and without AES instructions: what orders data-ciphers."""
    pairs = (("with AES instructions", "CHACHA20-POLY1305", "generated"),
             ("without (OpenSSL's capability mask)", "no AES-NI: CHACHA20-POLY1305", "no AES-NI: AES-256-GCM"))
    said = []
    for where, chacha, aes in pairs:
        ratios = []
        for direction in tunnel.DIRECTIONS:
            a, b = _tunnel_cell(cells, chacha, direction), _tunnel_cell(cells, aes, direction)
            if a is not None and b is not None:
                ratios.append(measure.ratio(a.mbit_per_cpu_s, b.mbit_per_cpu_s))
        if ratios:
            said.append(f"{where} {' / '.join(_x(r) for r in ratios)}")
    if not said:
        return []
    return [f"- Cipher order: CHACHA20-POLY1305 carried, per VPS CPU-second, {'; '.join(said)} the data of "
            f"AES-256-GCM ({' / '.join(tunnel.DIRECTIONS)}). vpnoffload puts AES-256-GCM first on a VPS whose CPU "
            "has AES instructions and CHACHA20-POLY1305 first on one without."]


def _failed(results: Results, key: str) -> str:
    error = results.errors.get(key)
    return f"*Not measured in this run: {error}*" if error else "*Not measured in this run.*"


def _reproduce(results: Results) -> list[str]:
    durations = ", ".join(f"{k.split(' (')[0]} {v:.0f} s" for k, v in results.durations.items() if k.startswith("item"))
    return [
        "## Reproduce",
        "",
        "As root on Debian 12, from the repository's top directory:",
        "",
        "```sh",
        # iperf3 asks a debconf question at priority high: without this, apt stops at a dialog.
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \\",
        "    openvpn iptables iproute2 wrk nginx-light haproxy iperf3 conntrack \\",
        "    python3-venv python3-dev gcc",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[bench]'   # matplotlib draws the plots",
        results.command or ".venv/bin/python -m bench.run",
        "```",
        "",
        "This rewrites this whole page and its plots from one run. `--quick` runs shorter (a few minutes: 5 cable "
        "pulls, a short soak and flood); `--json FILE` also writes the raw numbers, and `--from-json FILE` "
        "renders a page from them again without measuring. The benchmark builds its own namespaces under a "
        "unique prefix and removes them, their processes and its temp files at the end, also on errors and "
        "Ctrl-C. See bench/README.md.",
        "",
        f"Time per item in this run: {durations}.",
        "",
    ]
