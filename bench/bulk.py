"""Item 2: bulk TCP throughput to and from home, through the VPS and over the bare tunnel.

iperf3's server runs at home, in place of the listener that holds the port
the rest of the time (:meth:`Stage.iperf3_serving`). "via vpnoffload" is a client in the visitor's
namespace connecting to the VPS's public address, DNATed by vpnoffload's
``bulk`` service; "via HAProxy" the same client through HAProxy (TCP mode) on
the VPS; "raw tunnel" is a client on the VPS itself connecting to the home
box's tunnel address: the most the tunnel can carry, with no forwarding at
all. "upload" sends towards home, "download" (iperf3 -R) from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bench import measure, watchstate
from bench.stage import BULK_PORT, BULK_SERVICE, HAPROXY_BULK_PORT, Stage

PATHS = ("via vpnoffload", "via HAProxy", "raw tunnel")
DIRECTIONS = ("upload", "download")
ATTEMPTS = 2  # iperf3's server serves one test at a time; a run that collides is retried
FORWARDING_WAIT = 20.0


@dataclass
class Run:
    path: str
    direction: str
    rep: int
    mbit_s: float
    retransmits: int
    false_failovers: int  # watchdog swaps of the bulk service during the run (home was up)


@dataclass
class Cell:
    path: str
    direction: str
    mbit_s: float
    retransmits: int
    false_failovers: int
    runs: list[float] = field(default_factory=list)


def run(stage: Stage, *, seconds: int, reps: int) -> list[Run]:
    runs: list[Run] = []
    with stage.iperf3_serving():
        for direction in DIRECTIONS:
            for rep in range(reps):
                order = PATHS[rep % len(PATHS):] + PATHS[:rep % len(PATHS)]
                for path in order:
                    stage.narrator.step(f"item 2: {path}, {direction}, run {rep + 1}/{reps}")
                    runs.append(_one(stage, path, direction, seconds, rep))
    return runs


def _one(stage: Stage, path: str, direction: str, seconds: int, rep: int) -> Run:
    host, target, port = {
        "via vpnoffload": ("visitor", stage.lab.vps_address, BULK_PORT),
        "via HAProxy": ("visitor", stage.lab.vps_address, HAPROXY_BULK_PORT),
        "raw tunnel": ("vps", stage.home_tunnel, BULK_PORT),
    }[path]
    argv = ["iperf3", "-c", target, "-p", str(port), "-t", str(seconds), "-J",
            *(["-R"] if direction == "download" else [])]
    config = stage.sites.config("vps")
    error = ""
    for _ in range(ATTEMPTS):
        # A saturated tunnel can make the watchdog's check time out: wait until it forwards again.
        if not watchstate.wait_state(config, BULK_SERVICE, "forwarding", FORWARDING_WAIT):
            stage.narrator.warn("the watchdog still has the bulk service swapped out; measuring anyway")
        swaps = watchstate.swaps(config, BULK_SERVICE)
        out = stage.lab.exec(host, *argv, check=False, timeout=seconds + 30)
        swapped = watchstate.swaps(config, BULK_SERVICE) - swaps
        try:
            result = measure.parse_iperf3(out.stdout)
        except (ValueError, KeyError) as exc:
            error = (str(exc) or out.stderr.strip()) + (f" (the watchdog swapped the service {swapped}x meanwhile)"
                                                        if swapped else "")
            continue
        return Run(path, direction, rep, result.mbit_s, result.retransmits, swapped)
    raise RuntimeError(f"iperf3 {path} {direction} failed twice: {error}")


def cells(runs: Sequence[Run]) -> list[Cell]:
    out = []
    for path in PATHS:
        for direction in DIRECTIONS:
            group = [r for r in runs if r.path == path and r.direction == direction]
            if group:
                out.append(Cell(path, direction, measure.median([r.mbit_s for r in group]),
                                sum(r.retransmits for r in group), sum(r.false_failovers for r in group),
                                [r.mbit_s for r in group]))
    return out
