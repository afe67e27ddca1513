"""The failover watchdog's decision logic: count checks, decide swaps.

Kept free of kernel libraries: the long-running ``watch`` process imports only
this, ``health`` and ``fallback``. Applying a swap (python-iptables rules,
conntrack flush) is injected as ``swap`` and runs in a short-lived child
process (see ``vpnoffload.swap``), so python-iptables and pyroute2 never sit
in the watchdog's resident memory.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from vpnoffload import health
from vpnoffload.model import Config, Service

log = logging.getLogger("vpnoffload.watch")

State = Literal["forwarding", "fallback"]
Prober = Callable[[Service, Config], health.Result]
#: swap(fallback_names, changed_names) makes the kernel match; raises on failure.
Swapper = Callable[[frozenset[str], frozenset[str]], None]


@dataclass
class ServiceStatus:
    name: str
    state: State = "forwarding"
    healthy: bool = True
    fails: int = 0  # failed checks in a row
    passes: int = 0  # passed checks in a row
    last_check: float = 0.0
    latency: float | None = None
    detail: str = ""
    last_change: float = 0.0
    swaps: int = 0


def default_prober(service: Service, config: Config) -> health.Result:
    home = config.homes[service.home]
    return health.probe(str(home.address), service.target_port, service.check,
                        config.watch.timeout, host_header=service.hostname)


@dataclass
class Watchdog:
    config: Config
    swap: Swapper
    prober: Prober = default_prober
    clock: Callable[[], float] = time.time
    status: dict[str, ServiceStatus] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.config.services:
            self.status.setdefault(name, ServiceStatus(name=name))

    def reconfigure(self, config: Config) -> None:
        """Follow an edited config (after `service add` + `up vps`): keep what we know
        of services that stay, start new ones as forwarding (as `up vps` wrote
        them), forget removed ones. No swap: `up vps` already set the rules."""
        self.config = config
        self.status = {name: self.status.get(name) or ServiceStatus(name=name) for name in config.services}

    def fallback(self) -> frozenset[str]:
        return frozenset(n for n, s in self.status.items() if s.state == "fallback")

    def start(self, initial: Iterable[str] = ()) -> None:
        """Reconcile on start: one round of checks decides each state at once.

        ``initial`` is the set the rules were in (a restarted watchdog); the
        first round overrides it with the real health, without waiting for
        fall/rise counts, so a watchdog restarted mid-outage converges fast.
        """
        now = self.clock()
        results = self._probe_all()
        for name, result in results.items():
            st = self.status[name]
            self._record(st, result, now)
            st.state = "forwarding" if result.alive else "fallback"
            st.last_change = now
        before = frozenset(initial)
        after = self.fallback()
        self.swap(after, frozenset(self.config.services))
        for name in sorted(before ^ after):
            log.warning("%s: %s at start (%s)", name, self.status[name].state, self.status[name].detail)

    def tick(self) -> frozenset[str]:
        """One round of checks; returns the services whose state changed (already swapped)."""
        now = self.clock()
        results = self._probe_all()
        changed: set[str] = set()
        for name, result in results.items():
            st = self.status[name]
            self._record(st, result, now)
            if st.state == "forwarding" and st.fails >= self.config.watch.fall:
                changed.add(name)
            elif st.state == "fallback" and st.passes >= self.config.watch.rise:
                changed.add(name)
        if changed:
            self._flip(frozenset(changed), now)
        elif self._pending():
            getattr(self.swap, "prepare", lambda: None)()
        else:
            getattr(self.swap, "cancel", lambda: None)()
        return frozenset(changed)

    def _pending(self) -> bool:
        """A swap may be one check away: some service is failing, or recovering."""
        return any((s.state == "forwarding" and s.fails) or (s.state == "fallback" and s.passes)
                   for s in self.status.values())

    def _flip(self, changed: frozenset[str], now: float) -> None:
        target = {n: ("fallback" if self.status[n].state == "forwarding" else "forwarding") for n in changed}
        new_fallback = frozenset(n for n, s in self.status.items()
                                 if target.get(n, s.state) == "fallback")
        self.swap(new_fallback, changed)  # raises: states stay as they were, next tick retries
        for name, state in target.items():
            st = self.status[name]
            st.state = state  # type: ignore[assignment]
            st.last_change = now
            st.swaps += 1
            log.warning("%s: swapped to %s (%s)", name, state, st.detail)

    def _record(self, st: ServiceStatus, result: health.Result, now: float) -> None:
        st.last_check = now
        st.latency = result.latency
        st.detail = result.detail
        st.healthy = result.alive
        if result.alive:
            st.passes, st.fails = st.passes + 1, 0
        else:
            st.fails, st.passes = st.fails + 1, 0

    def _probe_all(self) -> dict[str, health.Result]:
        """Check every service at once, so N slow services cost one timeout, not N."""
        services = list(self.config.services.values())
        if len(services) <= 1:
            return {s.name: self.prober(s, self.config) for s in services}
        results: dict[str, health.Result] = {}
        threads = [threading.Thread(target=lambda s=s: results.__setitem__(s.name, self.prober(s, self.config)))
                   for s in services]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def snapshot(self) -> dict[str, object]:
        return {"updated": self.clock(), "services": [asdict(s) for s in self.status.values()]}


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
