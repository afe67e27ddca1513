"""``python -m bench.run [--quick] [--out docs/benchmarks.md]``: every benchmark, one run, one report.

Needs root (network namespaces), openvpn, wrk, nginx, haproxy, iperf3 and
conntrack; matplotlib for the plots (optional). Builds a lab, sets vpnoffload
up with its own CLI, measures items 1-5 in it, then vpnoffload's own footprint
(steady, outage, slow flood: item 3b) and the soak of cable pulls with faults
(item 4b), tears it down, measures item 6 in a second lab, and writes the whole
Markdown report (every section from this run) plus PNGs next to it. Each
item that fails is reported as failed; the others still run. Every lab,
process and temp file is removed at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import bulk, failover, footprint, machine, measure, memory, plots, report, soak, tunnel, web
from bench.stage import Narrator, SetupError, Stage, staged

REQUIRED = ("ip", "openvpn", "wrk", "nginx", "haproxy", "iperf3", "conntrack")


@dataclass(frozen=True)
class Profile:
    """How long and how often: the full run takes ~25 minutes (the soak up to 14 of them), --quick ~7."""

    name: str
    wrk_seconds: int
    web_reps: int
    concurrencies: tuple[int, ...]
    bulk_seconds: int
    bulk_reps: int
    memory_levels: tuple[int, ...]
    pulls: int
    watch_window: float
    tunnel_seconds: int
    tunnel_reps: int
    tunnel_variants: tuple[str, ...] | None  # None: all
    #: Item 6's new connections through DNAT per variant (one wrk run of this long per variant and rep); 0: off.
    tunnel_web_seconds: int = 0
    flood_connections: int = footprint.FLOOD_CONNECTIONS
    flood_seconds: float = footprint.FLOOD_SECONDS
    soak_pulls: int = 24  # issue 26: >= 20 cable pulls, and a few of each other fault
    soak_minutes: float = 8.0  # the soak stops after this long even with pulls left
    soak_every: int = 2  # a fault every N-th pull, in turn


FULL = Profile("full", wrk_seconds=5, web_reps=2, concurrencies=(64, 1000), bulk_seconds=4, bulk_reps=3,
               memory_levels=(1, 100, 1000), pulls=20, watch_window=10.0, tunnel_seconds=3, tunnel_reps=3,
               tunnel_variants=None, tunnel_web_seconds=3)
QUICK = Profile("quick", wrk_seconds=3, web_reps=1, concurrencies=(64, 1000), bulk_seconds=3, bulk_reps=1,
                memory_levels=(1, 100, 1000), pulls=5, watch_window=5.0, tunnel_seconds=3, tunnel_reps=1,
                tunnel_variants=tunnel.QUICK_VARIANTS, flood_seconds=12.0, soak_pulls=10, soak_minutes=3.0,
                soak_every=2)


@dataclass
class Results:
    """Everything one run measured (each item None if it did not run or failed)."""

    profile: Profile
    started: str
    machine: dict[str, str] = field(default_factory=dict)
    command: str = ""
    web: list[web.Cell] | None = None
    web_runs: list[web.Run] | None = None
    bulk: list[bulk.Cell] | None = None
    memory: list[memory.Sample] | None = None
    time_wait_entries: int | None = None
    conntrack_object_size: int = 0
    failover: list[failover.Cycle] | None = None
    watchdog: list[failover.WatchdogCost] | None = None
    watchdog_steady_rss_kb: int | None = None
    footprint: dict[str, Any] | None = None  # bench.footprint.measure_all
    soak: dict[str, Any] | None = None  # bench.soak.soak
    tunnel: list[tunnel.Cell] | None = None
    tunnel_runs: list[tunnel.Run] | None = None
    tunnel_facts: tunnel.Facts | None = None
    tunnel_web: list[tunnel.WebCell] | None = None
    tunnel_web_runs: list[tunnel.WebRun] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    steal: dict[str, float] = field(default_factory=dict)  # % of CPU time the hypervisor took, per item
    total_seconds: float = 0.0


def _item(results: Results, key: str, narrator: Narrator, body: Callable[[], None]) -> None:
    """Run one item; a failure is recorded (and shown) and the next item runs."""
    start, cpu = time.monotonic(), measure.system_cpu()
    try:
        body()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # one broken item must not cost the others
        results.errors[key] = f"{type(exc).__name__}: {exc}"
        narrator.warn(f"{key} failed: {exc}")
        if narrator.verbose:
            traceback.print_exc()
    finally:
        results.durations[key] = time.monotonic() - start
        results.steal[key] = measure.steal_percent(cpu, measure.system_cpu())


SETUP_ATTEMPTS = 2  # a lab whose setup failed is torn down and built once more


def measure_all(profile: Profile, scratch: Path, narrator: Narrator) -> Results:
    results = Results(profile, time.strftime("%Y-%m-%d %H:%M %Z"))
    results.machine = machine.describe()
    results.conntrack_object_size = measure.conntrack_object_size()
    for attempt in range(1, SETUP_ATTEMPTS + 1):
        try:
            with staged(scratch, narrator) as stage:
                _items_in_lab(results, profile, stage, narrator)
            break
        except SetupError as exc:
            narrator.warn(f"setting the lab up failed (attempt {attempt}/{SETUP_ATTEMPTS}): {exc}")
            if attempt == SETUP_ATTEMPTS:
                results.errors["items 1-5 (lab setup)"] = str(exc)

    def item6() -> None:
        runs, found, web_runs = tunnel.run(scratch, narrator, seconds=profile.tunnel_seconds,
                                           reps=profile.tunnel_reps, names=profile.tunnel_variants,
                                           web_seconds=profile.tunnel_web_seconds)
        results.tunnel, results.tunnel_runs = tunnel.cells(runs, profile.tunnel_seconds), runs
        results.tunnel_facts = found
        if web_runs:
            results.tunnel_web, results.tunnel_web_runs = tunnel.web_cells(web_runs), web_runs

    _item(results, "item 6 (tunnel configs)", narrator, item6)
    return results


def _items_in_lab(results: Results, profile: Profile, stage: Stage, narrator: Narrator) -> None:
    """Items 1-5, in the lab where vpnoffload is up."""
    _item(results, "alternatives (nginx, HAProxy)", narrator, stage.start_alternatives)

    def item1() -> None:
        runs = web.run(stage, seconds=profile.wrk_seconds, concurrencies=profile.concurrencies, reps=profile.web_reps)
        results.web_runs, results.web = runs, web.cells(runs)

    def item2() -> None:
        results.bulk = bulk.cells(bulk.run(stage, seconds=profile.bulk_seconds, reps=profile.bulk_reps))

    def item3() -> None:
        results.time_wait_entries = memory.time_wait_entries(stage)
        results.memory = memory.run(stage, levels=profile.memory_levels)

    def item4() -> None:
        results.failover = failover.cycles(stage, profile.pulls)

    def item5() -> None:
        results.watchdog = failover.watchdog_cost(stage, profile.watch_window)

    _item(results, "item 3 (memory)", narrator, item3)  # first, while the VPS is fresh
    _item(results, "item 1 (requests/s)", narrator, item1)
    _item(results, "item 2 (bulk)", narrator, item2)
    _item(results, "item 5 (watchdog cost)", narrator, item5)
    _item(results, "item 4 (failover)", narrator, item4)
    results.watchdog_steady_rss_kb = measure.rss_kb(stage.watchdog_pid) or None

    def item3b() -> None:
        results.footprint = footprint.measure_all(stage, profile.flood_connections, profile.flood_seconds)

    def item4b() -> None:  # last: it kills and restarts vpnoffload's processes
        results.soak = soak.soak(stage, profile.soak_pulls, profile.soak_minutes, profile.soak_every, narrator)

    _item(results, "item 3b (footprint)", narrator, item3b)
    _item(results, "item 4b (soak)", narrator, item4b)


def _missing_tools() -> list[str]:
    return [tool for tool in REQUIRED if shutil.which(tool) is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, 5 cable pulls, an 8-pull soak (about 7 minutes)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="the Markdown report to write")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument("--tunnel-web", type=int, metavar="SECONDS", choices=range(0, 31),
                        help="item 6's new-connection run per variant and repetition, 0: none "
                             "(full profile: 3, about 2.5 minutes in all; --quick: 0)")
    parser.add_argument("--verbose", "-v", action="store_true", help="show every vpnoffload command and its output")
    parser.add_argument("--from-json", type=Path, metavar="FILE",
                        help="measure nothing: rewrite the report from the raw results of an earlier --json")
    args = parser.parse_args(argv)
    narrator = Narrator(verbose=args.verbose)
    if args.from_json:
        results = load_results(args.from_json)
        write_report(results, args.out, narrator)
        return 0

    if os.geteuid() != 0:
        print("bench: needs root (network namespaces): run it as root", file=sys.stderr)
        return 2
    missing = _missing_tools()
    if missing:
        print(f"bench: missing tools: {', '.join(missing)} "
              "(apt-get install openvpn wrk nginx-light haproxy iperf3 conntrack)", file=sys.stderr)
        return 2

    profile = QUICK if args.quick else FULL
    if args.tunnel_web is not None:
        profile = dataclasses.replace(profile, tunnel_web_seconds=args.tunnel_web)
    # A SIGTERM tears the labs down like Ctrl-C does (the finally blocks run).
    signal.signal(signal.SIGTERM, _interrupt)
    scratch = Path(tempfile.mkdtemp(prefix="vpnoffload-bench-"))
    os.chmod(scratch, 0o755)  # nginx workers (nobody) read the home page from here
    start = time.monotonic()
    try:
        results = measure_all(profile, scratch, narrator)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results.total_seconds = time.monotonic() - start
    results.command = ".venv/bin/python -m bench.run" + (" --quick" if args.quick else "") + \
        (f" --tunnel-web {args.tunnel_web}" if args.tunnel_web is not None else "") + \
        (f" --out {args.out}" if args.out != Path("docs/benchmarks.md") else "")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    write_report(results, args.out, narrator)
    narrator.step(f"done in {results.total_seconds:.0f} s: {args.out}")
    for line in report.goal_lines(results):
        print(line)
    return 1 if results.errors else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def write_report(results: Results, out: Path, narrator: Narrator) -> None:
    """The Markdown report at ``out`` and its PNGs in ``out``'s img/ directory."""
    images = {}
    if plots.available():
        images = report.write_images(results, out.parent / "img")
    else:
        narrator.warn("matplotlib is not installed: the report has tables only (pip install matplotlib)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.render(results, {k: os.path.relpath(v, out.parent) for k, v in images.items()}))


def load_results(path: Path) -> Results:
    """Results back from the JSON that --json wrote."""
    data = json.loads(path.read_text())

    def many(cls: type, key: str) -> list | None:
        return None if data.get(key) is None else [cls(**item) for item in data[key]]

    profile = {k: tuple(v) if isinstance(v, list) else v for k, v in data["profile"].items()}
    results = Results(Profile(**profile), data["started"], data["machine"], data["command"])
    results.web, results.web_runs = many(web.Cell, "web"), many(web.Run, "web_runs")
    results.bulk, results.memory = many(bulk.Cell, "bulk"), many(memory.Sample, "memory")
    results.failover, results.watchdog = many(failover.Cycle, "failover"), many(failover.WatchdogCost, "watchdog")
    results.tunnel, results.tunnel_runs = many(tunnel.Cell, "tunnel"), many(tunnel.Run, "tunnel_runs")
    results.tunnel_facts = tunnel.Facts(**data["tunnel_facts"]) if data.get("tunnel_facts") else None
    if data.get("tunnel_web") is not None:  # runs from before it have none
        results.tunnel_web, results.tunnel_web_runs = many(tunnel.WebCell, "tunnel_web"), many(tunnel.WebRun, "tunnel_web_runs")
    for key in ("time_wait_entries", "conntrack_object_size", "watchdog_steady_rss_kb", "errors", "durations",
                "steal", "total_seconds"):
        setattr(results, key, data[key])
    results.footprint, results.soak = data.get("footprint"), data.get("soak")  # None in runs from before them
    return results


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return obj


if __name__ == "__main__":
    sys.exit(main())
