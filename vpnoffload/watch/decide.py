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
"""

from __future__ import annotations

import threading
import time

from vpnoffload.watch import health
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
#: Packets from the tunnel per check in one round that its own replies may account for; more
#: means visitors are being served, so a forward check that got no answer lost it to load.
QUIET_PACKETS = 32


class HomeHealth:
    __slots__ = ("healthy", "fails", "passes", "latency", "detail", "reason")

    def __init__(self, healthy: bool = True, fails: int = 0, passes: int = 0, latency: float | None = None,
                 detail: str = "", reason: str = "") -> None:
        self.healthy = healthy
        self.fails = fails  # failed checks in a row
        self.passes = passes  # passed checks in a row
        self.latency = latency
        self.detail = detail
        self.reason = reason  # health.REASONS of the last check ("" when it passed)

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
        if service.via != "dnat" or service.ipv6 or not namespace.available():
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
                 status: dict[str, ServiceStatus] | None = None, forward: ForwardProber | None = None) -> None:
        self.config = config
        self.swap = swap
        self.prober = prober
        self.forward = forward
        self.clock = clock
        #: Packets received from the tunnel so far (None: unknown). Used only with a
        #: single home box, where any traffic from the tunnel proves that home alive.
        self.activity = activity
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
        for name, results in self._checked().items():
            st = self.status[name]
            for home, result in results.items():
                self._record(st.homes[home], result)
                st.homes[home].healthy = result.alive
            st.active = self._choice(name)
            self._summarise(st, now)
            st.last_change = now
        target = self.active()
        flush = frozenset(n for n, a in target.items() if believed.get(n, self.config.services[n].home) != a)
        self.swap(target, flush)
        for name in sorted(flush):
            log.warning("%s: %s at start (%s)", name, self._where(name), self.status[name].detail)

    def tick(self) -> frozenset[str]:
        """One round of checks; returns the services whose target changed (already swapped)."""
        now = self.clock()
        for name, results in self._checked().items():
            st = self.status[name]
            for home, result in results.items():
                self._count(st.homes[home], result)
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

    def _checked(self) -> dict[str, dict[str, health.Result]]:
        """One round of checks, read together with the tunnel's traffic."""
        before = self._activity()
        probed = self._probe_all()
        sent = (self._activity() or 0) - before if before is not None else 0
        # The checks' own replies are a few packets each; far more is visitors' traffic, which
        # a blocked forward path would have stopped.
        checks = sum(len(results) for results in probed.values())
        visitors_flow = sent > QUIET_PACKETS * (checks + 1)
        if sent > 0:
            for results in probed.values():
                for home, result in results.items():
                    if result.verdict != "down" or not result.timed_out:
                        continue
                    if result.reason != health.PATH_BLOCKED:
                        # The check's packets were lost, but home kept sending through
                        # the tunnel meanwhile: a busy tunnel, not a dead home.
                        results[home] = health.Result("slow", result.latency, result.detail + " (home still sending)",
                                                      reason=health.BUSY)
                    elif visitors_flow:
                        # The forward check's SYN and ping were lost in a loaded tunnel (1000 visitors),
                        # not dropped by the VPS: home's replies to visitors still pour in. Only a
                        # few check replies (QUIET_PACKETS each) arriving is what a real block looks like.
                        results[home] = health.Result("slow", result.latency,
                                                      result.detail + " (visitors' traffic still flows)",
                                                      reason=health.BUSY)
        return probed

    def _activity(self) -> int | None:
        if self.activity is None or len(self.config.homes) != 1:
            return None
        return self.activity()

    def _apply(self, wanted: dict[str, str | None], changed: frozenset[str], now: float) -> None:
        # Flush a service's flows when its old target is dead or was the page;
        # moving back to a preferred home from a healthy backup keeps the
        # backup's established connections alive.
        flush = frozenset(n for n in changed if self._old_target_gone(n))
        self.swap(wanted, flush)  # raises: states stay as they were, the next tick retries
        for name in sorted(changed):
            st = self.status[name]
            st.active = wanted[name]
            st.state = "forwarding" if st.active else "fallback"
            st.last_change = now
            st.swaps += 1
            log.warning("%s: now %s (%s)", name, self._where(name), st.detail)

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

    def _count(self, hh: HomeHealth, result: health.Result) -> None:
        self._record(hh, result)
        if hh.healthy and hh.fails >= self.config.watch.fall:
            hh.healthy = False
        elif not hh.healthy and hh.passes >= self.config.watch.rise:
            hh.healthy = True

    @staticmethod
    def _record(hh: HomeHealth, result: health.Result) -> None:
        hh.latency, hh.detail, hh.reason = result.latency, result.detail, result.reason
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
        """Check every home of every service at once: N slow checks cost one timeout, not N."""
        jobs = [(svc, home) for svc in self.config.services.values() for home in svc.homes]
        results: dict[str, dict[str, health.Result]] = {svc.name: {} for svc in self.config.services.values()}

        def run(svc: Any, home: str) -> None:
            try:
                result = self.prober(svc, home, self.config)
                if self.forward is not None and result.alive:
                    visitor = self.status[svc.name].active == home
                    result = health.combine(result, self.forward(svc, home, self.config, visitor))
                results[svc.name][home] = result
            except Exception as exc:  # a check that breaks must not stop the watchdog: count it as failed
                results[svc.name][home] = health.Result("down", 0.0, f"check error: {exc}", reason=health.CHECK_ERROR)

        if len(jobs) == 1:
            run(*jobs[0])
            return results
        threads = [threading.Thread(target=run, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
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

    def snapshot(self) -> dict[str, object]:
        return {"updated": self.clock(), "services": [s.as_dict() for s in self.status.values()]}
