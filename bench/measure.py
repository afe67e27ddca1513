"""Reading numbers: /proc (memory, CPU time), load-tool output (wrk, iperf3), statistics.

Pure functions where possible, so the parsers can be checked on captured text.
Nothing here starts a process except :func:`namespace_pids`.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ processes


def namespace_pids(namespace: str) -> list[int]:
    """Pids of every process in network namespace ``namespace``."""
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True,
                         timeout=10, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def find_pids(namespace: str, *, comm_is: str | None = None, argv_has: Sequence[str] = ()) -> list[int]:
    """Processes in ``namespace`` whose name is ``comm_is`` and/or whose argv holds all of ``argv_has``."""
    found = []
    for pid in namespace_pids(namespace):
        if comm_is is not None and comm(pid) != comm_is:
            continue
        argv = cmdline(pid)
        if all(any(want in arg for arg in argv) for want in argv_has):
            found.append(pid)
    return sorted(found)


def rss_kb(pid: int) -> int:
    """Resident set size (VmRSS) in KiB; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size in KiB (shared pages split between sharers); 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class CpuTimes:
    """Seconds of CPU a process used itself and in children it has waited for."""

    own: float
    children: float


def cpu_times(pid: int) -> CpuTimes:
    """utime+stime and cutime+cstime of ``pid`` from /proc/PID/stat, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return CpuTimes((utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS)


def sum_memory(pids: Iterable[int]) -> tuple[int, int]:
    """(RSS, PSS) in KiB summed over ``pids``."""
    pids = list(pids)
    return sum(rss_kb(p) for p in pids), sum(pss_kb(p) for p in pids)


def conntrack_object_size() -> int:
    """Bytes per conntrack entry (the nf_conntrack slab's object size); 0 if unknown."""
    try:
        for line in Path("/proc/slabinfo").read_text().splitlines():
            parts = line.split()
            if parts and parts[0] == "nf_conntrack":
                return int(parts[3])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def system_cpu() -> tuple[int, int]:
    """(all CPU ticks, ticks stolen by the hypervisor) so far, summed over CPUs (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of all CPU time between two system_cpu() readings that the hypervisor took."""
    total = after[0] - before[0]
    return 100 * (after[1] - before[1]) / total if total > 0 else 0.0


def namespace_cpu_seconds(namespace: str) -> float:
    """CPU seconds (utime+stime) used so far by the processes now in ``namespace``."""
    total = 0.0
    for pid in namespace_pids(namespace):
        try:
            total += cpu_times(pid).own
        except (OSError, ValueError, IndexError):
            continue
    return total


# ------------------------------------------------------------------ wrk


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors of any kind
    non_2xx: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(text: str) -> WrkResult:
    """The numbers of one ``wrk --latency`` run. Raises ValueError on output without them."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.MULTILINE)
    if not (done and rps and p50 and p99):
        raise ValueError(f"unexpected wrk output:\n{text}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2) + done.group(3)) / 1000,
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        errors=sum(int(v) for v in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


# ------------------------------------------------------------------ iperf3


@dataclass
class IperfResult:
    mbit_s: float  # received goodput
    retransmits: int


def parse_iperf3(text: str) -> IperfResult:
    """Goodput (as received) and retransmits of one ``iperf3 -J`` TCP run."""
    data = json.loads(text)
    if "error" in data:
        raise ValueError(f"iperf3: {data['error']}")
    end = data["end"]
    return IperfResult(end["sum_received"]["bits_per_second"] / 1e6, int(end["sum_sent"].get("retransmits", 0)))


# ------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan
