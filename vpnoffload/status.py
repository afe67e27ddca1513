"""What ``vpnoffload status`` reports: the tunnel, the watchdog and each service.

Reads files only (the config, OpenVPN's status file, the watchdog's state
file) plus, when no watchdog runs, one quick live check per service; no
python-iptables, no pyroute2, so it is cheap enough for a monitoring loop.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpnoffload.errors import ExitStatus, NotSetUpError
from vpnoffload.model import Config
from vpnoffload.paths import Paths


def connected_clients(status_file: Path, max_age: float = 30.0) -> dict[str, dict[str, str]]:
    """Common name -> CLIENT_LIST columns, from OpenVPN's status-version 3 file.

    A file older than ``max_age`` seconds (OpenVPN rewrites it every 2 s) means
    OpenVPN is not updating it: nobody counts as connected.
    """
    try:
        if time.time() - status_file.stat().st_mtime > max_age:
            return {}
        text = status_file.read_text(errors="replace")
    except OSError:
        return {}
    header: list[str] = []
    clients: dict[str, dict[str, str]] = {}
    for row in csv.reader(text.splitlines(), delimiter="\t"):
        if len(row) > 1 and row[0] == "HEADER" and row[1] == "CLIENT_LIST":
            header = row[1:]
        elif row and row[0] == "CLIENT_LIST" and header:
            entry = dict(zip(header, row))
            clients[entry.get("Common Name", "")] = entry
    return clients


@dataclass
class Report:
    data: dict[str, Any]
    exit_status: ExitStatus


def gather(config: Config, paths: Paths, *, server_running: bool, live_probe: Any = None) -> Report:
    """Build the report. ``live_probe(service)`` is used only when no watchdog runs."""
    from vpnoffload.watchfile import read_state, watch_pid

    if not paths.server_dir.exists():
        raise NotSetUpError("the VPS end is not set up: run 'vpnoffload up vps'")
    clients = connected_clients(paths.server_status) if server_running else {}
    homes = []
    for home in config.homes.values():
        entry = clients.get(home.name)
        homes.append({"name": home.name, "address": str(home.address), "connected": entry is not None,
                      "since": entry.get("Connected Since") if entry else None,
                      "real_address": entry.get("Real Address") if entry else None})
    connected = {h["name"] for h in homes if h["connected"]}
    # Up when each service can reach at least one of its home boxes (all homes, without services).
    tunnel_up = server_running and (all(set(s.homes) & connected for s in config.services.values())
                                    if config.services else len(connected) == len(homes))
    pid = watch_pid(paths)
    state = read_state(paths.watch_state) or {}
    known = {s["name"]: s for s in state.get("services", [])}
    # A dead watchdog's last state is still what the rules do (nothing else
    # rewrites them until `up vps`, which then forgets that state).
    services = [_service(config, name, known.get(name), live_probe, watchdog=pid is not None)
                for name in config.services]
    for s in services:
        # OpenVPN's own view is the surest sign of a tunnel that is down (the check only times out).
        if not s["healthy"] and s.get("home") and s["home"] not in connected:
            s["reason"] = TUNNEL_DOWN
    for entry in services:
        if config.services[entry["name"]].offline_copy:
            entry["offline_copy"] = _kept(config, paths, entry["name"])
    add_access_drops(config, services)
    data = {
        "tunnel": {"up": tunnel_up, "server_running": server_running, "homes": homes,
                   "server_restarts": _server_restarts(paths)},
        "watchdog": {"running": pid is not None, "pid": pid, "updated": state.get("updated") if pid else None},
        "services": services,
        "host_firewall": _host_firewall(paths),
    }
    bad = not tunnel_up or any(s["state"] != "forwarding" or not s["healthy"] for s in services)
    return Report(data, ExitStatus.UNHEALTHY if bad else ExitStatus.OK)


def add_access_drops(config: Config, services: list[dict[str, Any]]) -> None:
    """Each restricted service's ``access_dropped``: {rule: new connections dropped}, read
    from the kernel now (None: unreadable). Issue 28; see lean/accessdrops.py."""
    from vpnoffload.lean import accessdrops

    numbers = accessdrops.restricted(config)
    if not numbers:
        return
    drops = accessdrops.read(numbers)
    for entry in services:
        if entry["name"] in numbers.values():
            entry["access_dropped"] = None if drops is None else drops.get(entry["name"], {})


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
             watchdog: bool = True) -> dict[str, Any]:
    svc = config.services[name]
    out: dict[str, Any] = {"name": name, "listen": f"{svc.listen}/{svc.proto}", "target": svc.target,
                           "hostname": svc.hostname, "fallback": svc.fallback,
                           "path": "dnat" if svc.via == "dnat" else f"proxy via {config.proxy.server}"}
    if seen is not None and watchdog:
        out.update(state=seen["state"], home=seen.get("active"), healthy=seen["healthy"], last_check=seen["last_check"],
                   latency_ms=None if seen["latency"] is None else round(seen["latency"] * 1000, 1),
                   last_change=seen["last_change"] or None, detail=seen["detail"], swaps=seen["swaps"],
                   reason=_shown_reason(seen))
        return out
    # No watchdog: the rules stay as the last watchdog (or `up vps`) left them; check health now.
    home = seen.get("active") if seen is not None else svc.home
    result = live_probe(svc, home) if live_probe and home else None
    out.update(state="forwarding" if home else "fallback", home=home, healthy=bool(result and result.alive),
               last_check=time.time() if result else None,
               latency_ms=round(result.latency * 1000, 1) if result else None, last_change=None,
               detail=(result.detail if result else "not checked") + " (no watchdog running)", swaps=0,
               reason=getattr(result, "reason", "") if result else "not checked")
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


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    secs = max(0.0, time.time() - ts)
    return f"{secs:.0f}s ago" if secs < 120 else f"{secs / 60:.0f}m ago"


def render_text(data: dict[str, Any]) -> list[str]:
    t = data["tunnel"]
    lines = [f"tunnel: {'up' if t['up'] else 'DOWN'} (OpenVPN server {'running' if t['server_running'] else 'not running'})"]
    for h in t["homes"]:
        state = f"connected since {h['since']} from {h['real_address']}" if h["connected"] else "not connected"
        lines.append(f"  home {h['name']} ({h['address']}): {state}")
    if r := t.get("server_restarts"):
        down = f"; down since {_ago(r['down_since'])}, restarting" if r["down_since"] else ""
        lines.append(f"  OpenVPN server restarted {r['restarts']}x by the watchdog (last {_ago(r['last_restart'])}, "
                     f"{r['failures']} failed attempt(s){down})")
    w = data["watchdog"]
    lines.append(f"watchdog: {'running (pid %s)' % w['pid'] if w['running'] else 'NOT running: no failover'}")
    rows = [("SERVICE", "LISTEN", "PATH", "TARGET", "STATE", "SERVED BY", "HEALTH", "LAST CHECK", "LATENCY", "LAST CHANGE")]
    for s in data["services"]:
        latency = "-" if s["latency_ms"] is None else f"{s['latency_ms']:.0f} ms"
        served = s.get("home") or ("friendly page" if s["fallback"] == "page" else "reset")
        path = s.get("path", "dnat") + (f" ({s['hostname']})" if s.get("hostname") and s.get("path") != "dnat" else "")
        rows.append((s["name"], s["listen"], path, s["target"], s["state"], served, _health(s),
                     _ago(s["last_check"]), latency, _ago(s["last_change"])))
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
    return lines


def report_for(paths: Paths) -> Report:
    """Load the config and gather the report, checking homes live when no watchdog runs."""
    from vpnoffload import config as cfg
    from vpnoffload.watch import health
    from vpnoffload.tunnel import server_running

    config = cfg.load(paths.config)

    # Only the direct check: the visitors'-path check needs the probe namespace, which only a
    # running watchdog has (watch/probe.py), and then its verdicts are shown instead of these.
    def probe(svc: Any, home: str) -> Any:
        return health.probe(str(config.homes[home].address), svc.target_port, svc.check, config.watch.timeout,
                            host_header=svc.hostname)

    return gather(config, paths, server_running=server_running(paths), live_probe=probe)


def render(report: Report, as_json: bool) -> str:
    import json

    return json.dumps(report.data, indent=2) if as_json else "\n".join(render_text(report.data))
