"""Issue 21 item 4 (and issue 23 item 2): a check ends within ``timeout`` as a whole, and a
round waits no longer than that for any one check. Real sockets, loopback only: a target
that trickles its answer one byte every 0.1 s, and one that accepts and says nothing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from vpnoffload.lean.snapshot import ConfigView
from vpnoffload.model import Check, Config, Home, Service, Tunnel, Vps, Watch
from vpnoffload.watch import health
from vpnoffload.watch.decide import ROUND_GRACE, Watchdog

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: " + b"x" * 200 + b"\r\n\r\n"


@pytest.fixture
def trickler() -> Iterator[int]:
    """Answers every connection with a valid head, one byte every 0.1 s (30 s for the whole head)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def one(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(1024)
                for byte in ANSWER:
                    if stop.wait(0.1):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                pass

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


def test_a_trickling_answer_ends_the_check_at_its_deadline(trickler: int) -> None:
    started = time.monotonic()
    result = health.probe("127.0.0.1", trickler, Check("http", "/"), 0.5)
    took = time.monotonic() - started
    # Per recv the old check waited 0.5 s each and got a byte every 0.1 s: 25 s for this head.
    assert took < 0.5 + 0.15, took
    assert (result.verdict, result.reason) == ("slow", health.BUSY)


def test_a_whole_head_in_time_is_read_to_its_end() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def answer() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 204 No Content\r\n")
            time.sleep(0.05)
            conn.sendall(b"Server: x\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        result = health.probe("127.0.0.1", srv.getsockname()[1], Check("http", "/"), 1.0)
    finally:
        srv.close()
    assert (result.verdict, result.detail) == ("up", "http 204")


def two_services(port_slow: int, port_dead: int) -> Config:
    return Config(
        vps=Vps(IPv4Address("203.0.113.10")),
        tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
        homes={"home": Home("home", IPv4Address("127.0.0.1"))},
        services={
            "slow": Service("slow", IPv4Address("203.0.113.10"), 80, "home", port_slow, check=Check("http", "/")),
            "web": Service("web", IPv4Address("203.0.113.10"), 81, "home", port_dead, fallback="page"),
        },
        watch=Watch(fall=1, rise=1, timeout=0.5),
    )


def test_a_trickling_service_does_not_hold_the_round(trickler: int) -> None:
    """The other service's home stops: it fails over in the first round, and the round ends on time."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port_dead = closed.getsockname()[1]
    closed.close()
    swaps: list[dict] = []
    dog = Watchdog(ConfigView.of(two_services(trickler, port_dead)), lambda active, flush: swaps.append(dict(active)))
    started = time.monotonic()
    dog.start({})
    assert time.monotonic() - started < 0.5 + ROUND_GRACE + 0.2
    assert swaps[-1] == {"slow": "home", "web": None}
    assert dog.status["slow"].reason == health.BUSY and dog.status["web"].reason == health.TARGET_REFUSED


def test_a_hung_check_is_a_verdict_on_its_own_service_only() -> None:
    """A prober that never returns (a check with no bound of its own) is cut at the round's deadline."""
    release = threading.Event()

    def prober(svc, home, cfg) -> health.Result:
        if svc.name == "slow":
            release.wait(10)
        return health.Result("down", 0.0, "connect: Connection refused", reason=health.TARGET_REFUSED)

    dog = Watchdog(ConfigView.of(two_services(1, 2)), lambda active, flush: None, prober)
    try:
        started = time.monotonic()
        dog.start({})
        took = time.monotonic() - started
    finally:
        release.set()
    assert took < 0.5 + ROUND_GRACE + 0.2, took
    assert dog.status["web"].reason == health.TARGET_REFUSED
    assert dog.status["slow"].active is None and "did not finish within 0.5 s" in dog.status["slow"].detail


class SynSock:
    """A non-blocking connect whose SYN is answered ``answer_after`` s after it is sent (None: lost)."""

    def __init__(self, answer_after: float | None) -> None:
        self.answer_after, self.sent_at = answer_after, None
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        pass

    def connect_ex(self, where) -> int:
        self.sent_at = time.monotonic()
        return 115  # EINPROGRESS

    def answered(self) -> bool:
        return self.sent_at is not None and self.answer_after is not None and \
            time.monotonic() >= self.sent_at + self.answer_after

    def getsockopt(self, level, option) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def fake_select(monkeypatch) -> None:
    import select

    def select_(r, w, x, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready = [s for s in w if s.answered()]
            if ready:
                return [], ready, []
            time.sleep(0.005)
        return [], [s for s in w if s.answered()], []

    monkeypatch.setattr(select, "select", select_)


def test_a_lost_syn_in_the_visitor_path_check_gets_a_second_chance(monkeypatch) -> None:
    fake_select(monkeypatch)
    first, second = SynSock(None), SynSock(0.01)
    started = time.monotonic()
    result = health.forward_probe(lambda specs: [first, second], "203.0.113.10", 80, 0.5)
    assert result is not None and result.verdict == "up", result
    # The second SYN went out halfway to the deadline, not at once (a burst would take both).
    assert second.sent_at - started == pytest.approx(0.25, abs=0.05) and first.closed and second.closed


def test_a_port_that_drops_every_syn_is_down_at_the_deadline(monkeypatch) -> None:
    fake_select(monkeypatch)
    started = time.monotonic()
    result = health.forward_probe(lambda specs: [SynSock(None), SynSock(None)], "203.0.113.10", 80, 0.5)
    assert (result.verdict, result.timed_out) == ("down", True)
    assert 0.5 <= time.monotonic() - started < 0.6


def test_visitor_path_check_on_loopback() -> None:
    """Real non-blocking connects: a listener answers, a closed port refuses."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    made = lambda specs: [socket.socket(f, t, p) for f, t, p in specs]  # noqa: E731
    try:
        assert health.forward_probe(made, "127.0.0.1", port, 0.5).verdict == "up"
    finally:
        srv.close()
    refused = health.forward_probe(made, "127.0.0.1", port, 0.5)
    assert (refused.verdict, refused.reason) == ("down", health.TARGET_REFUSED)


# --- the visitor-path check's exact verdicts (written against mutmut's survivors)

class AnsweredSock(SynSock):
    """A connect answered by a refusal (``code``) after 10 ms; records how it was set up."""

    def __init__(self, code: int = 0, at_once: int | None = None) -> None:
        super().__init__(0.01)
        self.code, self.at_once, self.blocking = code, at_once, None

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag

    def connect_ex(self, where) -> int:
        super().connect_ex(where)
        return self.at_once if self.at_once is not None else 115  # EINPROGRESS

    def getsockopt(self, level, option) -> int:
        return self.code


def test_a_port_that_drops_every_syn_is_a_lost_connect_of_the_whole_timeout(monkeypatch) -> None:
    import select

    fake_select(monkeypatch)
    waits = []
    real = select.select
    monkeypatch.setattr(select, "select", lambda r, w, x, t: waits.append(t) or real(r, w, x, t))
    result = health.forward_probe(lambda specs: [SynSock(None), SynSock(None)], "203.0.113.10", 80, 0.5)
    assert (result.verdict, result.detail, result.timed_out, result.reason) == (
        "down", "connect: timed out", True, health.HOME_UNREACHABLE)
    assert 0.5 <= result.latency < 5  # the whole timeout, measured (not how fast this machine is)
    # It sleeps until the second connect, then until the deadline: no busy loop in between.
    assert len(waits) <= 4, waits


def test_the_visitor_path_connects_are_non_blocking_and_a_refusal_is_named(monkeypatch) -> None:
    import errno

    fake_select(monkeypatch)
    first = AnsweredSock(code=errno.ECONNREFUSED)
    result = health.forward_probe(lambda specs: [first, SynSock(None)], "203.0.113.10", 80, 0.5)
    assert first.blocking is False
    assert (result.verdict, result.detail, result.timed_out, result.reason) == (
        "down", "connect: Connection refused", False, health.TARGET_REFUSED)
    assert 0.0 < result.latency < 5


def test_a_connect_answered_at_once_decides_at_once(monkeypatch) -> None:
    import errno

    fake_select(monkeypatch)
    up = health.forward_probe(lambda specs: [AnsweredSock(at_once=0), SynSock(None)], "203.0.113.10", 80, 0.5)
    assert (up.verdict, up.detail) == ("up", "connected") and 0.0 <= up.latency < 5
    refused = health.forward_probe(lambda specs: [AnsweredSock(at_once=errno.ECONNREFUSED), SynSock(None)],
                                   "203.0.113.10", 80, 0.5)
    assert (refused.verdict, refused.detail, refused.reason) == ("down", "connect: Connection refused",
                                                                 health.TARGET_REFUSED)
