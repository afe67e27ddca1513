"""Item 1: requests/s and latency through the VPS, vpnoffload against the proxies.

wrk runs in the visitor's namespace against each way through the VPS:
vpnoffload's DNAT (port 80), the nginx reverse proxy (as tutorials write it,
and with upstream keep-alive) and HAProxy in TCP mode. Every one of them ends
at the same nginx at home, over the same OpenVPN tunnel. "new connections"
sends ``Connection: close`` so every request opens a connection; "keep-alive"
reuses them. Runs are interleaved (the order rotates each repetition) so a
noisy neighbour hurts all systems alike.

Each vpnoffload run starts only once the watchdog says "forwarding"; the
watchdog's swap count is read before and after every run, so a false
failover under load shows up in the results instead of hiding in them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bench import measure, watchstate
from bench.stage import (
    HAPROXY_PORT,
    NGINX_KEEPALIVE_PORT,
    NGINX_PORT,
    VISIT_PORT,
    Stage,
)

WRK_THREADS = 2
WRK_TIMEOUT = "5s"
FORWARDING_WAIT = 20.0


@dataclass(frozen=True)
class System:
    name: str
    port: int
    note: str


SYSTEMS = (
    System("vpnoffload", VISIT_PORT, "kernel DNAT on the VPS"),
    System("nginx", NGINX_PORT, "reverse proxy, proxy_pass (new upstream connection per request)"),
    System("nginx keepalive", NGINX_KEEPALIVE_PORT, "reverse proxy with upstream keepalive 64"),
    System("HAProxy", HAPROXY_PORT, "TCP mode"),
)
MODES = ("new", "keepalive")


@dataclass
class Run:
    system: str
    mode: str
    connections: int
    rep: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    false_failovers: int  # watchdog swaps of the web service during the run
    tunnel_drops: int
    vps_cpu_ms_per_1k: float  # CPU of all processes on the VPS (OpenVPN, proxy...) per 1000 requests
    #: Where the tunnel drops were ("vps tun tx", "home udp rcvbuf"... as watchstate.drop_counters names
    #: them; "<end> listen drops": SYNs a listening socket dropped), only the counters that moved.
    drops_at: dict[str, int] = field(default_factory=dict)


@dataclass
class Cell:
    """The median over repetitions of one (system, mode, connections)."""

    system: str
    mode: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    false_failovers: int
    tunnel_drops: int
    vps_cpu_ms_per_1k: float
    runs: list[float] = field(default_factory=list)  # rps of each repetition


def run(stage: Stage, *, seconds: int, concurrencies: Sequence[int], reps: int,
        systems: Sequence[System] = SYSTEMS) -> list[Run]:
    """All runs of item 1 (the alternatives must be running: Stage.start_alternatives)."""
    runs: list[Run] = []
    for mode in MODES:
        for connections in concurrencies:
            for rep in range(reps):
                order = list(systems[rep % len(systems):]) + list(systems[:rep % len(systems)])
                for system in order:
                    stage.narrator.step(f"item 1: {system.name}, {mode}, {connections} connections, run {rep + 1}/{reps}")
                    runs.append(_one(stage, system, mode, connections, seconds, rep))
    return runs


def _one(stage: Stage, system: System, mode: str, connections: int, seconds: int, rep: int) -> Run:
    config = stage.sites.config("vps")
    if not watchstate.wait_state(config, "web", "forwarding", FORWARDING_WAIT):
        stage.narrator.warn("the watchdog still has the web service on the friendly page; measuring anyway")
    swaps = watchstate.swaps(config, "web")
    ovpn = watchstate.openvpn_pid_by_end({end: stage.lab.namespace(end) for end in ("vps", "home")})
    drops = _drop_counters(ovpn)
    header = ["-H", "Connection: close"] if mode == "new" else []
    url = f"http://{stage.lab.vps_address}:{system.port}/"
    vps_cpu = measure.namespace_cpu_seconds(stage.vps_ns)
    out = stage.lab.exec("visitor", "wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "--latency",
                         "--timeout", WRK_TIMEOUT, *header, url, timeout=seconds + 60)
    vps_cpu = measure.namespace_cpu_seconds(stage.vps_ns) - vps_cpu
    result = measure.parse_wrk(out.stdout)
    moved = watchstate.counter_delta(drops, _drop_counters(ovpn))
    return Run(system.name, mode, connections, rep, result.rps, result.p50_ms, result.p99_ms, result.errors,
               result.non_2xx, watchstate.swaps(config, "web") - swaps,
               sum(v for k, v in moved.items() if not k.endswith(LISTEN)),
               1e6 * vps_cpu / result.requests if result.requests else float("nan"), moved)


LISTEN = "listen drops"


def _drop_counters(ovpn: dict[str, int]) -> dict[str, int]:
    """The tunnel's drop counters per end, and each end's listen-queue drops (a lost SYN costs 1 s too)."""
    counters = watchstate.drop_counters(ovpn, "vpnoffload0")
    counters.update({f"{end} {LISTEN}": watchstate.listen_drops(pid) for end, pid in ovpn.items()})
    return counters


def cells(runs: Sequence[Run]) -> list[Cell]:
    """Median over repetitions; errors, non-2xx, false failovers and drops are summed."""
    keys = list(dict.fromkeys((r.system, r.mode, r.connections) for r in runs))
    out = []
    for system, mode, connections in keys:
        group = [r for r in runs if (r.system, r.mode, r.connections) == (system, mode, connections)]
        out.append(Cell(system, mode, connections,
                        measure.median([r.rps for r in group]),
                        measure.median([r.p50_ms for r in group]),
                        measure.median([r.p99_ms for r in group]),
                        sum(r.errors for r in group), sum(r.non_2xx for r in group),
                        sum(r.false_failovers for r in group), sum(r.tunnel_drops for r in group),
                        measure.median([r.vps_cpu_ms_per_1k for r in group]), [r.rps for r in group]))
    return out
