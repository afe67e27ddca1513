"""watch.pace: the tunnel's silence as doubt, the pace of rounds, and a silent round confirming a
lost check (with decide.Watchdog); fake clock and fake counters, exact values."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import Swapper, prober
from tests.fakes import watchdog_config as config
from vpnoffload.model import Config
from vpnoffload.watch import health, pace
from vpnoffload.watch.decide import Watchdog
from vpnoffload.watch.health import Result


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def readings(*values: tuple[int, int] | None):
    """Counters that return ``values`` one per reading (the last one again after that)."""
    seq = list(values)

    def read() -> tuple[int, int] | None:
        return seq.pop(0) if len(seq) > 1 else seq[0]
    return read


def samples(silence: pace.Silence, clock: Clock, step: float, count: int) -> list[bool]:
    out = []
    for _ in range(count):
        out.append(silence.sample())
        clock.now += step
    return out


def test_packets_in_with_none_back_for_the_silence_is_doubt() -> None:
    clock = Clock(0.0)
    s = pace.Silence(readings((10, 50), (11, 50), (12, 50), (13, 50), (14, 50)), clock, silence=0.1, min_sent=2)
    # a baseline at 0; sent, seen at 0.0625, nothing back: doubt at 0.1875 (0.125 s, 2 packets)
    assert samples(s, clock, 0.0625, 5) == [False, False, False, True, True]


def test_an_answer_ends_the_doubt_and_idle_or_one_lost_packet_is_none() -> None:
    clock = Clock()
    answered = pace.Silence(readings((10, 50), (11, 50), (12, 50), (13, 51), (14, 51), (15, 51)), clock, 0.1, 2)
    assert samples(answered, clock, 0.05, 6) == [False, False, False, False, False, False]
    idle = pace.Silence(readings((10, 50)), clock, 0.1, 2)
    assert samples(idle, clock, 0.05, 10) == [False] * 10  # nothing sent: nobody waits
    one = pace.Silence(readings((10, 50), (11, 50)), clock, 0.1, 2)
    assert samples(one, clock, 0.05, 10) == [False] * 10  # a single packet unanswered is not enough


def test_a_vanished_device_is_doubt_once_and_no_device_never() -> None:
    clock = Clock()
    s = pace.Silence(readings((10, 50), None, None), clock, 0.1, 2)
    assert samples(s, clock, 0.05, 3) == [False, True, False]
    never = pace.Silence(lambda: None, clock, 0.1, 2)
    assert samples(never, clock, 0.05, 3) == [False, False, False]


def test_silent_for_counts_from_the_first_unanswered_packet_once_enough_went_in() -> None:
    clock = Clock(0.0)
    s = pace.Silence(readings((10, 50), (11, 50), (11, 50), (13, 50), (14, 51)), clock, 0.1, 2)
    s.sample()
    assert s.silent_for() == 0.0
    clock.now = 0.25
    s.sample()  # one sent, since 0.25
    clock.now = 0.5
    s.sample()
    assert s.silent_for() == 0.0  # only one packet so far
    clock.now = 0.75
    s.sample()  # three sent
    assert s.silent_for() == 0.5 and s.silent_for(1.0) == 0.75
    assert s.silent("home") == s.silent_for() == 0.5  # one tunnel: every home's silence is its
    clock.now = 1.0
    s.sample()  # an answer
    assert s.silent_for() == 0.0


def test_silence_counts_from_the_first_packet_sent_not_from_the_idle_time_before() -> None:
    clock = Clock(0.0)
    s = pace.Silence(readings((10, 50), (10, 50), (10, 50), (11, 50), (13, 50)), clock, 0.125, 2)
    assert samples(s, clock, 0.25, 4) == [False, False, False, False]  # idle, idle, then sent at 0.75
    assert s.sample() is True and s.silent_for() == 0.25  # at 1.0: 3 sent, silent since 0.75 (not 0)


def test_doubt_and_confirmation_begin_exactly_at_their_thresholds() -> None:
    clock = Clock(0.0)
    s = pace.Silence(readings((10, 50), (11, 50), (12, 50)), clock, 0.125, 1)
    assert samples(s, clock, 0.125, 3) == [False, False, True]  # since 0.125, at 0.25: exactly 0.125
    clock.now = 0.0
    sent = iter(range(10, 100))
    quiet = pace.Silence(lambda: (next(sent), 50), clock, 0.125, 1)
    quiet.sample()
    clock.now = 0.25
    quiet.sample()  # silent since 0.25
    clock.now = 0.75
    assert pace.watch_round(quiet, [], 1.0, 0.5, lambda: None) is True  # exactly 0.5 s at the end


def test_the_counters_are_the_devices_tx_and_rx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = tmp_path / "tun9" / "statistics"
    stats.mkdir(parents=True)
    (stats / "tx_packets").write_text("7\n")
    (stats / "rx_packets").write_text("3\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a: real_open(str(path).replace("/sys/class/net", str(tmp_path)), *a))
    assert pace.tunnel_counters("tun9") == (7, 3)
    (stats / "rx_packets").write_text("x\n")
    assert pace.tunnel_counters("tun9") is None
    assert pace.tunnel_counters("nope0") is None


def test_rounds_speed_up_only_while_there_is_doubt() -> None:
    assert pace.delay(0.5, False) == 0.5
    assert pace.delay(0.5, True) == pace.DOUBT_INTERVAL == 0.1
    assert pace.delay(0.05, True) == 0.05  # never slower than configured
    dog = Watchdog(config(backups=("attic",)), Swapper(), prober=prober({}))
    web, git = dog.status["web"], dog.status["git"]
    assert pace.doubtful(dog.status.values()) is False
    git.homes["home"].fails = 1  # a healthy home failing
    assert pace.doubtful(dog.status.values()) is True
    git.homes["home"].fails = 0
    web.homes["attic"].healthy, web.homes["attic"].fails = False, 7  # a backup away, its service home: no doubt
    assert pace.doubtful(dog.status.values()) is False
    web.homes["attic"].passes = 1  # ... answering again: doubt
    assert pace.doubtful(dog.status.values()) is True
    web.homes["attic"].passes = 0
    web.homes["home"].healthy, web.homes["home"].fails, web.active = False, 3, "attic"  # waits for its first home
    assert pace.doubtful(dog.status.values()) is True
    web.active = None  # on the page: its return is watched closely
    web.homes["home"].fails = 0
    assert pace.doubtful(dog.status.values()) is True
    web.homes["home"].healthy, web.homes["attic"].healthy, web.homes["attic"].fails, web.active = True, True, 0, "home"
    assert pace.doubtful(dog.status.values()) is False


def test_the_wait_ends_early_on_doubt_or_stop() -> None:
    clock = Clock(0.0)

    class Stop:
        def __init__(self, at: int | None = None) -> None:
            self.calls: list[float] = []
            self.at = at

        def wait(self, seconds: float) -> bool:
            self.calls.append(round(seconds, 3))
            clock.now += seconds
            return self.at is not None and len(self.calls) >= self.at

    quiet = Stop()
    assert pace.wait(quiet, 0.125, pace.Silence(readings((1, 1)), clock, 0.1, 2)) is False
    assert quiet.calls == [0.05, 0.05, 0.025]
    doubt = Stop()
    # baseline, sent (since), 0.05 s, 0.1 s of silence with 3 sent: doubt at the fourth reading
    clock.now = 0.0
    assert pace.wait(doubt, 0.5, pace.Silence(readings((1, 1), (2, 1), (3, 1), (4, 1)), clock, 0.09, 2)) is True
    assert doubt.calls == [0.05, 0.05, 0.05, 0.05]
    stopped = Stop(at=1)
    assert pace.wait(stopped, 0.5, pace.Silence(readings((1, 1)), clock, 0.1, 2)) is False
    assert stopped.calls == [0.05]
    plain = Stop()
    assert pace.wait(plain, 0.5, None) is False and plain.calls == [0.5]


def test_a_silent_tunnel_confirms_after_the_trigger_and_one_timeout() -> None:
    assert pace.confirm_after(0.5) == pace.SILENCE + 0.5 == 0.6


class Thread:
    """A check's thread on a fake clock: alive until ``ends``; join advances the clock."""

    def __init__(self, clock: Clock, ends: float) -> None:
        self.clock, self.ends = clock, ends
        self.joins: list[float] = []

    def is_alive(self) -> bool:
        return self.clock.now < self.ends

    def join(self, timeout: float) -> None:
        self.joins.append(round(timeout, 3))
        self.clock.now = min(self.ends, self.clock.now + timeout) if self.is_alive() else self.clock.now


def test_a_round_in_a_silent_tunnel_ends_once_silence_confirms() -> None:
    clock = Clock(0.0)
    sent = iter(range(10, 100))
    s = pace.Silence(lambda: (next(sent), 50), clock, 0.1, 2)
    s.sample()  # before the round: a baseline
    check = Thread(clock, ends=0.7)
    doubts: list[float] = []
    assert pace.watch_round(s, [check], deadline=0.7, confirm=0.6, on_doubt=lambda: doubts.append(round(clock.now, 3))) is True
    # silent since the first reading at 0.05; doubt at 0.15 (once); confirmed at 0.65, the check still out
    assert doubts == [0.15] and round(clock.now, 3) == 0.65 and len(check.joins) == 13


def test_a_round_that_is_answered_or_quiet_confirms_nothing() -> None:
    clock = Clock(0.0)
    answered = iter([(10, 50), (11, 50), (12, 51), (13, 52), (14, 53)] + [(15 + i, 54 + i) for i in range(30)])
    s = pace.Silence(lambda: next(answered), clock, 0.1, 2)
    s.sample()
    doubts: list[float] = []
    assert pace.watch_round(s, [Thread(clock, 0.5)], 0.7, 0.6, lambda: doubts.append(clock.now)) is False
    assert doubts == [] and clock.now == 0.5  # the check ended: the round too
    idle = pace.Silence(readings((10, 50)), clock, 0.1, 2)  # nothing sent, nothing to answer
    clock.now = 0.0
    assert pace.watch_round(idle, [Thread(clock, 5.0)], 0.7, 0.6, lambda: doubts.append(clock.now)) is False
    assert doubts == [] and round(clock.now, 3) == 0.7  # up to the deadline


def test_silence_that_lasts_past_finished_checks_still_confirms_them() -> None:
    clock = Clock(0.0)
    sent = iter(range(10, 100))
    s = pace.Silence(lambda: (next(sent), 50), clock, 0.1, 2)
    s.sample()
    clock.now = 0.5
    s.sample()  # silent since 0.5 ...
    clock.now = 1.2
    assert pace.watch_round(s, [Thread(clock, 1.0)], 2.0, 0.6, lambda: None) is True  # ... 0.7 s by the end


LOST = Result("down", 0.5, "connect: timed out", timed_out=True, reason=health.HOME_UNREACHABLE)
REFUSED = Result("down", 0.01, "connect: Connection refused", reason=health.TARGET_REFUSED)


def single(fall: int = 2) -> Config:
    from dataclasses import replace
    from ipaddress import IPv4Address, IPv4Network

    from vpnoffload.model import Home, Service, Tunnel, Vps, Watch

    return Config(vps=Vps(IPv4Address("203.0.113.10")), tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
                  homes={"home": Home("home", IPv4Address("198.51.100.2"))},
                  services={"web": Service("web", IPv4Address("203.0.113.10"), 80, "home", 8080, fallback="page")},
                  watch=replace(Watch(), fall=fall, rise=2))


def dog_of(result: Result, packets: list[int], fall: int = 2) -> tuple[Watchdog, Swapper]:
    counter = iter(packets)
    swap = Swapper()
    return Watchdog(single(fall), swap, prober=lambda *a: result, activity=lambda: next(counter)), swap


class Confirmed:
    """A Silence whose every round confirms (or not): ``watch_round`` is what is tested above."""

    def __init__(self, confirmed: bool) -> None:
        self.confirmed = confirmed

    def silent(self, home: str) -> float:
        """A confirmed round's home was silent all along (``pace.Readings.silent``)."""
        return float("inf") if self.confirmed else 0.0


def silenced(dog: Watchdog, confirmed: bool, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    seen: list[float] = []

    def fake_round(silence, threads, deadline, confirm, on_doubt):
        seen.append(confirm)
        for t in threads:
            t.join(2)
        return silence.confirmed

    monkeypatch.setattr(pace, "watch_round", fake_round)
    dog.silence = Confirmed(confirmed)  # type: ignore[assignment]
    return seen


def test_a_lost_check_in_a_silent_tunnel_is_fall_lost_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, swap = dog_of(LOST, [100, 100], fall=3)
    seen = silenced(dog, True, monkeypatch)
    assert dog.tick() == frozenset({"web"})
    assert swap.calls == [({"web": None}, frozenset({"web"}))]
    assert seen == [0.6] and dog.confirmed is True and dog.status["web"].homes["home"].fails == 3


def test_no_confirmation_without_silence_or_a_lost_check(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, swap = dog_of(LOST, [100, 100])
    silenced(dog, False, monkeypatch)
    assert dog.tick() == frozenset() and dog.status["web"].homes["home"].fails == 1 and swap.calls == []
    # A refusal is an answer: counted once, whatever the counters said.
    dog, swap = dog_of(REFUSED, [100, 100])
    silenced(dog, True, monkeypatch)
    assert dog.tick() == frozenset() and dog.status["web"].homes["home"].fails == 1
    # Home kept sending during the round (a busy tunnel): excused as before, never confirmed.
    dog, swap = dog_of(LOST, [100, 140])
    silenced(dog, True, monkeypatch)
    assert dog.tick() == frozenset() and dog.status["web"].homes["home"].reason == health.BUSY
    assert dog.status["web"].homes["home"].fails == 0
    # No silence watched (the loop gives none): no confirmation, and one check runs inline.
    dog, swap = dog_of(LOST, [100, 100])
    assert dog.silence is None and dog.tick() == frozenset() and dog.confirmed is False


def test_only_a_round_with_a_service_to_move_away_is_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, swap = dog_of(LOST, [100, 100, 100, 100])
    seen = silenced(dog, True, monkeypatch)
    dog.status["web"].homes["home"].healthy = False
    dog.status["web"].active = None  # on the page: nothing to confirm
    dog.tick()
    assert seen == [] and dog.confirmed is False and dog.status["web"].homes["home"].fails == 1


def test_by_default_doubt_warms_the_swapper() -> None:
    swap = Swapper()
    dog = Watchdog(single(), swap, prober=prober({}))
    dog.on_doubt()
    assert swap.prepared == 1
