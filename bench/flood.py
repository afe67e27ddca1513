"""The slow-connection flooder the footprint benchmark and tests/e2e/test_page_flood.py both run.

One copy, so the benchmark measures the flood the test asserts on. Bounded: COUNT
connections, LIMIT seconds, what the server drops reopened at most 50 every 20 ms.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Sequence

from vpnoffload.lab.netns import Lab

# Runs in the visitor's namespace: keep COUNT slow connections to HOST:PORT for LIMIT s,
# from the SOURCES (comma-separated) in turn; with TRICKLE one byte of a never-ending head
# every 2 s on each, without it nothing at all (a TLS handshake that never starts).
# Reopens what the server closed. Prints "open N" once N are open, "dropped" at the
# server's first drop, then a JSON summary at the end (LIMIT, or SIGINT: see stop()).
FLOODER = r"""
import json, resource, select, signal, socket, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores SIGINT
host, port, count, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sources, trickle = sys.argv[5].split(","), sys.argv[6] == "1"
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 256, count + 256))
head = b"GET / HTTP/1.1\r\nHost: blog.example.org\r\nX-Slow: " + b"a" * 100000
socks, byfd, opened, dropped, lifetimes, pending = {}, {}, 0, 0, [], 0
poller = select.poll()  # select() cannot watch descriptors above 1023
def open_one():
    global opened
    s = socket.socket(); s.bind((sources[opened % len(sources)], 0)); s.setblocking(False)
    s.connect_ex((host, port))
    socks[s] = [time.monotonic(), 0]; byfd[s.fileno()] = s; poller.register(s, select.POLLIN)
    opened += 1
start = time.monotonic()
for _ in range(count):
    open_one()
print(f"open {len(socks)}", flush=True)
next_byte = time.monotonic()
def flood():
    global next_byte, dropped, pending
    while time.monotonic() - start < limit:
        now = time.monotonic()
        if trickle and now >= next_byte:
            for s, st in list(socks.items()):
                try:
                    s.send(head[st[1]:st[1] + 1]); st[1] += 1
                except OSError:
                    pass
            next_byte = now + 2.0
        for fd, _ in poller.poll(200):
            s = byfd.get(fd)
            if s is None:
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # the server dropped it: reopen, the flood goes on
                lifetimes.append(time.monotonic() - socks.pop(s)[0]); dropped += 1
                poller.unregister(fd); del byfd[fd]; s.close(); pending += 1
                if dropped == 1:
                    print("dropped", flush=True)
        # Reopen what was dropped, at most 50 every 20 ms: a flood, but a bounded one.
        if pending and time.monotonic() - start < limit - 1:
            for _ in range(min(pending, 50)):
                open_one()
            pending -= min(pending, 50)
            time.sleep(0.02)
try:
    flood()
except KeyboardInterrupt:  # asked to end early: the summary all the same
    pass
# oldest_open: how long the oldest connection still open at the end had been held (a server that
# holds connections past its deadlines shows here, even in a flood shorter than that hold).
end = time.monotonic()
print(json.dumps({"opened": opened, "dropped": dropped, "open_at_end": len(socks), "sources": len(sources),
                  "longest_drop": max(lifetimes or [0]), "shortest_drop": min(lifetimes or [0]),
                  "oldest_open": max((end - st[0] for st in socks.values()), default=0)}), flush=True)
"""


def start(lab: Lab, port: int, count: int, seconds: float, sources: Sequence[str],
          trickle: bool) -> subprocess.Popen:
    """The flooder in the visitor's namespace (stdout and stderr piped, as text)."""
    return lab.popen("visitor", sys.executable, "-P", "-c", FLOODER, lab.vps_address, str(port), str(count),
                     str(seconds), ",".join(sources), "1" if trickle else "0", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)


def next_line(flooder: subprocess.Popen) -> str:
    """The flooder's next line ("open N", "dropped", the summary, or "" once it ended).
    Bounded by the flooder's own LIMIT: it prints its summary and exits then."""
    assert flooder.stdout is not None
    return str(flooder.stdout.readline()).strip()


def first_drop(flooder: subprocess.Popen) -> bool:
    """Wait until the server drops one of the flood's connections (at a cap at once, at a
    head or handshake deadline later): True then, False if the flood ended without one."""
    return next_line(flooder) == "dropped"


def summary(flooder: subprocess.Popen) -> dict:
    """The flooder's JSON summary (``{}`` if it printed none)."""
    return json.loads(next_line(flooder) or "{}")


def stop(flooder: subprocess.Popen) -> dict:
    """End the flood now (SIGINT; it still ends by itself at its LIMIT) and return its summary."""
    if flooder.poll() is None:
        flooder.send_signal(signal.SIGINT)
    return summary(flooder)
