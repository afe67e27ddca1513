"""When the next round of checks starts, and what the tunnel's silence adds to a lost check.

Periodic checks alone find a dead home no sooner than ``interval + fall × timeout``. The
visitors find it first: their packets go into the tunnel and nothing comes back. So, between
rounds, the watchdog reads the tunnel device's packet counters every :data:`POLL` s (two
sysfs reads; no packet is sent, no child is spawned) and:

- **doubt starts a round at once**: packets went into the tunnel for :data:`SILENCE` s with
  not one coming back (:class:`Silence`), or the device vanished (OpenVPN died): the next
  round starts now instead of after the interval. The counters are read during rounds too
  (:func:`watch_round`); while the tunnel is silent, the swap child is forked (so it has
  loaded its libraries by the time a swap is decided) and the page server started;
- **checks speed up while there is doubt** (:func:`doubtful`, :func:`delay`): while a home is
  failing, or answering again after a failure, or away while its service waits for it (on the
  page, or on a backup), rounds follow each other every :data:`DOUBT_INTERVAL` s, so a return
  is seen fast too; while all is well they stay ``watch.interval`` apart;
- **a silent tunnel confirms a lost check** (:func:`watch_round`): once nothing at all has come
  from the tunnel for ``SILENCE + timeout`` s (:func:`confirm_after`; 0.6 s by default) while at
  least :data:`MIN_SENT` packets went in (visitors' or the checks' own) and a check of the round
  is still unanswered, the round ends and its unanswered checks count as ``fall`` lost checks.
  A round that began just before the cable was pulled no longer costs a second timeout.

None of this can make a home fail over that answers anything: a slow home's kernel still
answers the SYNs, and a saturated tunnel still carries data (or ACKs) back, so the tunnel is
never silent; a lost check is still excused only as before (``decide``, ``watch.flows``). The
device's counters are the whole tunnel's, so they speak for a home only when there is one;
``watch.evidence`` applies the same :class:`Silence` to each home's own counts, and lets a
service's refusals hurry the next round (``hurry``: no doubt, so no swap child, no page server).

Lean like the rest of the watchdog: stdlib only, and nothing imported here.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~1 MB resident: annotations stay strings here
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from typing import Protocol

    #: () -> (packets sent into the tunnel, packets received from it); None: no such device.
    Counters = Callable[[], "tuple[int, int] | None"]

    class Readings(Protocol):
        """What a round and the wait between rounds read: :class:`Silence` (the tunnel's
        counters) or ``watch.evidence.Evidence`` (each home's own counts and refusals)."""

        clock: Callable[[], float]

        def sample(self) -> bool: ...
        def hurry(self) -> bool: ...
        def silent_for(self, now: float | None = None) -> float: ...
        def silent(self, home: str) -> float: ...

#: Seconds between rounds while there is doubt (at most ``watch.interval``).
DOUBT_INTERVAL = 0.1
#: Seconds between two readings of the tunnel's counters while waiting for the next round.
POLL = 0.05
#: Packets into the tunnel and none back for this long (seconds) is doubt.
SILENCE = 0.1
#: ... and at least this many packets sent meanwhile (one lost packet is not).
MIN_SENT = 2


def device_packets(device: str, which: str) -> int | None:
    """The network device's ``which`` counter (``tx_packets``, ``rx_packets``) so far; None when
    there is no such device."""
    try:
        with open(f"/sys/class/net/{device}/statistics/{which}") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def tunnel_counters(device: str) -> tuple[int, int] | None:
    """(tx, rx) packets of the tunnel device so far; None when there is no such device."""
    tx = device_packets(device, "tx_packets")
    rx = device_packets(device, "rx_packets") if tx is not None else None
    return None if tx is None or rx is None else (tx, rx)


class Silence:
    """Reads the counters; says how long packets have gone into the tunnel with none coming back."""

    def __init__(self, read: "Counters", clock: "Callable[[], float]", silence: float = SILENCE,
                 min_sent: int = MIN_SENT) -> None:
        self.read, self.clock, self.silence, self.min_sent = read, clock, silence, min_sent
        self._last: tuple[int, int] | None = None
        self._since: float | None = None  # when packets first went out with none back since
        self._sent_from = 0  # tx then

    def hurry(self) -> bool:
        """A reason, after :meth:`sample`, to start the next round now that is not doubt (no
        swap child, no page server): the tunnel's own counters never give one (see
        ``watch.evidence``'s refusals)."""
        return False

    def sample(self) -> bool:
        """One reading: True when there is doubt (unanswered for SILENCE s, or the device vanished)."""
        now, counters = self.clock(), self.read()
        last, self._last = self._last, counters
        if counters is None:
            self._since = None
            return last is not None  # it was there a moment ago: OpenVPN went
        if last is None or counters[1] != last[1]:
            self._since = None  # something came back (or a first reading): no doubt
            return False
        if self._since is None:
            if counters[0] == last[0]:
                return False  # nothing sent, nothing to answer
            self._since, self._sent_from = now, last[0]
        return self.silent_for(now) >= self.silence

    def silent_for(self, now: float | None = None) -> float:
        """Seconds the tunnel has been silent towards at least MIN_SENT packets (0: it is not),
        as of the last reading."""
        if self._since is None or self._last is None or self._last[0] - self._sent_from < self.min_sent:
            return 0.0
        return (self.clock() if now is None else now) - self._since

    def silent(self, home: str) -> float:
        """Seconds ``home`` has left packets unanswered: with the tunnel's counters alone, every
        home's is the tunnel's (as ``watch.evidence.Evidence.silent``, which has each home's own)."""
        return self.silent_for()


def doubtful(status: "Iterable[object]") -> bool:
    """Is there doubt (``decide.ServiceStatus`` values): a healthy home failing, an unhealthy one
    answering again, or a service kept from a home it prefers (on the page, or on a backup) by
    that home being unhealthy? A backup that is away while its service is home is no doubt."""
    for st in status:
        before_active = True
        for name, h in st.homes.items():  # type: ignore[attr-defined]
            if name == st.active:  # type: ignore[attr-defined]
                before_active = False
            if h.fails if h.healthy else (h.passes or before_active):
                return True
    return False


def delay(interval: float, doubt: bool) -> float:
    """Seconds from one round's start to the next one's."""
    return min(interval, DOUBT_INTERVAL) if doubt else interval


def confirm_after(timeout: float) -> float:
    """Seconds of a silent tunnel that confirm a lost check: as long as the trigger plus one check."""
    return SILENCE + timeout


def watch_round(silence: "Readings", threads: "Sequence[object]", deadline: float, confirm: float,
                on_doubt: "Callable[[], None]") -> bool:
    """While a round's checks run (until ``deadline``, on ``silence.clock``), read the counters
    every POLL s; call ``on_doubt`` once when they say there is doubt. True, at once, when the
    tunnel has been silent for ``confirm`` s while a check is still unanswered, or at the end
    if it was silent that long: the round's lost checks are then confirmed."""
    doubted = False
    while True:
        alive = [t for t in threads if t.is_alive()]  # type: ignore[attr-defined]
        left = deadline - silence.clock()
        if not alive or left <= 0:
            silence.sample()
            return silence.silent_for() >= confirm
        alive[0].join(min(POLL, left))  # type: ignore[attr-defined]
        if silence.sample() and not doubted:
            doubted = True
            on_doubt()
        if silence.silent_for() >= confirm and any(t.is_alive() for t in threads):  # type: ignore[attr-defined]
            return True


def wait(stop: object, seconds: float, silence: "Readings | None") -> bool:
    """Wait up to ``seconds`` (``stop``: a threading.Event ends it early), reading the tunnel's
    counters every POLL s; True as soon as they say there is doubt, or a reason to hurry."""
    if silence is None:
        stop.wait(seconds)  # type: ignore[attr-defined]
        return False
    left = seconds
    clock = silence.clock
    end = clock() + seconds
    while left > 0:
        if stop.wait(min(POLL, left)):  # type: ignore[attr-defined]
            return False
        if silence.sample() or silence.hurry():
            return True
        left = end - clock()
    return False
