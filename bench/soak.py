"""Issue 17 item 3: a soak of many cable pulls with faults mixed in, in the namespace lab.

Every cycle pulls home's cable and plugs it back, measured as bench/failover.py
measures (a crowd of new connections in the visitor's namespace: pulled ->
first friendly page; plugged -> first page from home). Every ``--every``-th
cycle also injects one fault, in turn:

- ``watchdog``: the watchdog is SIGKILLed mid-outage and started again (the cycle's
  recovery is then measured with the new watchdog);
- ``server``: after the cycle, the VPS's OpenVPN server is SIGKILLed (the watchdog restarts it);
- ``client``: after the cycle, home's OpenVPN client is SIGKILLed (the home keeper runs up home again);
- ``home-reboot``: after the cycle, home's OpenVPN and keeper are SIGKILLed, its routing
  policy and chains wiped, and ``up home`` run again as the boot unit would (the home
  site, nginx, is not vpnoffload's and is left running).

- ``home-stopped``: after the cycle, home's web server (nginx) is stopped with the tunnel up,
  and started again once the page shows.

For each fault: seconds to the page and to the site back, and whether ``status``
told the truth afterwards (exit 0, every service forwarding, within 10 s).

Every pull and every fault is also seen by a crowd as issue 26 asks (a new connection every
:data:`CROWD_EVERY` s, :func:`crowd_times`): the time from the fault to the first *prompt*
page (a 503 that arrived within :data:`PROMPT` s of that visitor's connect) and from the
return (cable back, web server started again; for the other faults, which come back by
themselves, from the fault) to the first prompt page from home, and the visitors who got
neither; per kind, p50/p90/max (:func:`by_kind`).
Bounded: at most ``--pulls`` cycles and ``--max-minutes`` minutes (checked
between cycles). Writes JSON (p50/p95/max of failover and recovery over the
cable pulls, per-fault counts and times) to ``--out`` and prints it.

    .venv/bin/python -m bench.soak --pulls 100 --max-minutes 20 --out soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import failover
from bench.measure import percentile
from bench import servers
from bench.servers import HOME_MARKER
from bench.stage import WEB_PORT, Narrator, Stage, staged
from vpnoffload.lab import sites as labsites
from vpnoffload.lab.netns import namespace_pids

FAULTS = ("watchdog", "server", "client", "home-stopped", "home-reboot")
#: A new connection this often during each pull and each return (issue 26's crowd).
CROWD_EVERY = 0.05
#: A page counts as prompt when its answer arrived within this long of the visitor's connect.
PROMPT = 0.3
#: The fault kinds of the crowd's table, as bench/report.py names them.
KINDS = ("cable", "server", "client", "home-stopped", "home-reboot")
FAULT_LIMIT = 40.0  # a killed server is back once the client's ping-restart (10 s) fires


def _kill(stage: Stage, host: str, match) -> int:
    """SIGKILL the processes in ``host``'s namespace whose (comm, cmdline) ``match``; how many."""
    count = 0
    for pid in namespace_pids(stage.lab.namespace(host)):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if match(comm, cmdline):
                os.kill(pid, signal.SIGKILL)
                count += 1
        except (OSError, ProcessLookupError):
            continue
    time.sleep(0.1)
    return count


def _status(stage: Stage) -> tuple[int, dict]:
    out = stage.lab.exec("vps", sys.executable, "-m", "vpnoffload", "-c", str(stage.sites.config("vps")),
                         "status", "--json", check=False, timeout=30)
    try:
        return out.returncode, json.loads(out.stdout)
    except ValueError:
        return out.returncode, {}


def _status_truthful(stage: Stage, limit: float = 10.0) -> bool:
    """After recovery: status exits 0 with every service forwarding (within ``limit`` s)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        code, data = _status(stage)
        if code == 0 and data.get("services") and all(s["state"] == "forwarding" for s in data["services"]):
            return True
        time.sleep(0.5)
    return False


def restart_watchdog(stage: Stage) -> None:
    """SIGKILL the watchdog and start a new one (as systemd's Restart= would), wait until it published."""
    try:
        os.kill(stage.watchdog_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    log = open(stage.sites.watch_log, "ab")
    proc = stage.lab.popen("vps", sys.executable, "-m", "vpnoffload", "-c", str(stage.sites.config("vps")), "watch",
                           stdout=log, stderr=log)
    stage.watchdog_pid = proc.pid
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not _status(stage)[1].get("watchdog", {}).get("running"):
        time.sleep(0.2)


def wipe_home_like_a_reboot(stage: Stage) -> None:
    lab = stage.lab
    for line in lab.exec("home", "ip", "rule").stdout.splitlines():
        if "lookup 7701" in line:
            lab.exec("home", "ip", "rule", "del", *line.split(":", 1)[1].split(), check=False)
    lab.exec("home", "ip", "route", "flush", "table", "7701", check=False)
    for table in ("filter", "nat", "mangle", "raw"):
        lab.exec("home", "iptables-legacy", "-t", table, "-F", check=False)
        lab.exec("home", "iptables-legacy", "-t", table, "-X", check=False)


def crowd_times(stage: Stage, want: int, marker: str, since: float, limit: float) -> tuple[float | None, int, list]:
    """A crowd (a new connection every :data:`CROWD_EVERY` s) until it is served as wanted: seconds
    from ``since`` to the first *prompt* wanted answer (arrived within :data:`PROMPT` s of its
    connect), how many visitors got neither the page nor the site, and every request."""
    _, results = failover.crowd(stage, want, marker, since, limit, every=CROWD_EVERY)
    return prompt_after(results, since), neither(results), results


def prompt_after(results: list[list], since: float) -> float | None:
    """Seconds from ``since`` to the first wanted answer that came within PROMPT s of its connect."""
    firsts = [done for started, done, _, matched in results if matched and done - started <= PROMPT]
    return round(min(firsts) - since, 3) if firsts else None


def neither(results: list[list]) -> int:
    """Visitors who got neither the site nor the page (no answer, or another status)."""
    return sum(1 for _, _, status, _ in results if status not in (200, 503))


def fault_event(stage: Stage, kind: str) -> dict:
    """Inject ``kind`` (not ``watchdog``: that one happens inside a cable pull); page and back times."""
    since = time.time()
    if kind == "home-stopped":
        return _home_stopped(stage, since)
    if kind == "server":
        _kill(stage, "vps", lambda comm, _: comm == "openvpn")
    elif kind == "client":
        _kill(stage, "home", lambda comm, _: comm == "openvpn")
    elif kind == "home-reboot":
        _kill(stage, "home", lambda comm, cmd: comm == "openvpn" or "vpnoffload.homekeeper" in cmd)
        wipe_home_like_a_reboot(stage)
    page, missed, during = crowd_times(stage, 503, "", since, failover.FAILOVER_LIMIT)
    if kind == "home-reboot":  # booted: the boot unit's `up home`
        labsites.vpnoffload(stage.lab, stage.sites, "home", "up", "home", narrator=stage.narrator)
    back, missed_back, _ = crowd_times(stage, 200, HOME_MARKER, since, FAULT_LIMIT)
    return {"kind": kind, "page_s": page, "back_s": back, "failed": sum(1 for r in during if r[2] == 0),
            "neither": missed + missed_back, "status_ok": _status_truthful(stage)}


def _home_stopped(stage: Stage, since: float) -> dict:
    """Home's web server stopped with the tunnel up, started again once the page shows."""
    servers.stop(stage.site)
    try:
        page, missed, during = crowd_times(stage, 503, "", since, failover.FAILOVER_LIMIT)
    finally:
        stage.site = servers.start_nginx_site(stage.lab, stage.scratch, "home", WEB_PORT)
        returned = time.time()
    back, missed_back, _ = crowd_times(stage, 200, HOME_MARKER, returned, FAULT_LIMIT)
    return {"kind": "home-stopped", "page_s": page, "back_s": back, "failed": sum(1 for r in during if r[2] == 0),
            "neither": missed + missed_back, "status_ok": _status_truthful(stage)}


def one_cycle(stage: Stage, watchdog_fault: bool) -> dict:
    """A cable pull; with ``watchdog_fault`` the watchdog is killed and restarted mid-outage."""
    lab = stage.lab
    pulled = time.time()
    lab.pull_cable()
    try:
        fail, missed, during = crowd_times(stage, 503, "", pulled, failover.FAILOVER_LIMIT)
        if watchdog_fault:
            restart_watchdog(stage)
    finally:
        plugged = time.time()
        lab.plug_cable()
    recovery, missed_back, back = crowd_times(stage, 200, HOME_MARKER, plugged, failover.RECOVERY_LIMIT)
    # The issue-17 times (first page, first page from home, prompt or not) stay as they were measured.
    first_page = [done for _, done, _, matched in during if matched]
    first_home = [done for _, done, _, matched in back if matched]
    return {"failover_s": round(min(first_page) - pulled, 3) if first_page else None,
            "recovery_s": round(min(first_home) - plugged, 3) if first_home else None,
            "prompt_page_s": fail, "prompt_back_s": recovery, "neither": missed + missed_back,
            "failed_during_outage": sum(1 for r in during if r[2] == 0), "watchdog_killed": watchdog_fault}


def _summary(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None]
    if not got:
        return {"n": 0, "missed": len(values)}
    return {"n": len(got), "missed": len(values) - len(got), "p50": round(percentile(got, 50), 3),
            "p90": round(percentile(got, 90), 3), "p95": round(percentile(got, 95), 3), "max": round(max(got), 3)}


def by_kind(cycles: list[dict], faults: list[dict]) -> dict:
    """The crowd's table: per fault kind, how many, prompt page and prompt site back (p50/p90/max),
    and the visitors who got neither."""
    events: dict[str, list[tuple[float | None, float | None, int]]] = {kind: [] for kind in KINDS}
    for c in cycles:
        events["cable"].append((c.get("prompt_page_s"), c.get("prompt_back_s"), c.get("neither", 0)))
    for f in faults:
        if f["kind"] in events:
            events[f["kind"]].append((f["page_s"], f["back_s"], f.get("neither", 0)))
    return {kind: {"count": len(these), "page_s": _summary([e[0] for e in these]),
                   "back_s": _summary([e[1] for e in these]), "neither": sum(e[2] for e in these)}
            for kind, these in events.items() if these}


def soak(stage: Stage, pulls: int, max_minutes: float, every: int, narrator: Narrator) -> dict:
    started = time.monotonic()
    cycles: list[dict] = []
    faults: list[dict] = []
    turn = 0
    for i in range(pulls):
        if time.monotonic() - started > max_minutes * 60:
            narrator.step(f"stopping after {i} pulls: --max-minutes {max_minutes:g} reached")
            break
        kind = FAULTS[turn % len(FAULTS)] if every and (i + 1) % every == 0 else None
        turn += kind is not None
        narrator.step(f"soak: pull {i + 1}/{pulls}" + (f" + fault {kind}" if kind else ""))
        cycle = one_cycle(stage, watchdog_fault=kind == "watchdog")
        if kind == "watchdog":
            faults.append({"kind": kind, "page_s": None, "back_s": cycle["recovery_s"], "failed": 0,
                           "status_ok": _status_truthful(stage)})
        elif kind:
            time.sleep(failover.PAUSE)
            faults.append(fault_event(stage, kind))
        cycles.append(cycle)
        time.sleep(failover.PAUSE)
    per_fault = {}
    for kind in FAULTS:
        these = [f for f in faults if f["kind"] == kind]
        per_fault[kind] = {"count": len(these), "status_ok": sum(f["status_ok"] for f in these),
                           "page_s": _summary([f["page_s"] for f in these]) if kind != "watchdog" else None,
                           "back_s": _summary([f["back_s"] for f in these]),
                           "failed_requests": sum(f["failed"] for f in these)}
    fo = _summary([c["failover_s"] for c in cycles])
    rec = _summary([c["recovery_s"] for c in cycles])
    return {
        "pulls": len(cycles), "minutes": round((time.monotonic() - started) / 60, 2), "every": every,
        "failover_s": fo, "recovery_s": rec,
        "goals": {"failover_p95_le_2s": fo.get("p95", 99) <= 2.0, "recovery_p95_le_2s": rec.get("p95", 99) <= 2.0},
        "failed_during_outage": sum(c["failed_during_outage"] for c in cycles),
        "crowd": by_kind(cycles, faults), "crowd_every": CROWD_EVERY, "prompt": PROMPT,
        "faults": per_fault, "cycles": cycles, "fault_events": faults,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--pulls", type=int, default=100)
    parser.add_argument("--max-minutes", type=float, default=20.0)
    parser.add_argument("--every", type=int, default=4, help="a fault every N-th cycle (0: none)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.pulls < 1 or args.max_minutes <= 0:
        parser.error("--pulls and --max-minutes must be positive")
    narrator = Narrator(args.verbose)
    with tempfile.TemporaryDirectory(prefix="vpnoffload-soak-") as scratch:
        os.chmod(scratch, 0o755)
        with staged(Path(scratch), narrator) as stage:
            result = soak(stage, args.pulls, args.max_minutes, args.every, narrator)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("cycles", "fault_events")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
