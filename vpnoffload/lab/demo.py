"""``vpnoffload lab demo``: the whole story, told in a namespace lab.

Both ends are set up with vpnoffload's own commands run inside the lab's
namespaces (``ip netns exec <prefix>-vps python -m vpnoffload ...``), exactly
the commands a user runs on two real machines, so the demo teaches the real
workflow. Every step is a plain function of a :class:`~vpnoffload.lab.netns.Lab`
and a :class:`Narrator`; tests run them with a recording narrator and a fake
lab. Only the narrator writes to the terminal (``rich`` is imported by
:class:`RichNarrator` alone, so ``vpnoffload --help`` stays fast).

The lab's files live in ``/run/vpnoffload-lab/<prefix>/`` (0755: OpenVPN drops
privileges and must still read the CRL and per-home files). Teardown runs the
user's ``down`` commands first (``up`` may have created the ``vpnoffload``
system user, which lives outside the namespaces), then deletes the namespaces
and the files, so the machine is left as it was found.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from vpnoffload.errors import ExitStatus
from vpnoffload.lab.netns import ROUTER, Lab
from vpnoffload.lab.narrate import Narrator

from vpnoffload.lab.sites import (
    KEPT_PAGE,
    OFFLINE_COPY_WAIT,
    SERVICE,
    DEMO_COMMANDS,
    FAILOVER_WAIT,
    HOME_MARKER,
    LabStepError,
    POLL_EVERY,
    RECOVERY_WAIT,
    Sites,
    describe_reply,
    sigterm_as_interrupt,
    tally,
    visitor_poll,
    vpnoffload,
)
from vpnoffload.lab.steps import teardown_after, how_to_poke, run_up, teardown


# ------------------------------------------------------------------ the demo's own steps


@dataclass
class DemoResult:
    failover: float | None = None  # seconds from cable pulled to the first friendly page
    recovery: float | None = None  # seconds from cable back to the first page from home


def show_status(lab: Lab, sites: Sites, n: Narrator, available: bool, when: str) -> None:
    n.section(f"What 'vpnoffload status' says {when}")
    if not available:
        n.warn("'vpnoffload status' is not available in this version: step skipped")
        return
    vpnoffload(lab, sites, "vps", "status", narrator=n, ok_codes=(int(ExitStatus.OK), int(ExitStatus.UNHEALTHY)))


def _cable(lab: Lab, n: Narrator, *, up: bool) -> None:
    """Show, then do, the one command that pulls (or plugs back) home's cable."""
    n.command("you", ["ip", "-n", lab.namespace(ROUTER), "link", "set", lab.home_cable, "up" if up else "down"])
    if up:
        lab.plug_cable()
    else:
        lab.pull_cable()


def _first_reply(
    lab: Lab, n: Narrator, *, want: int, marker: str, wait: float, failure: str, clock: Callable[[], float]
) -> float:
    """Seconds from now until a new visitor connection first gets ``want`` (and ``marker``)."""
    start = clock()
    with n.waiting(f"the visitor tries a new connection every {POLL_EVERY:g} s (at most {wait:g} s)"):
        poll = visitor_poll(lab, want=want, marker=marker, wait=wait)
    if poll["at"] is None:
        raise LabStepError(f"{failure} (visitor saw: {tally(poll)})")
    n.output(f"{poll['attempts']} new connections: {tally(poll)}")
    return float(poll["at"]) - start


def fail_over(
    lab: Lab, n: Narrator, *, wait: float = FAILOVER_WAIT, clock: Callable[[], float] = time.monotonic
) -> float:
    """Pull home's cable; seconds until a new visitor connection gets the friendly page (503)."""
    n.section("Pull home's cable: home vanishes from the internet")
    _cable(lab, n, up=False)
    elapsed = _first_reply(
        lab,
        n,
        want=503,
        marker="",
        wait=wait,
        clock=clock,
        failure=f"the friendly page did not appear within {wait:g} s of pulling the cable",
    )
    n.ok(f"failover: the visitor got the friendly page (HTTP 503) {elapsed:.1f} s after the cable was pulled")
    return elapsed


def wait_for_offline_copy(sites: Sites, n: Narrator, *, wait: float, clock: Callable[[], float] = time.monotonic,
                          sleep: Callable[[float], None] = time.sleep) -> bool:
    """Wait until the VPS keeps a copy of KEPT_PAGE (fetched from home through the tunnel)."""
    from vpnoffload.fallback.copies import summary

    deadline = clock() + wait
    while True:
        if summary(str(sites.vps_run), SERVICE).get("kept"):
            n.ok(f"the VPS keeps an offline copy of {KEPT_PAGE}, fetched from home through the tunnel")
            return True
        if clock() >= deadline:
            n.warn(f"no offline copy of {KEPT_PAGE} yet after {wait:g} s: the outage shows only the friendly page")
            return False
        sleep(0.2)


def show_kept_page(lab: Lab, n: Narrator) -> None:
    """During the outage: the kept page comes from the VPS's copy, everything else gets the friendly page."""
    url = f"http://{lab.vps_address}{KEPT_PAGE}"
    n.command("visitor", ["curl", url])
    status, body = lab.http_get("visitor", url, timeout=2)
    if status == 200:
        n.ok(f"{KEPT_PAGE} is served from the VPS's offline copy (HTTP 200) while home is away")
    else:
        n.warn(f"{KEPT_PAGE} got {describe_reply(status, body)} instead of its offline copy")


def recover(
    lab: Lab, n: Narrator, *, wait: float = RECOVERY_WAIT, clock: Callable[[], float] = time.monotonic
) -> float:
    """Plug the cable back; seconds until a new visitor connection is served from home again."""
    n.section("Plug the cable back in")
    _cable(lab, n, up=True)
    elapsed = _first_reply(
        lab,
        n,
        want=200,
        marker=HOME_MARKER,
        wait=wait,
        clock=clock,
        failure=f"the site did not come back from home within {wait:g} s of plugging the cable",
    )
    n.ok(f"recovery: the visitor was served from home again {elapsed:.1f} s after the cable came back")
    return elapsed


def outage_without_watchdog(lab: Lab, n: Narrator) -> None:
    """Without ``watch``: show what visitors get instead of the friendly page, then restore."""
    n.section("Pull home's cable (without the watchdog)")
    _cable(lab, n, up=False)
    n.command("visitor", ["curl", "--max-time", "2", f"http://{lab.vps_address}/"])
    status, body = lab.http_get("visitor", f"http://{lab.vps_address}/", timeout=2)
    n.warn(
        f"the visitor gets {describe_reply(status, body)}: this is what 'vpnoffload watch' replaces with a friendly page"
    )
    _cable(lab, n, up=True)
    _first_reply(
        lab,
        n,
        want=200,
        marker=HOME_MARKER,
        wait=RECOVERY_WAIT,
        clock=time.monotonic,
        failure=f"the site did not come back within {RECOVERY_WAIT:g} s of plugging the cable",
    )
    n.ok("cable back: the visitor is served from home again")


def run_demo(
    lab: Lab, sites: Sites, n: Narrator, *, keep: bool = False, commands: Collection[str] | None = None,
    copy_wait: float = OFFLINE_COPY_WAIT,
) -> DemoResult:
    """The whole story. The lab is always torn down afterwards (success, failure,
    Ctrl-C, SIGTERM) unless ``keep``; then it is left as it is, also after a failure.
    """
    commands = DEMO_COMMANDS if commands is None else commands
    has_status = "status" in commands
    result = DemoResult()
    with sigterm_as_interrupt():
        watching = run_up(lab, sites, n, commands, keep_on_failure=keep)
        try:
            show_status(lab, sites, n, has_status, "while home is up")
            if watching:
                copied = wait_for_offline_copy(sites, n, wait=copy_wait)
                result.failover = fail_over(lab, n)
                if copied:
                    show_kept_page(lab, n)
                show_status(lab, sites, n, has_status, "while home is down")
                result.recovery = recover(lab, n)
                show_status(lab, sites, n, has_status, "once home is back")
            else:
                outage_without_watchdog(lab, n)
            _summary(result, n)
        except BaseException as exc:
            if not keep:
                teardown_after(exc, lab, sites, n)
            raise
        if keep:
            how_to_poke(lab, sites, n, commands)
        else:
            teardown(lab, sites, n)
    return result


def _summary(result: DemoResult, n: Narrator) -> None:
    n.section("Summary")
    if result.failover is None:
        n.warn("no failover was measured: this version has no 'vpnoffload watch'")
        return
    n.ok(f"failover (cable pulled -> friendly page): {result.failover:.1f} s")
    n.ok(f"recovery (cable back -> served from home): {result.recovery:.1f} s")
