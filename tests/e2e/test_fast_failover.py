"""Failover and recovery as a crowd sees them, and what must not fail over (issue 26).

One deployment (tests/e2e/faultlab.py: ``web`` :80 and ``api`` :81, HTTP checks, one home,
the watchdog with its default timing). A crowd (a new connection every 50 ms) must get the
friendly page *promptly* (within ``budget().prompt`` of its connect) after the cable is pulled,
and the site promptly after it is back, each within the failover/recovery budget; how fast
exactly is bench/soak.py's to show. A home app that answers only after 2 s and a bulk download
that fills the tunnel must cause no swap at all (``status --json``'s swap counts).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.budget import budget
from tests.e2e.conftest import prompt_crowd
from tests.e2e.faultlab import API, WEB, Deployment, deployment, healthy_again, report
from tests.e2e.labkit import steady_visitors_argv
from vpnoffload.lab.netns import Lab

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

#: How long each load case lasts (seconds): several rounds of checks at the default pace.
LOAD_SECONDS = 10.0

# Runs in the visitor's namespace: N downloads at once from HOST:PORT, each for at most SECONDS;
# prints the bytes received in all.
DOWNLOADS = r"""
import socket, sys, threading, time
host, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
got = []
def one():
    total, end = 0, time.monotonic() + seconds
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: blog.example.org\r\nConnection: close\r\n\r\n")
        while time.monotonic() < end:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            total += len(chunk)
        s.close()
    except OSError:
        pass
    got.append(total)
threads = [threading.Thread(target=one) for _ in range(n)]
for t in threads: t.start()
for t in threads: t.join(seconds + 10)
print(sum(got))
"""

@pytest.fixture(scope="module")
def dep(module_lab: Lab, module_sites: tuple[Path, Path],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(module_lab, module_sites, tmp_path_factory.mktemp("fast"), services=(WEB, API)) as made:
        yield made


@pytest.fixture
def healthy(dep: Deployment) -> Iterator[Deployment]:
    healthy_again(dep)
    yield dep
    for _, _, target in dep.services:
        dep.set_mode(target, "ok")
    dep.lab.plug_cable()
    healthy_again(dep)


def swaps(dep: Deployment) -> dict[str, int]:
    return {s["name"]: s["swaps"] for s in dep.status().data["services"]}


def test_a_crowd_gets_the_page_promptly_after_a_pull_and_the_site_after_the_return(healthy: Deployment,
                                                                                   capsys) -> None:
    lab, b = healthy.lab, budget()
    pulled = time.time()
    lab.pull_cable()
    try:
        page = prompt_crowd(lab, "^503 ", pulled, limit=b.failover + 10, prompt=b.prompt)
    finally:
        plugged = time.time()
        lab.plug_cable()
    back = prompt_crowd(lab, "^200 .*served from home", plugged, limit=b.recovery + 10, prompt=b.prompt)
    assert page is not None and page <= b.failover, f"no prompt page within {b.failover} s: {page}"
    assert back is not None and back <= b.recovery, f"no prompt site within {b.recovery} s: {back}"
    report(capsys, "fast", f"crowd every 50 ms: prompt page {page:.2f} s after the pull, "
                           f"prompt site {back:.2f} s after the return")


def test_a_home_that_answers_after_two_seconds_is_not_swapped_out(healthy: Deployment, capsys) -> None:
    before = swaps(healthy)
    healthy.set_mode(WEB[2], "slow")
    out = healthy.lab.exec("visitor", *steady_visitors_argv(healthy.lab, WEB[1], LOAD_SECONDS, marker="served from home"),
                           timeout=LOAD_SECONDS + 30)
    home, other = (int(n) for n in out.stdout.split())
    assert swaps(healthy) == before, "a slow home was swapped out"
    assert home > 0 and other == 0, f"visitors served from home: {home}, otherwise: {other}"
    report(capsys, "fast", f"home answering after 2 s for {LOAD_SECONDS:g} s: 0 swaps, {home} visitors served")


def test_a_bulk_download_that_fills_the_tunnel_swaps_nothing(healthy: Deployment, capsys) -> None:
    before = swaps(healthy)
    healthy.set_mode(API[2], "bulk")
    started = time.monotonic()
    out = healthy.lab.exec("visitor", sys.executable, "-c", DOWNLOADS, healthy.lab.vps_address, str(API[1]), "4",
                           str(LOAD_SECONDS), timeout=LOAD_SECONDS + 30)
    took = time.monotonic() - started
    received = int(out.stdout.strip())
    healthy.set_mode(API[2], "ok")
    assert received > 0, "the bulk download got nothing"
    assert swaps(healthy) == before, f"swaps under a bulk download: {swaps(healthy)} (before: {before})"
    report(capsys, "fast", f"bulk download {received * 8 / took / 1e6:.0f} Mbit/s for {took:.0f} s: 0 swaps")
