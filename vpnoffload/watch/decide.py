"""The watchdog's decision logic: count checks per home box, decide swaps.

Kept free of kernel libraries: the long-running ``watch`` process imports only
this, ``health`` and ``config``. Applying a swap (python-iptables rules,
conntrack flush) is injected as ``swap`` and runs in a short-lived child
process (see ``vpnoffload.watch.swap``), so python-iptables and pyroute2 never sit
in the watchdog's resident memory.

Each service has an ordered list of home boxes. Every home is checked; a home
turns unhealthy after ``fall`` failed checks in a row and healthy again after
``rise`` passed ones. New connections go to the first healthy home; when none
is healthy the service is on ``fallback`` (the friendly page or a fast reset).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from vpnoffload.watch import health
from vpnoffload.model import Config, Service

log = logging.getLogger("vpnoffload.watch")

State = Literal["forwarding", "fallback"]
Prober = Callable[[Service, str, Config], health.Result]
#: swap(active, flush): make the kernel send each service to ``active[name]``
#: (a home, or None for the fallback) and forget the flows of ``flush``; raises on failure.
Swapper = Callable[[Mapping[str, str | None], frozenset[str]], None]


@dataclass
class HomeHealth:
    healthy: bool = True
    fails: int = 0  # failed checks in a row
    passes: int = 0  # passed checks in a row
    latency: float | None = None
    detail: str = ""


@dataclass
class ServiceStatus:
    name: str
    active: str | None  # the home box new connections go to; None: fallback
    state: State = "forwarding"
    healthy: bool = True  # the last check of the active (or first) home passed
    last_check: float = 0.0
    latency: float | None = None
    detail: str = ""
    last_change: float = 0.0
    swaps: int = 0
    homes: dict[str, HomeHealth] = field(default_factory=dict)


def default_prober(service: Service, home: str, config: Config) -> health.Result:
    return health.probe(str(config.homes[home].address), service.target_port, service.check,
                        config.watch.timeout, host_header=service.hostname)


@dataclass
class Watchdog:
    config: Config
    swap: Swapper
    prober: Prober = default_prober
    clock: Callable[[], float] = time.time
    #: Packets received from the tunnel so far (None: unknown). Used only with a
    #: single home box, where any traffic from the tunnel proves that home alive.
    activity: Callable[[], int | None] | None = None
    status: dict[str, ServiceStatus] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reconfigure(self.config)

    def reconfigure(self, config: Config) -> None:
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
        home_sent = before is not None and (self._activity() or 0) > before
        if home_sent:
            for results in probed.values():
                for home, result in results.items():
                    if result.verdict == "down" and result.timed_out:
                        # The check's packets were lost, but home kept sending through
                        # the tunnel meanwhile: a busy tunnel, not a dead home.
                        results[home] = health.Result("slow", result.latency, result.detail + " (home still sending)")
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
        hh.latency, hh.detail = result.latency, result.detail
        if result.alive:
            hh.passes, hh.fails = hh.passes + 1, 0
        else:
            hh.fails, hh.passes = hh.fails + 1, 0

    def _summarise(self, st: ServiceStatus, now: float) -> None:
        shown = st.homes[st.active or self.config.services[st.name].home]
        st.state = "forwarding" if st.active else "fallback"
        st.healthy = shown.fails == 0
        st.last_check, st.latency, st.detail = now, shown.latency, shown.detail

    def _probe_all(self) -> dict[str, dict[str, health.Result]]:
        """Check every home of every service at once: N slow checks cost one timeout, not N."""
        jobs = [(svc, home) for svc in self.config.services.values() for home in svc.homes]
        results: dict[str, dict[str, health.Result]] = {svc.name: {} for svc in self.config.services.values()}

        def run(svc: Service, home: str) -> None:
            try:
                results[svc.name][home] = self.prober(svc, home, self.config)
            except Exception as exc:  # a check that breaks must not stop the watchdog: count it as failed
                results[svc.name][home] = health.Result("down", 0.0, f"check error: {exc}")

        if len(jobs) == 1:
            run(*jobs[0])
            return results
        threads = [threading.Thread(target=run, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def snapshot(self) -> dict[str, object]:
        return {"updated": self.clock(), "services": [asdict(s) for s in self.status.values()]}


def believed_targets(state: dict[str, object] | None) -> dict[str, str | None]:
    """Where the last watchdog left each service, from its state file."""
    services = (state or {}).get("services", [])
    return {s["name"]: s.get("active") for s in services if isinstance(s, dict) and "name" in s}  # type: ignore[union-attr]


def write_state(path: Path, data: dict[str, object]) -> None:
    """Atomically publish the watchdog's view for ``status`` (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def read_state(path: Path) -> dict[str, object] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
