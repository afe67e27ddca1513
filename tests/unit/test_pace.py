"""watch.pace: the tunnel's silence as doubt, the pace of rounds, and a silent round confirming a
lost check (with decide.Watchdog); fake clock and fake counters, exact values."""

from __future__ import annotations

import threading
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


def test_reset_takes_a_new_baseline() -> None:
    clock = Clock()
    s = pace.Silence(readings((10, 50), (12, 50), (14, 50), (16, 50)), clock, 0.1, 2)
    assert samples(s, clock, 0.06, 2) == [False, False]
    s.reset()
    assert samples(s, clock, 0.06, 2) == [False, False]  # baseline again, then 0.06 s of silence only


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
    dog = Watchdog(config(), Swapper(), prober=prober({}))
    assert pace.doubtful(dog.status.values()) is False
    dog.status["git"].homes["home"].fails = 1
    assert pace.doubtful(dog.status.values()) is True
    dog.status["git"].homes["home"].fails = 0
    dog.status["web"].homes["home"].healthy = False  # on the page: its return is watched closely
    assert pace.doubtful(dog.status.values()) is True


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


def test_confirms_needs_all_three() -> None:
    assert pace.confirms(True, True, True) is True
    for args in ((False, True, True), (True, False, True), (True, True, False)):
        assert pace.confirms(*args) is False


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


def test_a_lost_check_in_a_silent_tunnel_after_silent_visitors_is_fall_lost_checks() -> None:
    dog, swap = dog_of(LOST, [100, 100], fall=3)
    dog.silent = True
    assert dog.tick() == frozenset({"web"})
    assert swap.calls == [({"web": None}, frozenset({"web"}))]
    assert dog.silent is False and dog.quiet_round is True and dog.status["web"].homes["home"].fails == 3


def test_no_confirmation_without_silent_visitors_a_quiet_round_or_a_lost_check() -> None:
    # The visitors were answered before the round: one lost check is one.
    dog, swap = dog_of(LOST, [100, 100])
    assert dog.tick() == frozenset() and dog.status["web"].homes["home"].fails == 1 and swap.calls == []
    # Home kept sending during the round (a busy tunnel): excused as before, never confirmed.
    dog, swap = dog_of(LOST, [100, 140])
    dog.silent = True
    assert dog.tick() == frozenset() and dog.quiet_round is False
    assert dog.status["web"].homes["home"].fails == 0 and dog.status["web"].homes["home"].reason == health.BUSY
    # A refusal is an answer, not silence: counted once.
    dog, swap = dog_of(REFUSED, [100, 100])
    dog.silent = True
    assert dog.tick() == frozenset() and dog.status["web"].homes["home"].fails == 1
    # No counter (several homes, no device): no confirmation either.
    swap = Swapper()
    several = Watchdog(config(), swap, prober=lambda *a: LOST, activity=lambda: 5)
    several.silent = True
    assert several.tick() == frozenset() and several.quiet_round is False
    assert several.status["web"].homes["home"].fails == 1


def test_an_unhealthy_home_is_not_confirmed_back_or_further() -> None:
    dog, swap = dog_of(LOST, [100, 100, 100, 100])
    dog.status["web"].homes["home"].healthy = False
    dog.status["web"].active = None
    dog.silent = True
    dog.tick()
    assert dog.status["web"].homes["home"].fails == 1  # counted as it is, nothing added


def test_a_round_begun_in_doubt_prepares_once_when_its_checks_hang() -> None:
    release = threading.Event()
    called: list[str] = []

    def slow(*a) -> Result:
        release.wait(2)
        return Result("up", 0.3, "connected")

    dog = Watchdog(single(), Swapper(), prober=slow)
    dog.on_doubt = lambda: (called.append("doubt"), release.set())
    dog.silent = True
    dog.tick()
    assert called == ["doubt"]
    called.clear()
    dog2 = Watchdog(single(), Swapper(), prober=lambda *a: Result("up", 0.0, "connected"))
    dog2.on_doubt = lambda: called.append("doubt")
    dog2.silent = True
    dog2.tick()
    dog2.tick()  # not begun in doubt: inline, no call
    assert called == []


def test_by_default_doubt_warms_the_swapper() -> None:
    swap = Swapper()
    dog = Watchdog(single(), swap, prober=prober({}))
    dog.on_doubt()
    assert swap.prepared == 1
