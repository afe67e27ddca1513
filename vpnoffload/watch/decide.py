"""The watchdog's decision logic: count checks per home box, decide swaps.

Kept free of kernel libraries and of heavy stdlib modules (no dataclasses,
logging, json): the long-running ``watch`` process imports only this,
``health`` and the plain-data config snapshot. Applying a swap (python-iptables
rules, conntrack flush) is injected as ``swap`` and runs in a short-lived child
process (see ``vpnoffload.watch.swap``), so python-iptables and pyroute2 never
sit in the watchdog's resident memory.

``config`` is a ``vpnoffload.lean.snapshot.ConfigView``, in production and in
tests alike (``ConfigView.of(model_config)``): one shape.

Each service has an ordered list of home boxes. Every home is checked; a home
turns unhealthy after ``fall`` failed checks in a row and healthy again after
``rise`` passed ones. New connections go to the first healthy home; when none
is healthy the service is on ``fallback`` (the friendly page or a fast reset).

With a ``forward`` prober (the watchdog's probe namespace is there), each home's verdict
also needs a connection along the visitors' path to pass (``health.combine``):
to the service's public address, DNATed like a visitor's, for the home the
service is on; straight to the home's tunnel address (forwarded, not DNATed)
for the others and while on fallback, when the public address leads to the
page. So a home whose forward path is blocked is left, and taken back only
once the path works again. Every verdict keeps its ``reason`` for ``status``.
A lost visitor-path check is excused as load only by the service's own visitors still
being answered (``watch.flows``), never by a ping or by other traffic.

Each round ends by ``watch.timeout`` (+ :data:`ROUND_GRACE`), whatever one check does, and
its result is published (``publish``) in the same step as any swap it decides. A round also
ends once a home has been silent long enough, and that home's lost checks then count as
``fall`` of them (``watch.pace``, ``watch.evidence``: :attr:`Watchdog.silence`, :meth:`Watchdog._confirm`).
"""

from __future__ import annotations

import threading
import time

from vpnoffload.watch import health, pace
from vpnoffload.lean.say import Log
from vpnoffload.watchfile import believed_targets, read_state, write_state  # noqa: F401  (re-exported)

TYPE_CHECKING = False  # typing costs ~1 MB resident (it imports re): annotations stay strings here
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, Literal

    State = Literal["forwarding", "fallback"]
    Prober = Callable[[Any, str, Any], health.Result]
    #: forward(service, home, config, visitor): the check along the visitors' path (None: no evidence);
    #: ``visitor``: connect to the public address (the service is on this home), else to the home's.
    ForwardProber = Callable[[Any, str, Any, bool], "health.Result | None"]
    #: swap(active, flush): make the kernel send each service to ``active[name]``
    #: (a home, or None for the fallback) and forget the flows of ``flush``; raises on failure.
    Swapper = Callable[[Mapping[str, str | None], frozenset[str]], None]

log = Log("vpnoffload.watch")
#: A round waits this long past ``watch.timeout`` for its checks (threads start and report back).
ROUND_GRACE = 0.2
#: At start, a lost visitor-path check's flows are read twice this far apart (there is no earlier round).
START_SETTLE = 0.3
#: ``vpnoffload.firewall.policy``'s connmark of a service: (position + 1) << MARK_SHIFT under
#: MARK_MASK, written here so the watchdog does not import the model; a unit test keeps them equal.
MARK_SHIFT, MARK_MASK = 20, 0x0FF00000


def service_mark(index: int) -> tuple[int, int]:
    """(value, mask) of the connmark of the service at ``index`` in the config."""
    return (index + 1) << MARK_SHIFT, MARK_MASK


def _unfinished(timeout: float) -> health.Result:
    """The verdict of a check that did not end by the round's deadline: no answer in time."""
    return health.Result("down", timeout, f"check did not finish within {timeout:g} s", timed_out=True,
                         reason=health.HOME_UNREACHABLE)


class HomeHealth:
    __slots__ = ("healthy", "fails", "passes", "latency", "detail", "reason", "answered", "last_answer")

    def __init__(self, healthy: bool = True, fails: int = 0, passes: int = 0, latency: float | None = None,
                 detail: str = "", reason: str = "") -> None:
        self.healthy = healthy
        self.fails = fails  # failed checks in a row
        self.passes = passes  # passed checks in a row
        self.latency = latency
        self.detail = detail
        self.reason = reason  # health.REASONS of the last check ("" when it passed)
        self.answered = False  # home answered this service's check through the tunnel in the last round
        self.last_answer: float | None = None  # when it last did (wall clock)

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


class ServiceStatus:
    __slots__ = ("name", "active", "state", "healthy", "last_check", "latency", "detail", "reason", "last_change",
                 "swaps", "homes")

    def __init__(self, name: str, active: str | None, state: State = "forwarding", healthy: bool = True) -> None:
        self.name = name
        self.active = active  # the home box new connections go to; None: fallback
        self.state: State = state
        self.healthy = healthy  # the last check of the active (or first) home passed
        self.last_check = 0.0
        self.latency: float | None = None
        self.detail = ""
        self.reason = ""  # why the shown home fails (health.REASONS), "" when it passes
        self.last_change = 0.0
        self.swaps = 0
        self.homes: dict[str, HomeHealth] = {}

    def as_dict(self) -> dict[str, object]:
        """The state file's (and ``status``'s) view of this service."""
        out: dict[str, object] = {name: getattr(self, name) for name in self.__slots__ if name != "homes"}
        out["homes"] = {h: hh.as_dict() for h, hh in self.homes.items()}
        return out


def default_prober(service: Any, home: str, config: Any) -> health.Result:
    return health.probe(str(config.homes[home].address), service.target_port, service.check,
                        config.watch.timeout, host_header=service.hostname)


def probe_namespace_prober(namespace: Any) -> ForwardProber:
    """The forward check from the watchdog's probe namespace (a ``watch.probe.ProbeNamespace``;
    see health.forward_probe).

    Only for IPv4 services DNATed by the VPS (proxied ones do not cross
    FORWARD, the probe namespace has no IPv6), and only while the namespace is
    there (``namespace.available()``: made, its link ours): otherwise None.
    """

    def forward(service: Any, home: str, config: Any, visitor: bool) -> health.Result | None:
        if service.via != "dnat" or service.ipv6 or service.proto != "tcp" or not namespace.available():
            return None
        address = str(config.homes[home].address)
        if visitor:
            # Where the DNAT rule matches: on a 1:1-NAT cloud the private address.
            arrives = service.local_address
            return health.forward_probe(namespace.sockets, arrives, service.listen_port,
                                        config.watch.timeout, address)
        return health.forward_probe(namespace.sockets, address, service.target_port, config.watch.timeout, address)

    return forward


class Watchdog:
    """Counts checks and decides swaps; ``tick`` is one round."""

    def __init__(self, config: Any, swap: Swapper, prober: Prober = default_prober,
                 clock: Callable[[], float] = time.time, activity: Callable[[], int | None] | None = None,
                 status: dict[str, ServiceStatus] | None = None, forward: ForwardProber | None = None,
                 flows: Any = None) -> None:
        self.config = config
        self.swap = swap
        self.prober = prober
        self.forward = forward
        #: ``watch.flows.FlowEvidence`` (None: a lost visitor-path check is never taken for load).
        self.flows = flows
        self._starting = False
        self._decided: tuple[dict[str, str | None], frozenset[str], float] | None = None
        #: OpenVPN's own client list, read by the loop each round (``lean.ovpn``; None: not read).
        self.openvpn: dict[str, object] | None = None
        #: Called right after every swap (the loop writes the state file): see ``_apply``.
        self.publish: Callable[[], None] = lambda: None
        self.clock = clock
        #: Packets received from the tunnel so far (None: unknown). Used only with a
        #: single home box, where any traffic from the tunnel proves that home alive.
        self.activity = activity
        #: The tunnel's silence (``watch.pace.Silence``; the loop's, read between rounds too).
        #: None: rounds are not watched, no lost check is confirmed. ``watch.evidence.Evidence``
        #: in the loop: every home's own counts and the services' refusals.
        self.silence: pace.Readings | None = None
        #: The last round ended with the tunnel silent for ``pace.confirm_after`` s (single home).
        self.confirmed = False
        #: Called once in a round while the tunnel is silent: the loop forks the swap child and
        #: starts the page server, so a swap decided at the end of the round is one step.
        self.on_doubt: Callable[[], None] = lambda: getattr(self.swap, "prepare", lambda: None)()
        self.status: dict[str, ServiceStatus] = status if status is not None else {}
        self.reconfigure(self.config)

    def reconfigure(self, config: Any) -> None:
        """Follow an edited config (after `service add` + `up vps`): keep what we know
        of services that stay, start new ones on their first home (as `up vps`
        wrote them), forget removed ones. No swap: `up vps` already set the rules."""
        self.config = config
        old = self.status
        self.status = {}
        for name, svc in config.services.items():
            st = old.get(name) or ServiceStatus(name=name, active=svc.home)
            st.homes = {h: st.homes.get(h) or HomeHealth() for h in svc.homes}
            if st.active is not None and st.active not in svc.homes:
                st.active = svc.home
            self.status[name] = st

    def fallback(self) -> frozenset[str]:
        return frozenset(n for n, s in self.status.items() if s.active is None)

    def active(self) -> dict[str, str | None]:
        return {n: s.active for n, s in self.status.items()}

    def start(self, believed: Mapping[str, str | None] | None = None) -> None:
        """Reconcile on start: one round of checks decides each service at once.

        ``believed`` is where the rules send each service now (from the last
        state file; without one, `up vps` left every service on its first
        home). Only services whose target changes have their flows flushed, so
        restarting a watchdog never cuts healthy connections.
        """
        now = self.clock()
        believed = dict(believed or {})
        for name, st in self.status.items():
            # Where the rules send it now: the checks of this round ask as that implies
            # (the visitors' path on the home it is on, no excuse for a home it is not on).
            if name in believed and (believed[name] is None or believed[name] in st.homes):
                st.active = believed[name]
        self._starting = True
        try:
            checked = self._checked()
        finally:
            self._starting = False
        for name, results in checked.items():
            st = self.status[name]
            for home, result in results.items():
                self._record(st.homes[home], result, now)
                st.homes[home].healthy = result.alive
            st.active = self._choice(name)
            self._summarise(st, now)
            st.last_change = now
        target = self.active()
        flush = frozenset(n for n, a in target.items() if believed.get(n, self.config.services[n].home) != a)
        self.swap(target, flush)
        self.publish()
        for name in sorted(flush):
            log.warning("%s: %s at start (%s)", name, self._where(name), self.status[name].detail)

    def tick(self) -> frozenset[str]:
        """One round of checks; returns the services whose target changed (already swapped)."""
        now = self.clock()
        for name, results in self._checked().items():
            st = self.status[name]
            for home, result in results.items():
                self._confirm(home, st.homes[home], result)
                self._count(st.homes[home], result, now)
            self._summarise(st, now)
        wanted = {n: self._choice(n) for n in self.status}
        changed = frozenset(n for n, a in wanted.items() if a != self.status[n].active)
        if changed:
            self._apply(wanted, changed, now)
        elif self._pending():
            getattr(self.swap, "prepare", lambda: None)()
        else:
            getattr(self.swap, "cancel", lambda: None)()
        return changed

    def _confirm(self, home: str, hh: HomeHealth, result: health.Result) -> None:
        """A lost check of a healthy home in a silent tunnel is ``fall`` lost checks (``watch.pace``);
        with per-home evidence (``watch.evidence``), only of a home that was itself silent that long."""
        if hh.healthy and self.confirmed and result.timed_out and not result.alive and self._was_silent(home):
            hh.fails = max(hh.fails, self.config.watch.fall - 1)

    def _was_silent(self, home: str) -> bool:
        return self.silence is None or self.silence.silent(home) >= pace.confirm_after(float(self.config.watch.timeout))

    def _checked(self) -> dict[str, dict[str, health.Result]]:
        """One round of checks, read together with the tunnel's traffic and the visitors' flows."""
        before = self._activity()
        probed = self._probe_all()
        sent = (self._activity() or 0) - before if before is not None else 0
        for name, results in probed.items():
            for home, result in results.items():
                if result.reason == health.PATH_BLOCKED:
                    results[home] = self._own_flows(name, home, result)
                    continue
                self._forget_flows(name, home)
                if sent > 0 and result.verdict == "down" and result.timed_out and self.status[name].active == home:
                    # The direct check's packets were lost, but home kept sending through the
                    # tunnel meanwhile: a busy tunnel, not a dead home. Only to keep a home that
                    # serves (never to go back to one), and not an answer from it (status).
                    results[home] = health.Result("slow", result.latency, result.detail + " (home still sending)",
                                                  timed_out=True, reason=health.BUSY, answered=False)
        return probed

    def _own_flows(self, name: str, home: str, result: health.Result) -> health.Result:
        """A lost visitor-path check on the home a service is on is load, not a block, only
        when that service's own visitors are still being answered by that home (watch/flows.py):
        never because home answers a ping or another service's traffic flows. A refusal, or a
        check of a home the service is not on (no visitors there to ask), stands."""
        if self.flows is None or not result.timed_out or self.status[name].active != home:
            return result
        mark, mask = service_mark(list(self.config.services).index(name))
        address = str(self.config.homes[home].address)
        flowing = self.flows.replies_flowing(mark, mask, address)
        if flowing is None and self._starting:
            # At start one round decides at once, without fall: so a first reading has its second
            # one a moment later, rather than a restart under load sending visitors to the page.
            time.sleep(START_SETTLE)
            flowing = self.flows.replies_flowing(mark, mask, address)
        if flowing:
            return health.Result("slow", result.latency, result.detail + " (its visitors are still answered)",
                                 reason=health.BUSY)
        return result

    def _forget_flows(self, name: str, home: str) -> None:
        if self.flows is not None and name in self.config.services:
            self.flows.forget(service_mark(list(self.config.services).index(name))[0], str(self.config.homes[home].address))

    def _activity(self) -> int | None:
        if self.activity is None or len(self.config.homes) != 1:
            return None
        return self.activity()

    def _apply(self, wanted: dict[str, str | None], changed: frozenset[str], now: float) -> None:
        # Flush a service's flows when its old target is dead or was the page;
        # moving back to a preferred home from a healthy backup keeps the
        # backup's established connections alive.
        flush = frozenset(n for n in changed if self._old_target_gone(n))
        self._decided = (wanted, changed, now)
        try:
            self.swap(wanted, flush)  # raises: states stay as they were, the next tick retries
        except BaseException:
            if self._decided is None:
                raise  # the rules were committed (and published); only what came after failed
            self._decided = None
            raise
        self.committed()

    def committed(self) -> None:
        """The rules of the decision being swapped are in the kernel: take it as the state and
        publish it at once. The swapper calls this the moment the rules are committed (before
        it forgets old flows and exits), so status never shows a state the rules no longer
        have for longer than a file write; otherwise it runs right after the swap."""
        if self._decided is None:
            return
        wanted, changed, now = self._decided
        self._decided = None
        for name in sorted(changed):
            st = self.status[name]
            st.active = wanted[name]
            st.state = "forwarding" if st.active else "fallback"
            st.last_change = now
            st.swaps += 1
            log.warning("%s: now %s (%s)", name, self._where(name), st.detail)
        self.publish()

    def _old_target_gone(self, name: str) -> bool:
        old = self.status[name].active
        return old is None or not self.status[name].homes[old].healthy

    def _choice(self, name: str) -> str | None:
        st = self.status[name]
        return next((h for h in self.config.services[name].homes if st.homes[h].healthy), None)

    def _where(self, name: str) -> str:
        active = self.status[name].active
        return f"forwarding to {active}" if active else "on fallback"

    def _pending(self) -> bool:
        """A swap may be one check away: a healthy home is failing, or a dead one answering."""
        return any((h.healthy and h.fails) or (not h.healthy and h.passes)
                   for s in self.status.values() for h in s.homes.values())

    def _count(self, hh: HomeHealth, result: health.Result, now: float) -> None:
        self._record(hh, result, now)
        if hh.healthy and hh.fails >= self.config.watch.fall:
            hh.healthy = False
        elif not hh.healthy and hh.passes >= self.config.watch.rise:
            hh.healthy = True

    @staticmethod
    def _record(hh: HomeHealth, result: health.Result, now: float) -> None:
        hh.latency, hh.detail, hh.reason = result.latency, result.detail, result.reason
        hh.answered = result.home_answered
        if hh.answered:
            hh.last_answer = now
        if result.alive:
            hh.passes, hh.fails = hh.passes + 1, 0
        else:
            hh.fails, hh.passes = hh.fails + 1, 0

    def _summarise(self, st: ServiceStatus, now: float) -> None:
        shown = st.homes[st.active or self.config.services[st.name].home]
        st.state = "forwarding" if st.active else "fallback"
        st.healthy = shown.fails == 0
        st.last_check, st.latency, st.detail, st.reason = now, shown.latency, shown.detail, shown.reason

    def _probe_all(self) -> dict[str, dict[str, health.Result]]:
        """Check every home of every service at once: N slow checks cost one timeout, not N.

        The direct check and the visitors'-path check of a home run side by side, each
        bounded by ``watch.timeout`` as a whole; the round waits for them until that
        deadline (plus :data:`ROUND_GRACE`) and no longer. A check still running then is a
        verdict on its own home and service only ("did not finish"): a target that hangs or
        trickles cannot hold up the others' failover.
        """
        timeout = float(self.config.watch.timeout)
        jobs: list[tuple[str, str, str]] = []
        for svc in self.config.services.values():
            for home in svc.homes:
                jobs.append((svc.name, home, "direct"))
                if self.forward is not None:
                    jobs.append((svc.name, home, "forward"))
        found: dict[tuple[str, str, str], health.Result | None] = {}

        def run(name: str, home: str, kind: str) -> None:
            svc = self.config.services[name]
            try:
                if kind == "direct":
                    found[(name, home, kind)] = self.prober(svc, home, self.config)
                else:
                    visitor = self.status[name].active == home
                    found[(name, home, kind)] = self.forward(svc, home, self.config, visitor)  # type: ignore[misc]
            except Exception as exc:  # a check that breaks must not stop the watchdog: count it as failed
                found[(name, home, kind)] = health.Result("down", 0.0, f"check error: {exc}", reason=health.CHECK_ERROR)

        self.confirmed = False
        if len(jobs) == 1 and self.silence is None:
            run(*jobs[0])
        else:
            threads = [threading.Thread(target=run, args=job, daemon=True) for job in jobs]
            for t in threads:
                t.start()
            deadline = time.monotonic() + timeout + ROUND_GRACE
            if self.silence is not None and any(s.active is not None for s in self.status.values()):
                self.confirmed = pace.watch_round(self.silence, threads, deadline, pace.confirm_after(timeout),
                                                  self.on_doubt)
                if self.confirmed:
                    deadline = time.monotonic()  # what is still unanswered is lost: no need to wait for it
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        results: dict[str, dict[str, health.Result]] = {svc.name: {} for svc in self.config.services.values()}
        for name, home, kind in jobs:
            if kind != "direct":
                continue
            direct = found.get((name, home, kind)) or _unfinished(timeout)
            if self.forward is not None and direct.alive:
                forward = found.get((name, home, "forward"), _unfinished(timeout))
                direct = health.combine(direct, forward)
            results[name][home] = direct
        return results

    def page_needed(self) -> bool:
        """Should the friendly-page server run? While a page service is on fallback,
        or its active home is failing (so the page is up before the swap to it)."""
        for name, st in self.status.items():
            if not self.config.services[name].serves_page:
                continue
            if st.active is None or st.homes[st.active].fails:
                return True
        return False

    def homes_seen(self) -> dict[str, dict[str, object]]:
        """Per home box: did it answer any check through the tunnel in the last round, and when
        did it last answer (the live evidence ``status`` shows for the tunnel line)."""
        seen: dict[str, dict[str, object]] = {}
        for st in self.status.values():
            for home, hh in st.homes.items():
                entry = seen.setdefault(home, {"answered": False, "last_answer": None})
                entry["answered"] = bool(entry["answered"]) or hh.answered
                if hh.last_answer is not None and (entry["last_answer"] is None
                                                   or hh.last_answer > entry["last_answer"]):  # type: ignore[operator]
                    entry["last_answer"] = hh.last_answer
        return seen

    def snapshot(self) -> dict[str, object]:
        return {"updated": self.clock(), "interval": float(self.config.watch.interval), "homes": self.homes_seen(),
                "openvpn": self.openvpn, "services": [s.as_dict() for s in self.status.values()]}
