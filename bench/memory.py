"""Item 3: memory on the VPS while visitors hold 1, 100 and 1000 idle connections.

A holder process in the visitor's namespace opens N connections through one
system, sends one keep-alive request on each (so every proxy really holds a
client and an upstream connection), reads the answers and then keeps them
all open, idle, until told to stop (or 120 s have passed). Meanwhile:

* vpnoffload: resident memory of its userspace (OpenVPN + watchdog +
  friendly-page server) and the VPS's conntrack entries (kernel memory,
  estimated with the nf_conntrack slab's object size);
* nginx reverse proxy and HAProxy: resident memory of all their processes,
  and the conntrack entries their connections make on the VPS as well.

RSS counts shared library pages in every process; PSS splits them, so it is
the fairer sum for a master and its workers. Both are reported.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench import measure
from bench.stage import HAPROXY_PORT, NGINX_PORT, VISIT_PORT, Stage

HOLD_LIMIT = 120.0  # the holder gives up by itself after this long
SETTLE = 1.0  # seconds between "all connections open" and reading memory
OPEN_WAIT = 60.0

TARGETS = (("vpnoffload", VISIT_PORT), ("nginx", NGINX_PORT), ("HAProxy", HAPROXY_PORT))

# Runs in the visitor's namespace. Prints "ready OPEN FAILED" once the connections
# are open and answered, then holds them until stdin closes or LIMIT s pass.
_HOLDER = r"""
import select, socket, sys, time
host, port, count, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
held, failed = [], 0
for _ in range(count):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(request)
        s.settimeout(5)
        if not s.recv(65536):
            raise OSError("closed")
        held.append(s)
    except OSError:
        failed += 1
print(f"ready {len(held)} {failed}", flush=True)
select.select([sys.stdin], [], [], limit)
"""


@dataclass
class Sample:
    system: str
    connections: int  # asked for
    opened: int
    rss_kb: int  # the system's userspace
    pss_kb: int
    conntrack: int
    conntrack_kb: float
    parts: dict[str, tuple[int, int]]  # (RSS, PSS) per component, KiB
    openvpn: tuple[int, int]  # (RSS, PSS) of the VPS's OpenVPN, which every system needs


def run(stage: Stage, *, levels: Sequence[int], systems: Sequence[str] | None = None) -> list[Sample]:
    samples: list[Sample] = []
    object_size = measure.conntrack_object_size()
    for name, port in TARGETS:
        if systems is not None and name not in systems:
            continue
        for count in levels:
            stage.narrator.step(f"item 3: {name}, {count} idle connections held open")
            samples.append(_one(stage, name, port, count, object_size))
    return samples


def _one(stage: Stage, name: str, port: int, count: int, object_size: int) -> Sample:
    holder = stage.lab.popen("visitor", sys.executable, "-c", _HOLDER, stage.lab.vps_address, str(port), str(count),
                             str(HOLD_LIMIT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = _read_ready(holder)
        _, opened, _failed = line.split()
        time.sleep(SETTLE)
        _forget_closed(stage)
        parts = _components(stage, name)
        rss = sum(measure.rss_kb(p) for pids in parts.values() for p in pids)
        pss = sum(measure.pss_kb(p) for pids in parts.values() for p in pids)
        tracked = stage.conntrack_count()
        openvpn = measure.sum_memory(measure.find_pids(stage.vps_ns, comm_is="openvpn"))
        return Sample(name, count, int(opened), rss, pss, tracked, tracked * object_size / 1024,
                      {part: measure.sum_memory(pids) for part, pids in parts.items()}, openvpn)
    finally:
        if holder.stdin:
            holder.stdin.close()
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait(timeout=5)



def _read_ready(holder: subprocess.Popen) -> str:
    assert holder.stdout is not None
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(holder.stdout, selectors.EVENT_READ)
        if not sel.select(OPEN_WAIT):
            raise RuntimeError(f"the holder did not open its connections within {OPEN_WAIT:g} s")
    line = holder.stdout.readline().strip()
    if not line.startswith("ready"):
        raise RuntimeError(f"the holder failed: {line!r}")
    return line


def _components(stage: Stage, name: str) -> dict[str, list[int]]:
    if name == "vpnoffload":
        return stage.vpnoffload_pids()
    comm = "nginx" if name == "nginx" else "haproxy"
    return {name: measure.find_pids(stage.vps_ns, comm_is=comm)}


def _forget_closed(stage: Stage) -> None:
    """Drop conntrack entries of closed connections (TIME_WAIT lingers 120 s), so the
    count is of the connections held now, not of the previous level's or the checks'."""
    for state in ("TIME_WAIT", "CLOSE"):
        stage.lab.exec("vps", "conntrack", "-D", "-p", "tcp", "--state", state, check=False, timeout=10)


def time_wait_entries(stage: Stage) -> int:
    """TIME_WAIT conntrack entries on the VPS now (the watchdog's checks leave some)."""
    out = stage.lab.exec("vps", "conntrack", "-L", "-p", "tcp", "--state", "TIME_WAIT", check=False, timeout=10)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("tcp"))
