"""Passive evidence end to end (issue 26): the VPS's per-home and per-service counts
(lean/counters.py, watch/evidence.py) seen by a crowd.

- the home's web server stops with the tunnel up (its kernel resets every SYN): the
  resets on the service's own connections start a round at once, so the crowd gets the
  page promptly and few visitors are refused first; the other service of that home, still
  served, is not touched;
- one request reset by a home app that otherwise answers: a round, no swap;
- two homes, each with its own service, visitors to both: one home's cable pulled gives
  that home's service the page within about a second (its own silence, which the other
  home's traffic cannot hide), and the other home's service is never swapped;
- ``down vps`` takes the counting rules and their lists away exactly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import crowd as crowd_script
from bench import measure
from tests.budget import budget
from tests.e2e.conftest import cli
from tests.e2e.faultlab import API, WEB, Deployment, deployment, healthy_again, report, visit
from tests.e2e.labkit import start_watch, steady_visitors_argv, up_homes
from tests.helpers import seconds_until
from vpnoffload.lab.netns import Lab

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

#: A new connection this often (issue 26's crowd), and what counts as prompt.
EVERY = 0.05


@pytest.fixture(scope="module")
def dep(module_lab: Lab, module_sites: tuple[Path, Path],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(module_lab, module_sites, tmp_path_factory.mktemp("evidence"), services=(WEB, API)) as made:
        yield made


def swaps(dep: Deployment) -> dict[str, int]:
    return {s["name"]: s["swaps"] for s in dep.status().data["services"]}


def prompt_page(results: list[list], since: float) -> tuple[float | None, int]:
    """(seconds from ``since`` to the first 503 that came within ``budget().prompt`` of its
    connect, how many visitors got neither the page nor the site)."""
    prompt = budget().prompt
    pages = [done for started, done, reply in results if reply.startswith("503 ") and done - started <= prompt]
    neither = sum(1 for _, _, reply in results if not reply.startswith(("503 ", "200 ")))
    return (min(pages) - since if pages else None), neither


#: How many times the web server is stopped (each time started again and home healthy first).
STOPS = 3


def test_a_stopped_home_web_server_gives_a_crowd_the_page_promptly(dep: Deployment, capsys) -> None:
    pages: list[float | None] = []
    refused: list[int] = []
    for _ in range(STOPS):
        healthy_again(dep)
        before = swaps(dep)
        stopped = time.time()
        dep.stop_app(WEB[2])
        try:
            results = crowd_script.run(dep.lab, "^503 ", EVERY, budget().failover + 10, 5, port=WEB[1],
                                       host_header="blog.example.org")
            page, missed = prompt_page(results, stopped)
            api_swaps = swaps(dep)["api"]
        finally:
            dep.start_app(WEB[2])
        pages.append(page)
        refused.append(missed)
        assert api_swaps == before["api"], "the home's other service (still served) was swapped"
    healthy_again(dep)
    shown = ", ".join("none" if p is None else f"{p:.2f}" for p in pages)
    report(capsys, "evidence", f"home web server stopped {STOPS}x, crowd every {EVERY * 1000:.0f} ms: prompt page "
                               f"after {shown} s; visitors who got neither: {refused}")
    assert all(p is not None and p <= 1.0 for p in pages), f"no prompt page within 1 s of a stop: {pages}"
    assert max(refused) <= 10, f"visitors refused before the page: {refused}"


def test_one_request_reset_by_the_home_app_swaps_nothing(dep: Deployment, capsys) -> None:
    healthy_again(dep)
    before = swaps(dep)
    dep.set_mode(WEB[2], "reset-once")
    first = visit(dep.lab, WEB[1])
    time.sleep(2.0)  # rounds at the doubt pace and back; every check of them passes
    assert dep.mode_file(WEB[2]).read_text() == "ok", "the app reset nothing"
    assert swaps(dep) == before, f"one reset request swapped: {swaps(dep)} (before: {before})"
    assert visit(dep.lab, WEB[1]).kind == "home"
    report(capsys, "evidence", f"one request reset by the app ({first.kind}): 0 swaps")


# Runs in the VPS's namespace: what the watchdog's reader gets from the kernel for NAMES.
READ_COUNTS = r"""
import json, sys
from vpnoffload.lean import counters
print(json.dumps(counters.Counters().read(sys.argv[1:])))
"""
NAMES = ("vpnoffload-in1", "vpnoffload-out1", "vpnoffload-rst1-1")


def kernel_counts(lab: Lab) -> dict[str, int]:
    return json.loads(lab.exec("vps", sys.executable, "-c", READ_COUNTS, *NAMES).stdout)


def test_with_nftables_the_counts_are_read_over_netlink_and_a_stopped_server_shows_the_page(
        lab: Lab, sites: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("VPNOFFLOAD_FIREWALL", "nft")  # every CLI run, the watchdog and its swap child inherit it
    with deployment(lab, sites, tmp_path, services=(WEB,)) as made:
        healthy_again(made)
        listed = lab.exec("vps", "nft", "list", "counters", "table", "ip", "vpnoffload").stdout
        assert all(f"counter {n} " in listed for n in NAMES), listed
        assert lab.exec("vps", "ls", "/proc/net/xt_recent").stdout.split() == []  # nothing in the legacy tables
        first = kernel_counts(lab)
        assert visit(lab, WEB[1]).kind == "home"
        second = kernel_counts(lab)
        assert sorted(first) == sorted(NAMES) and second["vpnoffload-in1"] > first["vpnoffload-in1"] \
            and second["vpnoffload-out1"] > first["vpnoffload-out1"], (first, second)
        stopped = time.time()
        made.stop_app(WEB[2])
        try:
            results = crowd_script.run(lab, "^503 ", EVERY, budget().nft_failover + 10, 5, port=WEB[1],
                                       host_header="blog.example.org")
        finally:
            made.start_app(WEB[2])
        page, refused = prompt_page(results, stopped)
        assert kernel_counts(lab)["vpnoffload-rst1-1"] > second["vpnoffload-rst1-1"]
        healthy_again(made)
    report(capsys, "evidence", f"nft: home web server stopped: prompt page {page if page is None else round(page, 2)}"
                               f" s after the stop, {refused} visitor(s) got neither")
    assert page is not None and page <= 1.0, f"no prompt page within 1 s of the stop: {page}"
    assert "vpnoffload" not in lab.exec("vps", "nft", "list", "tables").stdout  # down took the counters too


# -- two homes, each with its own service -------------------------------------------

@pytest.fixture
def two_homes(lab: Lab, sites: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[Lab, Path, int]]:
    """``web`` (:80) on home only and ``blog`` (:81) on attic only, both up and watched."""
    vps_site, home_site = sites
    attic_site = vps_site.parent / "attic"
    attic_site.mkdir(mode=0o755)
    cli(lab, "vps", vps_site, "init", "--vps-address", lab.vps_address, "--tunnel-subnet", "198.51.100.0/24")
    cli(lab, "vps", vps_site, "pki", "issue", "attic")
    cli(lab, "vps", vps_site, "service", "add", "web", "--listen", "80", "--target", "8080", "--check", "http:/",
        "--homes", "home")
    cli(lab, "vps", vps_site, "service", "add", "blog", "--listen", "81", "--target", "8080", "--check", "http:/",
        "--homes", "attic")
    up_homes(lab, vps_site, {"home": home_site, "attic": attic_site})
    watch = start_watch(lab, vps_site, tmp_path / "watch.log")
    try:
        yield lab, vps_site, watch.pid  # (ip netns exec and the lean start both exec: the watchdog's pid)
    finally:
        watch.terminate()
        watch.wait(10)
        lab.plug_cable("home")
        cli(lab, "attic", attic_site, "down", "home", "--home", "attic", check=False)
        cli(lab, "home", home_site, "down", "home", check=False)
        cli(lab, "vps", vps_site, "down", "vps", check=False)


def status_of(lab: Lab, site: Path) -> dict[str, dict]:
    data = json.loads(cli(lab, "vps", site, "status", "--json", check=False).stdout)
    return {s["name"]: s for s in data["services"]}


def both_served(lab: Lab, site: Path) -> None:
    def served() -> tuple[bool, object]:
        st = status_of(lab, site)
        return all(s["state"] == "forwarding" and s["healthy"] for s in st.values()), st

    seconds_until("both served", served, 15, 0.2)


def recent_lists(lab: Lab) -> list[str]:
    return lab.exec("vps", "ls", "/proc/net/xt_recent").stdout.split()


def test_one_of_two_homes_pulled_its_service_alone_gets_the_page_within_a_second(two_homes, capsys) -> None:
    lab, site, _ = two_homes
    both_served(lab, site)
    time.sleep(3.0)  # a few quiet rounds at the normal pace
    before = {n: s["swaps"] for n, s in status_of(lab, site).items()}
    # Visitors to attic all along: the tunnel as a whole is never silent.
    steady = lab.popen("visitor", *steady_visitors_argv(lab, 81, 8, pause=0.1, timeout=3), stdout=subprocess.PIPE)
    time.sleep(1.0)
    pulled = time.time()
    lab.pull_cable("home")
    try:
        results = crowd_script.run(lab, "^503 ", EVERY, budget().failover + 10, 5, port=80,
                                   host_header="blog.example.org")
        page, neither = prompt_page(results, pulled)
        out, _ = steady.communicate(timeout=30)
    finally:
        lab.plug_cable("home")
    served, other = (int(n) for n in out.split())
    after = {n: s["swaps"] for n, s in status_of(lab, site).items()}
    report(capsys, "evidence", f"two homes, home's cable pulled with attic busy: web's prompt page "
                               f"{page if page is None else round(page, 2)} s after the pull ({neither} visitor(s) "
                               f"got neither); blog: {served} served, {other} not, swaps {after['blog'] - before['blog']}")
    assert page is not None and page <= 1.2, f"web: no prompt page within ~1 s of the pull: {page}"
    assert after["blog"] == before["blog"] and other == 0 and served > 0, (before, after, served, other)
    assert after["web"] == before["web"] + 1


#: Seconds of the idle window, and the issue's bound on the watchdog's CPU then (children included).
IDLE_SECONDS, IDLE_CPU_PERCENT = 10.0, 2.0


def test_reading_the_evidence_costs_little_at_idle(two_homes, capsys) -> None:
    lab, site, pid = two_homes
    both_served(lab, site)
    time.sleep(2.0)
    before, start = measure.cpu_times(pid), time.monotonic()
    time.sleep(IDLE_SECONDS)
    after, took = measure.cpu_times(pid), time.monotonic() - start
    percent = 100 * ((after.own - before.own) + (after.children - before.children)) / took
    report(capsys, "evidence", f"two homes idle: the watchdog used {percent:.2f} % of one core over {took:.0f} s "
                               "(children included)")
    assert percent <= IDLE_CPU_PERCENT


def test_down_removes_the_counting_rules_and_their_lists(two_homes) -> None:
    lab, site, _ = two_homes
    assert sorted(recent_lists(lab)) == ["vpnoffload-in1", "vpnoffload-in2", "vpnoffload-out1", "vpnoffload-out2",
                                         "vpnoffload-rst1-1", "vpnoffload-rst2-2"]
    cli(lab, "vps", site, "down", "vps")
    assert recent_lists(lab) == []
    saved = lab.exec("vps", "iptables-legacy-save").stdout
    assert not re.search(r"VPNOFFLOAD|recent", saved), saved
