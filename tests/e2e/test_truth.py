"""Issue 21 end to end: what ``status --json`` and its exit code say is what visitors get.

One lab and one deployment (two services, ``web`` :80 -> home :8080 and ``api`` :81 ->
home :8081, HTTP checks, the watchdog running) for the module; each test leaves it
healthy. At every settled moment (tests/e2e/faultlab.py: a visit, status, a visit with
the same outcome, each within 1 s) status must agree with the visitor: tunnel, home,
service state, health, freshness of the last check, exit code.

- five cable pulls: served -> the page -> served again, status agreeing at each moment,
  then 5 s in which every visitor is served and status stays forwarding;
- a block of only the service's forwarded port on the VPS (nftables forward chain at
  priority -10, and the same rule by iptables in FORWARD): the page within 10 s, status
  naming the blocked path, the site back within 10 s of removing it;
- ``api``'s target trickles its answer (one byte per 0.3 s) while ``web``'s server at home
  stops: ``web``'s visitors get the page within 3 s and its last check is younger than 2 s;
- ``lab demo``'s three status sections agree with what its visitor got, 10 runs of 10.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import cli
from tests.e2e.labkit import IPTABLES_BLOCK, IPTABLES_UNBLOCK, PORT_BLOCK, PORT_UNBLOCK
from tests.e2e.faultlab import (
    API,
    WEB,
    Deployment,
    deployment,
    moment,
    report,
    visit,
    wait_for,
)
from vpnoffload.lab.netns import Lab

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]


# ---------------------------------------------------------------- lab demo (its own lab: first, before the shared one)


def test_lab_demo_status_sections_agree_with_its_visitor(capsys) -> None:
    """The demo's own steps (run_up, show_status, fail_over, recover) ten times in one lab:
    each of the three status sections agrees with what the demo's visitor just got."""
    from tests.nslib import unique
    from vpnoffload.errors import PrerequisiteError
    from vpnoffload.lab.demo import fail_over, recover, show_status
    from vpnoffload.lab.narrate import RecordingNarrator
    from vpnoffload.lab.netns import check_prerequisites
    from vpnoffload.lab.sites import Sites
    from vpnoffload.lab.steps import run_up, teardown

    try:
        check_prerequisites()
    except PrerequisiteError as exc:
        pytest.skip(str(exc))
    lab = Lab(unique("demo"))
    sites = Sites.for_prefix(lab.prefix)
    n = RecordingNarrator()
    run_up(lab, sites, n)
    wrong: list[str] = []
    try:
        for run in range(1, 11):
            for when, step in (("while home is up", None), ("while home is down", fail_over),
                               ("once home is back", recover)):
                if step is not None:
                    step(lab, n)
                mark = len(n.events)
                show_status(lab, sites, n, True, when)
                text = "\n".join(t for k, t in n.events[mark:] if k == "output")
                if problems := _demo_disagrees(text, home_up=step is not fail_over):
                    wrong.append(f"run {run}, {when}: {'; '.join(problems)}\n{text}")
        report(capsys, "truth", f"lab demo: {30 - len(wrong)} of 30 status sections agree with the visitor")
        assert not wrong, "\n\n".join(wrong)
    finally:
        teardown(lab, sites, RecordingNarrator())


def _demo_disagrees(text: str, *, home_up: bool) -> list[str]:
    """What in the demo's status text contradicts a visitor just served from home (``home_up``)
    or just given the friendly page."""
    problems = []
    tunnel = re.search(r"^tunnel: (\S+)", text, re.M)
    home = re.search(r"^\s+home home \([^)]*\): (.*)$", text, re.M)
    row = re.search(r"^web\s.*$", text, re.M)
    if not (tunnel and home and row):
        return ["status text lacks the tunnel, home or web line"]
    if home_up:
        if tunnel.group(1) != "up":
            problems.append(f"visitor served from home, but 'tunnel: {tunnel.group(1)}'")
        if not home.group(1).startswith("connected"):
            problems.append(f"visitor served from home, but home is '{home.group(1)}'")
        if " forwarding " not in row.group(0) or "FAILING" in row.group(0):
            problems.append(f"visitor served from home, but the service row says '{row.group(0)}'")
    else:
        if tunnel.group(1) == "up":
            problems.append("visitor got the page (cable out), but 'tunnel: up'")
        if home.group(1).startswith("connected"):
            problems.append(f"visitor got the page (cable out), but home is '{home.group(1)}'")
        if " fallback " not in row.group(0) or "FAILING" not in row.group(0):
            problems.append(f"visitor got the page, but the service row says '{row.group(0)}'")
    return problems


# ---------------------------------------------------------------- one deployment for the rest


@pytest.fixture(scope="module")
def dep(module_lab: Lab, module_sites: tuple[Path, Path],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(module_lab, module_sites, tmp_path_factory.mktemp("truth"), (WEB, API)) as made:
        yield made


def agree(dep: Deployment, what: str, wrong: list[str] | None = None, **kw) -> None:
    """Status agrees with the visitor at this moment; with ``wrong``, note it there and go on
    (so one run shows every moment that disagrees), else fail now."""
    m = moment(dep, **kw)
    if m.problems and wrong is None:
        pytest.fail(f"{what}: {m.explain()}", pytrace=False)
    if m.problems:
        wrong.append(f"{what}: {m.explain()}")


def test_five_outage_cycles_status_agrees_with_visitors(healthy: Deployment, capsys) -> None:
    dep = healthy
    wrong: list[str] = []
    for cycle in range(1, 6):
        agree(dep, f"cycle {cycle}, served from home", wrong, tunnel=True)
        pulled = time.time()
        dep.lab.pull_cable()
        try:
            took_page, _ = wait_for(dep, "page", 10, since=pulled)
            agree(dep, f"cycle {cycle}, cable out, visitors on the page", wrong, tunnel=False)
        finally:
            plugged = time.time()
            dep.lab.plug_cable()
        took_back, _ = wait_for(dep, "home", 30, since=plugged)
        agree(dep, f"cycle {cycle}, cable back, served from home again", wrong, tunnel=True)
        report(capsys, "truth", f"cycle {cycle}: page {took_page:.1f} s after the pull, "
                                f"home {took_back:.1f} s after the plug")
        wrong += _stays_forwarding(dep, 5.0, cycle)
    assert not wrong, f"{len(wrong)} disagreement(s):\n" + "\n".join(wrong)


def _stays_forwarding(dep: Deployment, seconds: float, cycle: int) -> list[str]:
    """For ``seconds``: every new visitor served from home (else fail at once), and every
    status forwarding, healthy, exit 0 (else noted)."""
    wrong = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen = visit(dep.lab)
        assert seen.kind == "home", f"cycle {cycle}: after recovery a visitor got {seen}"
        st = dep.status()
        web = st.service(WEB[0])
        if not (st.code == 0 and web["state"] == "forwarding" and web["healthy"]):
            wrong.append(f"cycle {cycle}, after recovery: status exit {st.code}, tunnel up "
                         f"{st.data['tunnel']['up']}, web {web['state']} healthy={web['healthy']} "
                         f"({web.get('reason')})")
    return wrong


#: A block of only ``web``'s forwarded port on the VPS, as the issue states it (nft: a forward
#: chain at priority -10; iptables: FORWARD), and undoing it: test_forward_path.py's rules.
BLOCKS = {"nft-forward-prio-10": (PORT_BLOCK, PORT_UNBLOCK), "iptables-FORWARD": (IPTABLES_BLOCK, IPTABLES_UNBLOCK)}


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_one_port_block_on_the_vps_is_seen(block: str, healthy: Deployment, capsys) -> None:
    dep = healthy
    add, remove = BLOCKS[block]
    # iptables (the nft variant) makes `table ip filter` for its rule; removing the rule leaves the table.
    had_filter = dep.lab.exec("vps", "nft", "list", "table", "ip", "filter", check=False).returncode == 0
    blocked = time.time()
    for argv in add:
        dep.lab.exec("vps", *argv)
    try:
        took, _ = wait_for(dep, "page", 10, since=blocked)
        m = moment(dep, tunnel=True)
        assert not m.problems, m.explain()
        reason = m.status.service(WEB[0]).get("reason") or ""
        assert "blocked" in reason, f"status does not name the blocked path: {m.explain()}"
        text = cli(dep.lab, "vps", dep.vps_site, "status", check=False).stdout
        assert "blocked" in text, text
        # The other service's port is not blocked: it stays served from home.
        assert visit(dep.lab, API[1]).kind == "home"
    finally:
        for argv in remove:
            dep.lab.exec("vps", *argv, check=False)
        if not had_filter:
            dep.lab.exec("vps", "nft", "delete", "table", "ip", "filter", check=False)
    removed = time.time()
    back, _ = wait_for(dep, "home", 10, since=removed)
    agree(dep, "block removed, served again", tunnel=True)
    report(capsys, "truth", f"{block}: page {took:.1f} s after the block, home {back:.1f} s after removing it")


def test_a_trickling_service_does_not_blind_the_watchdog(healthy: Deployment, capsys) -> None:
    dep = healthy
    name, port, target = WEB
    dep.set_mode(API[2], "trickle")
    try:
        # api's visitors now get home's answer a byte at a time (or, if the product fails
        # api over, the page): either way, status says what they get.
        first = visit(dep.lab, API[1], limit=1.5)
        assert first.kind in ("trickle", "page"), first
        stopped = time.time()
        dep.stop_app(target)
        try:
            took, _ = wait_for(dep, "page", 3, since=stopped)
            report(capsys, "truth", f"web's server stopped while api trickles: page after {took:.1f} s")
            m = moment(dep, name, port, tunnel=True)
            assert not m.problems, m.explain()
            web = m.status.service(name)
            assert m.status.start - web["last_check"] < 2.0, web
        finally:
            dep.start_app(target)
    finally:
        dep.set_mode(API[2], "ok")
