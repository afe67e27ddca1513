"""vpnoffload's own footprint on the VPS: home up, during an outage, under a slow flood.

``bench.run`` measures it as item 3b (after the other items in the same lab);
``python -m bench.footprint`` does item 3 (memory) and this alone, for a quick
check without the rest, and prints JSON. Every number is the sum of every
vpnoffload process on the VPS except OpenVPN (which the alternatives need too):

* steady: home up, the watchdog alone (the page server runs only when needed);
* outage: home's cable pulled, the visitor gets the friendly page and the swap
  child has gone: watchdog + page server;
* flood: still in the outage, a flooder in the visitor's namespace keeps
  FLOOD_CONNECTIONS slow connections to the web port (a byte of a never-ending
  request head every 2 s, reopened when dropped) for FLOOD_SECONDS, while new
  visitors ask for the page; the worst sum seen, and what the visitors got.

The cable is always plugged back and the flooder stopped, also on errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import flood, measure, memory
from bench.stage import Narrator, Stage, staged

OUTAGE_WAIT = 20.0
STEADY_WAIT = 30.0  # bounded wait for the helpers of an earlier outage to be gone
FLOOD_CONNECTIONS = 1000
FLOOD_SECONDS = 25.0
GOALS_MB = {"steady": 12.5, "outage": 24, "flood": 32}  # what tests/e2e assert (steady: tests/budget.STEADY_RSS_KB)

def outage_parts(stage: Stage) -> dict[str, tuple[int, int]]:
    """(RSS, PSS) KiB per vpnoffload component while home is down and the page is served."""
    return outage_parts_during(stage, lambda: None)["parts"]  # type: ignore[return-value]


def own_sum(parts: dict[str, tuple[int, int]]) -> dict[str, object]:
    """vpnoffload's own processes (everything but OpenVPN): RSS and PSS summed, and per process kind."""
    own = {k: v for k, v in parts.items() if k != "OpenVPN" and v[0]}
    return {"rss_kb": sum(v[0] for v in own.values()), "pss_kb": sum(v[1] for v in own.values()),
            "parts": {k: list(v) for k, v in own.items()}}


def _now(stage: Stage) -> dict[str, tuple[int, int]]:
    return {name: measure.sum_memory(pids) for name, pids in stage.vpnoffload_pids().items()}


def _page_visit(stage: Stage) -> tuple[int, float]:
    """One new visitor during the outage: (HTTP status, seconds, a client's start-up included)."""
    started = time.monotonic()
    status, _ = stage.lab.http_get("visitor", f"http://{stage.lab.vps_address}/", timeout=2)
    return status, time.monotonic() - started


def _flood(stage: Stage, connections: int, seconds: float) -> dict[str, object]:
    """The flood (in an outage that already serves the page): the worst sum and the visitors."""
    flooder = flood.start(stage.lab, 80, connections, seconds, (stage.lab.visitor_address,), trickle=True)
    worst: dict[str, object] = {"rss_kb": 0}
    visits: list[list[float]] = []
    try:
        opened = flood.next_line(flooder)
        flood.first_drop(flooder)  # the server's first drop (below its cap: at the head deadline)
        deadline = time.monotonic() + max(0.0, seconds - 6)
        while time.monotonic() < deadline and flooder.poll() is None:
            status, took = _page_visit(stage)
            visits.append([status, round(took, 3)])
            now = own_sum(_now(stage))
            if now["rss_kb"] > worst["rss_kb"]:  # type: ignore[operator]
                worst = now
            time.sleep(0.5)  # pacing: one visitor every half second
        summary = flood.summary(flooder)
        flooder.wait(15)
    finally:
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait(5)
    return {**worst, "connections": connections, "seconds": seconds, "opened_at_start": opened,
            "visits": visits, "flooder": summary}


def measure_all(stage: Stage, connections: int = FLOOD_CONNECTIONS, seconds: float = FLOOD_SECONDS) -> dict[str, object]:
    """Steady (home up), outage (the page served) and flood, in that order: JSON-ready."""
    _wait_steady(stage)
    steady = own_sum(_now(stage))
    outage = outage_parts_during(stage, lambda: _flood(stage, connections, seconds))
    return {"steady": steady, "outage": own_sum(outage["parts"]), "flood": outage["during"],
            "goals_mb": GOALS_MB}


def _wait_steady(stage: Stage) -> None:
    """Until only the watchdog runs: after an outage (item 4) the page server lingers a few
    seconds (watch/loop.py's PAGE_LINGER) and a swap child may still be finishing."""
    deadline = time.monotonic() + STEADY_WAIT
    while time.monotonic() < deadline:
        parts = stage.vpnoffload_pids()
        if not any(parts[k] for k in ("page server", "swap child", "config snapshot")):
            return
        time.sleep(0.5)


def outage_parts_during(stage: Stage, during) -> dict[str, object]:
    """Like :func:`outage_parts`, and ``during()`` run while the cable is still out."""
    stage.lab.pull_cable()
    try:
        _wait_for_page(stage)
        parts = _now(stage)
        return {"parts": parts, "during": during()}
    finally:
        stage.lab.plug_cable()


def _wait_for_page(stage: Stage) -> None:
    deadline = time.monotonic() + OUTAGE_WAIT
    while time.monotonic() < deadline:
        parts = stage.vpnoffload_pids()
        if parts["page server"] and not parts["swap child"]:
            status, _ = stage.lab.http_get("visitor", f"http://{stage.lab.vps_address}/", timeout=2)
            if status == 503:
                break
        time.sleep(0.3)
    time.sleep(2)


def main() -> int:
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="vpnoffload-bench-"))
    os.chmod(scratch, 0o755)
    out: dict[str, object] = {}
    try:
        with staged(scratch, Narrator()) as stage:
            stage.start_alternatives()
            out["memory"] = [dataclasses.asdict(s) for s in memory.run(stage, levels=(1, 100, 1000))]
            out["footprint"] = measure_all(stage)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
