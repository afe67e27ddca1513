"""Items 4 and 5: failover times over many cable pulls, and the watchdog's own cost.

Failover is measured as a visitor sees it (the approach of
tests/e2e/test_failover.py): a crowd process in the visitor's namespace opens
a new connection every CROWD_EVERY seconds, each in its own thread, and
records when each request started, finished and what it got. The time of a
pull is "cable pulled" to the first friendly page (HTTP 503) any visitor
received; the time of a recovery is "cable back" to the first page from home.
The crowd stops once STREAK requests in a row got what was wanted, and the
cable stays out until then, so each outage lasts a few seconds.

The watchdog's cost is read from /proc: resident memory (VmRSS, VmHWM) and
CPU time (utime+stime; the swap helper it forks and waits for shows as
cutime+cstime) over a window, at idle and during an outage.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from bench import crowd as crowd_script
from bench import measure, watchstate
from bench.servers import HOME_MARKER
from bench.stage import VISIT_PORT, Stage

CROWD_EVERY = 0.1
STREAK = 5
FAILOVER_LIMIT = 15.0
RECOVERY_LIMIT = 30.0
PAUSE = 1.0  # between a recovery and the next pull
SETTLE_WAIT = 20.0

@dataclass
class Cycle:
    failover_s: float | None  # cable pulled -> first friendly page
    recovery_s: float | None  # cable back -> first page from home
    outage_s: float  # how long the cable was out
    failed_during_outage: int  # requests that got nothing at all while the cable was out


def crowd(stage: Stage, want: int, marker: str, since: float, limit: float,
          every: float = CROWD_EVERY) -> tuple[float | None, list[list]]:
    """Seconds from ``since`` (wall clock) to the first matching reply, and every request (a new
    connection every ``every`` s)."""
    pattern = re.compile(f"^{want} .*{re.escape(marker)}", re.S)
    replies = crowd_script.run(stage.lab, pattern.pattern, every, limit, STREAK, port=VISIT_PORT)
    # [started, finished, status, matched]: what the cycles and the report read.
    results = [[t0, t1, int(reply.split(" ", 1)[0]), bool(pattern.search(reply))] for t0, t1, reply in replies]
    firsts = [done for _, done, _, matched in results if matched]
    return (min(firsts) - since if firsts else None), results


def cycles(stage: Stage, count: int) -> list[Cycle]:
    out: list[Cycle] = []
    for i in range(count):
        stage.narrator.step(f"item 4: cable pull {i + 1}/{count}")
        out.append(one_cycle(stage))
        time.sleep(PAUSE)
    return out


def one_cycle(stage: Stage) -> Cycle:
    pulled = time.time()
    stage.lab.pull_cable()
    try:
        failover, during = crowd(stage, 503, "", pulled, FAILOVER_LIMIT)
    finally:
        plugged = time.time()
        stage.lab.plug_cable()
    recovery, _ = crowd(stage, 200, HOME_MARKER, plugged, RECOVERY_LIMIT)
    failed = sum(1 for _, _, status, _ in during if status == 0)
    return Cycle(failover, recovery, plugged - pulled, failed)


# ------------------------------------------------------------------ item 5


@dataclass
class WatchdogCost:
    phase: str  # "idle" or "outage"
    seconds: float
    rss_kb: int  # at the end of the window
    hwm_kb: int  # peak resident memory since the watchdog started
    cpu_own_s: float
    cpu_children_s: float  # the swap helper it forked and waited for

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_own_s / self.seconds

    @property
    def cpu_total_percent(self) -> float:
        return 100 * (self.cpu_own_s + self.cpu_children_s) / self.seconds


def watchdog_cost(stage: Stage, window: float) -> list[WatchdogCost]:
    """The watchdog's memory and CPU over ``window`` seconds idle, then over an outage of that length."""
    pid = stage.watchdog_pid
    # Start from a settled watchdog: an earlier load may have left a swap (and its helper) in flight.
    if not watchstate.wait_all_forwarding(stage.sites.config("vps"), SETTLE_WAIT):
        stage.narrator.warn("the watchdog has not settled on forwarding every service; measuring anyway")
    time.sleep(2 * PAUSE)
    stage.narrator.step(f"item 5: watchdog at idle ({window:g} s)")
    idle = _window(pid, "idle", window, lambda: time.sleep(window))
    stage.narrator.step(f"item 5: watchdog during an outage ({window:g} s)")

    def outage() -> None:
        pulled = time.time()
        stage.lab.pull_cable()
        try:
            # Visitors keep coming meanwhile (the crowd stops after `window`).
            crowd(stage, 999, "", pulled, window)  # never satisfied: runs the whole window
        finally:
            stage.lab.plug_cable()

    during = _window(pid, "outage", window, outage)
    crowd(stage, 200, HOME_MARKER, time.time(), RECOVERY_LIMIT)
    return [idle, during]


def _window(pid: int, phase: str, window: float, body) -> WatchdogCost:
    before, start = measure.cpu_times(pid), time.monotonic()
    body()
    after, elapsed = measure.cpu_times(pid), time.monotonic() - start
    return WatchdogCost(phase, elapsed, measure.rss_kb(pid), _hwm_kb(pid),
                        after.own - before.own, after.children - before.children)


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
