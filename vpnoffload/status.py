"""What ``vpnoffload status`` reports: the tunnel, the watchdog and each service.

Reads files only (the config, OpenVPN's status file, the watchdog's state
file) plus, when no watchdog runs, one quick live check per service; no
python-iptables, no pyroute2, so it is cheap enough for a monitoring loop.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from vpnoffload.errors import ExitStatus, NotSetUpError
from vpnoffload.model import Config
from vpnoffload.paths import Paths
from vpnoffload.tunnel import connected_clients  # noqa: F401  (read next to where OpenVPN is told to write it)


#: The schema of ``status --json`` (docs/troubleshooting.md). 2: the keys of 1 kept with their
#: meanings, plus ``schema``, ``tunnel.homes[].answered/last_answer/last_answer_age/evidence/openvpn_view/
#: bytes_received/bytes_sent``,
#: ``watchdog.age/stale/interval`` and ``services[].stale``.
SCHEMA = 2
#: A watchdog state older than this many check intervals is stale: shown, but not as current.
STALE_INTERVALS = 2


@dataclass
class HomeLine:
    """One home box on the tunnel line. ``connected``: it answered through the tunnel in the
    watchdog's last round, or OpenVPN connected it after that round (``evidence``: "watchdog");
    with no current watchdog, OpenVPN's own list (``evidence``: "openvpn")."""

    name: str
    address: str
    connected: bool
    since: str | None
    real_address: str | None
    answered: bool | None  # in the watchdog's last round (None: no current watchdog round)
    last_answer: float | None  # wall clock of the last answer through the tunnel
    last_answer_age: float | None
    evidence: str  # "watchdog": its last round; "openvpn": OpenVPN's list only
    openvpn_view: str  # where OpenVPN's list came from: "management", "status file" or "none"
    bytes_received: int | None  # OpenVPN's counters for this home, from that list
    bytes_sent: int | None


@dataclass
class TunnelReport:
    up: bool
    server_running: bool
    homes: list[HomeLine]
    server_restarts: dict[str, Any] | None


@dataclass
class WatchdogReport:
    running: bool
    pid: int | None
    updated: float | None
    age: float | None  # seconds since it last published
    stale: bool  # older than STALE_INTERVALS intervals: not what it sees now
    interval: float


@dataclass
class ServiceReport:
    name: str
    listen: str
    target: str
    hostname: str | None
    fallback: str
    path: str
    state: str = "forwarding"
    home: str | None = None
    healthy: bool = False
    last_check: float | None = None
    latency_ms: float | None = None
    last_change: float | None = None
    detail: str = ""
    swaps: int = 0
    reason: str = ""
    stale: bool = False
    offline_copy: dict[str, Any] | None = None
    #: Keys only some services have (``access_dropped`` of a restricted service).
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["offline_copy"] is None:
            del out["offline_copy"]  # the key is there only for services that keep copies
        out.update(out.pop("extra"))
        return out

    def __getitem__(self, key: str) -> Any:  # the dict form's keys, for readers of both
        return getattr(self, key)


@dataclass
class StatusReport:
    """Everything ``status`` says, in one typed structure; ``as_dict`` is the ``--json`` form."""

    tunnel: TunnelReport
    watchdog: WatchdogReport
    services: list[ServiceReport]
    host_firewall: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA

    def as_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "tunnel": asdict(self.tunnel), "watchdog": asdict(self.watchdog),
                "services": [s.as_dict() for s in self.services], "host_firewall": self.host_firewall}


@dataclass
class Report:
    data: dict[str, Any]
    exit_status: ExitStatus
    typed: StatusReport | None = None


def gather(config: Config, paths: Paths, *, server_running: bool, live_probe: Any = None,
           now: float | None = None) -> Report:
    """Build the report. ``live_probe(service)`` is used only when no watchdog runs."""
    from vpnoffload.watchfile import read_state, watch_pid

    if not paths.server_dir.exists():
        raise NotSetUpError("the VPS end is not set up: run 'vpnoffload up vps'")
    now = time.time() if now is None else now
    pid = watch_pid(paths)
    state = read_state(paths.watch_state) or {}
    watchdog = _watchdog(config, state, pid, now)
    current = pid is not None and not watchdog.stale
    clients, source = _openvpn_view(paths, state if current else None) if server_running else ({}, "none")
    seen = state.get("homes") if current else None
    homes = [_home(home.name, str(home.address), clients.get(home.name), seen, state, now, source)
             for home in config.homes.values()]
    connected = {h.name for h in homes if h.connected}
    # Up when each service can reach at least one of its home boxes (all homes, without services).
    tunnel_up = server_running and (all(set(s.homes) & connected for s in config.services.values())
                                    if config.services else len(connected) == len(homes))
    known = {s["name"]: s for s in state.get("services", []) if isinstance(s, dict) and "name" in s}
    # A dead watchdog's last state is still what the rules do (nothing else
    # rewrites them until `up vps`, which then forgets that state).
    services = [_service(config, name, known.get(name), live_probe, watchdog=pid is not None, stale=watchdog.stale)
                for name in config.services]
    for s in services:
        # OpenVPN no longer lists its home: the surest sign of a tunnel that is down (the check only
        # times out). A home OpenVPN still lists but that does not answer stays "home unreachable".
        if not s.healthy and s.home and s.home not in clients and s.home not in connected:
            s.reason = TUNNEL_DOWN
        if config.services[s.name].offline_copy:
            s.offline_copy = _kept(config, paths, s.name)
    add_access_drops(config, services)
    typed = StatusReport(TunnelReport(tunnel_up, server_running, homes, _server_restarts(paths)), watchdog, services,
                         _host_firewall(paths))
    bad = not tunnel_up or any(s.state != "forwarding" or not s.healthy for s in services)
    return Report(typed.as_dict(), ExitStatus.UNHEALTHY if bad else ExitStatus.OK, typed)


def _watchdog(config: Config, state: dict[str, Any], pid: int | None, now: float) -> WatchdogReport:
    interval = float(state.get("interval") or config.watch.interval)
    updated = state.get("updated") if pid is not None else None
    age = max(0.0, now - updated) if isinstance(updated, (int, float)) else None
    # The watchdog publishes every round (interval + at most timeout): two intervals and a
    # timeout without a word means it is stuck or gone, whatever its pid says.
    stale = pid is not None and (age is None or age > STALE_INTERVALS * interval + float(config.watch.timeout))
    return WatchdogReport(pid is not None, pid, updated, None if age is None else round(age, 2), stale, interval)


def _openvpn_view(paths: Paths, state: dict[str, Any] | None) -> tuple[dict[str, dict[str, Any]], str]:
    """OpenVPN's list of connected homes and where it came from: the management interface as
    the current watchdog read it this round, or as status asks it now (no watchdog), or the
    status file OpenVPN rewrites every 2 s when the interface does not answer."""
    from vpnoffload.lean import ovpn

    read = (state or {}).get("openvpn")
    if isinstance(read, dict) and isinstance(read.get("clients"), dict):
        return read["clients"], "management"
    if state is None:
        live = ovpn.clients_once(str(paths.server_management))
        if live is not None:
            return live, "management"
    from_file = connected_clients(paths.server_status)
    return {name: {new: entry.get(old) for old, new in ovpn.FIELDS.items()} for name, entry in from_file.items()}, \
        "status file"


def _home(name: str, address: str, client: dict[str, Any] | None, seen: Any, state: dict[str, Any],
          now: float, source: str) -> HomeLine:
    since, real = (client.get("since"), client.get("real_address")) if client else (None, None)
    received, sent = (client.get("bytes_received"), client.get("bytes_sent")) if client else (None, None)
    mine = seen.get(name) if isinstance(seen, dict) else None
    if not isinstance(mine, dict):
        # No current watchdog round checked this home: OpenVPN's own list is all there is.
        return HomeLine(name, address, client is not None, since, real, None, None, None, "openvpn", source,
                        received, sent)
    last = mine.get("last_answer")
    answered = bool(mine.get("answered"))
    # OpenVPN telling us it connected after the last round counts too (a home just back; its
    # time_t has whole seconds, so the round's own second counts).
    just_connected = client is not None and _connected_at(client) >= int(float(state.get("updated") or 0))
    connected = answered or just_connected
    return HomeLine(name, address, connected, since if connected else None, real if connected else None, answered,
                    last, None if not isinstance(last, (int, float)) else round(max(0.0, now - last), 2), "watchdog",
                    source, received, sent)


def _connected_at(client: dict[str, Any]) -> float:
    try:
        return float(client.get("since_time") or 0)
    except (TypeError, ValueError):
        return 0.0


def add_access_drops(config: Config, services: list[ServiceReport]) -> None:
    """Each restricted service's ``access_dropped``: {rule: new connections dropped}, read
    from the kernel now (None: unreadable). See lean/accessdrops.py."""
    from vpnoffload.lean import accessdrops

    numbers = accessdrops.restricted(config)
    if not numbers:
        return
    drops = accessdrops.read(numbers)
    for entry in services:
        if entry.name in numbers.values():
            entry.extra["access_dropped"] = None if drops is None else drops.get(entry.name, {})


def _kept(config: Config, paths: Paths, name: str) -> dict[str, Any]:
    """How many of the service's offline_copy pages are kept, their age, the last fetch."""
    svc = config.services[name]
    if svc.via == "proxy":
        return {"kept_by": config.proxy.server, "paths": len(svc.offline_copy)}
    from vpnoffload.fallback.copies import summary

    return {"paths": len(svc.offline_copy), **summary(str(paths.run), name)}


#: Words for why a service fails (watch/health.py's REASONS), and what to do about each
#: (docs/troubleshooting.md says more).
TUNNEL_DOWN = "tunnel down"
ADVICE = {
    "tunnel down": "the home box is not connected: is OpenVPN running there (vpnoffload up home)?",
    "home unreachable": "the tunnel is up but the home box does not answer: is it on, is its route back set?",
    "path blocked on the VPS": "home answers the VPS but not visitors: a firewall rule on the VPS drops "
                               "forwarded traffic to the tunnel",
    "target refused": "the home box answers but nothing listens on the target port: start the service",
    "target error": "the service at home answers with an error (HTTP >= 500, or closes at once)",
    "check error": "the health check itself failed: see the watchdog's log",
}


def _host_firewall(paths: Paths) -> dict[str, Any]:
    from vpnoffload.firewall.host.plan import status_report

    return status_report(paths.run)


def _service(config: Config, name: str, seen: dict[str, Any] | None, live_probe: Any, *,
             watchdog: bool = True, stale: bool = False) -> ServiceReport:
    svc = config.services[name]
    out = ServiceReport(name=name, listen=f"{svc.listen}/{svc.proto}", target=svc.target, hostname=svc.hostname,
                        fallback=svc.fallback, path="dnat" if svc.via == "dnat" else f"proxy via {config.proxy.server}")
    if seen is not None and watchdog:
        out.state, out.home, out.healthy, out.last_check = seen["state"], seen.get("active"), seen["healthy"], \
            seen["last_check"]
        out.latency_ms = None if seen["latency"] is None else round(seen["latency"] * 1000, 1)
        out.last_change, out.detail, out.swaps = seen["last_change"] or None, seen["detail"], seen["swaps"]
        out.reason, out.stale = _shown_reason(seen), stale
        return out
    # No watchdog: the rules stay as the last watchdog (or `up vps`) left them; check health now.
    home = seen.get("active") if seen is not None else svc.home
    result = live_probe(svc, home) if live_probe and home else None
    out.state, out.home, out.healthy = "forwarding" if home else "fallback", home, bool(result and result.alive)
    out.last_check = time.time() if result else None
    out.latency_ms = round(result.latency * 1000, 1) if result else None
    out.detail = (result.detail if result else "not checked") + " (no watchdog running)"
    out.reason = getattr(result, "reason", "") if result else "not checked"
    return out


def _shown_reason(seen: dict[str, Any]) -> str:
    """The reason of a failing service; "" when healthy (a "busy" home that passes is still ok)."""
    reason = seen.get("reason") or ""
    if seen.get("healthy") and reason != "busy":
        return ""
    if not seen.get("healthy") and not reason:
        # A watchdog from before reasons, or the home served was checked fine but the service is on fallback.
        return "home unreachable" if seen.get("active") is None else ""
    return reason


def _health(s: dict[str, Any]) -> str:
    reason = s.get("reason") or ""
    if s["healthy"]:
        return f"ok ({reason})" if reason else "ok"
    return f"FAILING: {reason}" if reason else "FAILING"


def _server_restarts(paths: Paths) -> dict[str, Any] | None:
    """What the watchdog's server keeper did (watch/supervise.py); None if it never had to act."""
    from vpnoffload.watch.supervise import read_stats

    stats = read_stats(paths.run)
    return {k: stats.get(k) for k in ("restarts", "failures", "last_restart", "last_failure", "down_since")} \
        if stats else None


def _age(secs: float | None) -> str:
    if secs is None:
        return "-"
    return f"{secs:.1f}s ago" if secs < 10 else f"{secs:.0f}s ago" if secs < 120 else f"{secs / 60:.0f}m ago"


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    secs = max(0.0, time.time() - ts)
    return f"{secs:.0f}s ago" if secs < 120 else f"{secs / 60:.0f}m ago"


def _home_box(paths: Paths) -> Report | None:
    """On a home box: its host firewall and keeper."""
    from vpnoffload.firewall.host.plan import home_box_report

    data = home_box_report(paths.run)
    return None if data is None else Report(data, ExitStatus.OK)


def render_text(data: dict[str, Any]) -> list[str]:
    if data.get("end") == "home":
        from vpnoffload.firewall.host.plan import render_home_box

        return render_home_box(data, _ago)
    t = data["tunnel"]
    lines = [f"tunnel: {'up' if t['up'] else 'DOWN'} (OpenVPN server {'running' if t['server_running'] else 'not running'})"]
    for h in t["homes"]:
        state = f"connected since {h['since']} from {h['real_address']}" if h["connected"] else "not connected"
        if h["connected"] and not h.get("since"):
            state = "connected"
        if h.get("evidence") == "watchdog":
            last = h.get("last_answer_age")
            state += f"; last answer through the tunnel {_age(last)}" if last is not None else \
                "; no answer through the tunnel yet"
        elif h.get("evidence") == "openvpn":
            state += " (OpenVPN's view: no current watchdog round)"
        lines.append(f"  home {h['name']} ({h['address']}): {state}")
    if r := t.get("server_restarts"):
        down = f"; down since {_ago(r['down_since'])}, restarting" if r["down_since"] else ""
        lines.append(f"  OpenVPN server restarted {r['restarts']}x by the watchdog (last {_ago(r['last_restart'])}, "
                     f"{r['failures']} failed attempt(s){down})")
    w = data["watchdog"]
    lines.append(f"watchdog: {'running (pid %s)' % w['pid'] if w['running'] else 'NOT running: no failover'}")
    if w.get("stale"):
        lines.append(f"  STALE: its last word is {_age(w.get('age'))} old (it publishes every "
                     f"{w.get('interval', 0):g} s): what follows may no longer be true")
    rows = [("SERVICE", "LISTEN", "PATH", "TARGET", "STATE", "SERVED BY", "HEALTH", "LAST CHECK", "LATENCY", "LAST CHANGE")]
    for s in data["services"]:
        latency = "-" if s["latency_ms"] is None else f"{s['latency_ms']:.0f} ms"
        served = s.get("home") or ("friendly page" if s["fallback"] == "page" else "reset")
        path = s.get("path", "dnat") + (f" ({s['hostname']})" if s.get("hostname") and s.get("path") != "dnat" else "")
        rows.append((s["name"], s["listen"], path, s["target"], s["state"], served, _health(s),
                     _ago(s["last_check"]) + (" (stale)" if s.get("stale") else ""), latency, _ago(s["last_change"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for reason in dict.fromkeys(s.get("reason") for s in data["services"] if not s["healthy"]):
        if reason in ADVICE:
            lines.append(f"  {reason}: {ADVICE[reason]}")
    for s in data["services"]:
        kept = s.get("offline_copy")
        if kept and "kept_by" in kept:
            lines.append(f"offline copy of {s['name']}: {kept['paths']} page(s) kept by {kept['kept_by']}")
        elif kept:
            age = "-" if kept["oldest_age"] is None else _ago(time.time() - kept["oldest_age"]).removesuffix(" ago")
            lines.append(f"offline copy of {s['name']}: {kept['kept']}/{kept['paths']} page(s) kept "
                         f"({kept['bytes']} bytes, oldest {age}), last fetch {_ago(kept['last_fetch'])}: "
                         f"{kept['result'] or 'none yet'}")
    for s in data["services"]:
        if "access_dropped" in s:
            from vpnoffload.lean.accessdrops import render

            lines.append(render(s["name"], s["access_dropped"]))
    if "host_firewall" in data:
        from vpnoffload.firewall.host.plan import render_status

        lines += render_status(data["host_firewall"], _ago)
    return [printable(line) for line in lines]


def printable(text: str) -> str:
    """``text`` without control or format characters: what home answers (a header a copy was
    refused for, a status line) must not move the cursor, retitle or clear the reader's terminal."""
    import unicodedata

    return "".join(c if c == " " or unicodedata.category(c)[0] not in "CZ" else "?" for c in text)


def report_for(paths: Paths) -> Report:
    """Load the config and gather the report, checking homes live when no watchdog runs."""
    from vpnoffload import config as cfg
    from vpnoffload.watch import health
    from vpnoffload.tunnel import server_running

    config = cfg.load(paths.config)
    if not paths.server_dir.exists() and (home := _home_box(paths)) is not None:
        return home

    # Only the direct check: the visitors'-path check needs the probe namespace, which only a
    # running watchdog has (watch/probe.py), and then its verdicts are shown instead of these.
    def probe(svc: Any, home: str) -> Any:
        return health.probe(str(config.homes[home].address), svc.target_port, svc.check, config.watch.timeout,
                            host_header=svc.hostname)

    return gather(config, paths, server_running=server_running(paths), live_probe=probe)


def render(report: Report, as_json: bool) -> str:
    import json

    return json.dumps(report.data, indent=2) if as_json else "\n".join(render_text(report.data))
