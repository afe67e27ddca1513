"""Passive evidence per home box and per service, from counts the VPS's kernel keeps.

``watch.pace`` reads the tunnel device's counters: the whole tunnel's traffic, so its
silence speaks for a home only when there is one, and a home whose web server stopped
is never silent (its kernel answers every SYN with a reset). This reads, every
``pace.POLL`` s and with the same :class:`pace.Silence` logic, the counts of
``lean.counters``, which the VPS's counting rules keep per home and per service:

- **each home's own silence**: packets to that home's tunnel address and none back from
  it for ``pace.SILENCE`` s is doubt, whatever the other homes send; so a pulled cable at
  one of several homes starts a round at once, and a round ends early (its lost checks
  confirmed) only for the homes silent that long (:meth:`Evidence.silent`);
- **refusals**: a TCP reset from a home on the connections of a service it serves (the
  service's connmark) only hurries the next round (:meth:`Evidence.hurry`): it ends the
  wait, but it is no doubt (no swap child is forked, no page server started: home servers
  reset connections in normal operation, bots and keep-alive races). At most one such
  early round per service per ``watch.interval``, unless that service's last check on that
  home failed: then a refused check fails at once and ``fall`` is reached within rounds
  ``pace.DOUBT_INTERVAL`` s apart.

Only silence (or the tunnel device going) is doubt. Evidence only starts rounds sooner
(and, for silence, confirms a check that got no answer): it never fails a home by itself.
A home that resets one bad request makes one round that passes; a slow one still answers
SYNs, so it is neither silent nor refusing.

The tunnel device's own reading stays (:attr:`Evidence.tunnel`): with one home it is
that home's silence as before, and with any number it says when the device went (OpenVPN
died). Lean: stdlib only.
"""

from __future__ import annotations

import os

from vpnoffload.lean import counters
from vpnoffload.watch import pace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    #: read(names) -> {name: packets so far}; a name missing: no such count (no rule, no table)
    Reader = Callable[[Iterable[str]], dict[str, int]]


class Evidence:
    """Reads every count in one go per :meth:`sample`; a ``pace.Readings``, as
    :class:`pace.Silence` is, for ``pace.wait``, ``pace.watch_round`` and ``decide``."""

    def __init__(self, read: "Reader", clock: "Callable[[], float]", config: "Callable[[], Any]",
                 tunnel: "pace.Silence | None" = None, watched: "Callable[[str], bool]" = lambda home: True,
                 failing: "Callable[[str, str], bool]" = lambda service, home: False) -> None:
        self.read, self.clock, self.config = read, clock, config
        self.tunnel = tunnel
        #: As :attr:`pace.Silence.silence`: how long unanswered packets take to be doubt.
        self.silence = pace.SILENCE
        #: Is this home's silence news (a home believed healthy)? A dead backup's checks go
        #: unanswered every round: that must not start the next one at once.
        self.watched = watched
        #: Did the last check of (service, home) fail? Its resets then hurry every round.
        self.failing = failing
        self._hurried: dict[str, float] = {}  # service -> when its resets last hurried a round
        self._config: object = None
        self._homes: dict[str, int] = {}
        self._served: dict[str, list[tuple[str, str]]] = {}
        self._names: list[str] = []
        self._counts: dict[str, int] = {}
        self._silence: dict[str, pace.Silence] = {}
        self._refusals: dict[str, int] = {}
        #: The services a home refused since the last :meth:`sample` (for the log and tests).
        self.refused: set[tuple[str, str]] = set()

    def _follow(self) -> None:
        config = self.config()
        if config is self._config:
            return
        self._config = config
        self._homes, self._served = counters.layout(config)
        self._names = [n for h, i in self._homes.items()
                       for n in (counters.home_in(i), counters.home_out(i), *(c for _, c in self._served[h]))]
        self._silence = {h: pace.Silence(self._reader(i), self.clock) for h, i in self._homes.items()}
        self._refusals = {}

    def _reader(self, number: int) -> "Callable[[], tuple[int, int] | None]":
        out, back = counters.home_out(number), counters.home_in(number)

        def read() -> tuple[int, int] | None:
            counts = self._counts
            return (counts[out], counts[back]) if out in counts and back in counts else None

        return read

    def sample(self) -> bool:
        """One reading of every count: True when there is doubt, a silent home or the tunnel
        device gone (see the module's docstring); refusals are kept for :meth:`hurry`."""
        self._follow()
        self._counts = self.read(self._names)
        doubt = self.tunnel.sample() if self.tunnel is not None else False
        for home, silence in self._silence.items():
            # A count that goes away (rules rewritten by `up vps`) is no news about the home.
            if silence.sample() and silence.read() is not None and self.watched(home):
                doubt = True
        self.refused = set()
        for home, services in self._served.items():
            for service, name in services:
                now, before = self._counts.get(name), self._refusals.get(name)
                if now is None:
                    self._refusals.pop(name, None)
                    continue
                self._refusals[name] = now
                if before is not None and now > before:
                    self.refused.add((service, home))
        return doubt

    def hurry(self) -> bool:
        """Do the refusals of the last :meth:`sample` start the next round now? For a service
        once per ``watch.interval``, or each time while its last check on that home failed."""
        now, interval = self.clock(), float(self.config().watch.interval)
        hurry = False
        for service, home in sorted(self.refused):
            last = self._hurried.get(service)
            if self.failing(service, home) or last is None or now - last >= interval:
                self._hurried[service] = now
                hurry = True
        self.refused = set()  # each refusal hurries at most once
        return hurry

    @property
    def gone(self) -> bool:
        """The tunnel device was not there at the last reading (OpenVPN just went)."""
        return self.tunnel is not None and self.tunnel._last is None

    def silent(self, home: str) -> float:
        """Seconds ``home`` has left packets unanswered, as of the last reading (the tunnel's
        own silence counts for a home only when it is the only one)."""
        own = self._silence.get(home)
        seconds = own.silent_for() if own is not None else 0.0
        if self.tunnel is not None and len(self._homes) == 1:
            seconds = max(seconds, self.tunnel.silent_for())
        return seconds

    def silent_for(self, now: float | None = None) -> float:
        """The longest any watched home has been silent (what ``pace.watch_round`` ends a round
        on): a dead backup, silent all along, must not cut the others' checks short."""
        return max((self.silent(h) for h in self._homes if self.watched(h)), default=0.0)


def tunnel_presence(device: "Callable[[], str]") -> "Callable[[], tuple[int, int] | None]":
    """A tunnel reading that only says whether the device is there (several homes: its
    counters are no one home's, but its going away still is news)."""

    def read() -> tuple[int, int] | None:
        try:
            os.stat(f"/sys/class/net/{device()}")
        except OSError:
            return None
        return 0, 0

    return read


def make(dog: "Any", device: "Callable[[], str]", clock: "Callable[[], float]",
         read: "Reader | None" = None) -> Evidence:
    """The watchdog's evidence: per-home counts, refusals, and the tunnel device (its
    counters with one home, its presence with several)."""
    def tunnel() -> tuple[int, int] | None:
        if len(dog.config.homes) == 1:
            return pace.tunnel_counters(device())
        return presence()

    def healthy(home: str) -> bool:
        return any(st.homes[home].healthy for st in dog.status.values() if home in st.homes)

    def failing(service: str, home: str) -> bool:
        st = dog.status.get(service)
        return st is not None and home in st.homes and st.homes[home].fails > 0

    presence = tunnel_presence(device)
    return Evidence(read or counters.Counters().read, clock, lambda: dog.config, pace.Silence(tunnel, clock),
                    healthy, failing)
