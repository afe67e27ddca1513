"""A crowd of visitors through a change (an outage, a recovery): one script for the benchmark
(bench/failover.py, bench/soak.py) and the e2e tests (tests/e2e/conftest.py's ``crowd``).

Bounded: one new connection every INTERVAL s for at most LIMIT s, each with a 5 s timeout.
"""

from __future__ import annotations

import json
import sys

from vpnoffload.lab.netns import Lab

# Runs in the visitor's namespace: a new connection every INTERVAL s, each in its own
# thread, until STREAK requests in a row (by start time) got a reply matching WANT (a
# regex over "STATUS BODY", status 0 when nothing came) or LIMIT s passed. Sends
# HOST_HEADER as Host when it is not empty. Prints [started, finished, "STATUS BODY"]
# for every request, on the wall clock (shared with the caller).
CROWD = r"""
import http.client, json, re, sys, threading, time
host, port, want = sys.argv[1], int(sys.argv[2]), re.compile(sys.argv[3], re.S)
interval, limit, streak, host_header = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
headers = {"Host": host_header} if host_header else {}
results, threads, lock = [], [], threading.Lock()
def one():
    t0 = time.time()
    try:
        c = http.client.HTTPConnection(host, port, timeout=5)
        c.request("GET", "/", headers=headers)
        r = c.getresponse(); reply = f"{r.status} {r.read().decode('utf-8', 'replace')}"
    except Exception as e:
        reply = f"0 {type(e).__name__}"
    with lock:
        results.append([t0, time.time(), reply])
start = time.time()
while time.time() - start < limit:
    t = threading.Thread(target=one, daemon=True); t.start(); threads.append(t)
    time.sleep(interval)
    with lock:
        done = sorted(results)
    if len(done) >= streak and all(want.search(r[2]) for r in done[-streak:]):
        break
for t in threads:
    t.join(6)
with lock:
    print(json.dumps(sorted(results)))
"""


def run(lab: Lab, want: str, interval: float, limit: float, streak: int, port: int = 80,
        host_header: str = "") -> list[list]:
    """The crowd's requests, ``[started, finished, "STATUS BODY"]`` each, sorted by start."""
    out = lab.exec("visitor", sys.executable, "-c", CROWD, lab.vps_address, str(port), want, str(interval),
                   str(limit), str(streak), host_header, timeout=limit + 30)
    return json.loads(out.stdout)
