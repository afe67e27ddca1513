"""watch.health, verdict by verdict: the exact Result (verdict, detail, reason, timed_out) of
each way a check can end, on loopback sockets only. Written against the survivors of a
mutation run (docs/testing.md)."""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from tests.prereq import missing
from vpnoffload.model import Check
from vpnoffload.watch import health
from vpnoffload.watch.health import Echo, Result

HTTP = Check("http", "/health")


class Server:
    """A loopback listener that answers each connection with ``chunks`` (None: never answers),
    recording what it was sent."""

    def __init__(self, chunks: list[bytes] | None, backlog: int = 16, accept: bool = True,
                 hold: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.chunks, self.requests, self.done = chunks, [], threading.Event()
        self.held: list[socket.socket] = []
        self.hold = hold  # answer, then keep the connection open (the checker must not wait for EOF)
        if accept:
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                self.requests.append(conn.recv(4096).decode("latin-1"))
            except OSError:
                pass
            if self.chunks is None:
                self.held.append(conn)  # accepted, never answered
                continue
            for chunk in self.chunks:
                conn.sendall(chunk)
            if self.hold:
                self.held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self.done.set()
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def server() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for s in made:
        s.close()


def start(made: list[Server], *args, **kw) -> Server:
    made.append(Server(*args, **kw))
    return made[-1]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def verdict(result: Result) -> tuple:
    """(verdict, detail, reason, timed_out); the latency must be a real duration."""
    assert 0 <= result.latency < 5, result.latency
    return result.verdict, result.detail, result.reason, result.timed_out


def test_tcp_connected_is_up_with_no_reason(server) -> None:
    s = start(server, [b""])
    r = health.probe("127.0.0.1", s.port, Check("tcp"), 1.0)
    assert verdict(r) == ("up", "connected", "", False) and r.alive and 0 <= r.latency < 1.0


def test_refused_is_the_target_refusing() -> None:
    r = health.probe("127.0.0.1", closed_port(), Check("tcp"), 1.0)
    assert verdict(r) == ("down", "connect: Connection refused", health.TARGET_REFUSED, False) and not r.alive


@pytest.mark.parametrize(("line", "want"), [
    (b"HTTP/1.1 200 OK\r\n\r\n", ("up", "http 200", "", False)),
    (b"HTTP/1.0 499 Odd\r\n\r\n", ("up", "http 499", "", False)),
    (b"HTTP/1.1 500 Oops\r\n\r\n", ("down", "http 500", health.TARGET_ERROR, False)),
    (b"HTTP/1.1 503 Busy\r\n\r\n", ("down", "http 503", health.TARGET_ERROR, False)),
    (b"hello there\r\n", ("down", "http: not an HTTP answer: 'hello there'", health.TARGET_ERROR, False)),
    (b"HTTP/1.1\r\n", ("down", "http: not an HTTP answer: 'HTTP/1.1'", health.TARGET_ERROR, False)),
    (b"HTTP/1.1 OK 200\r\n", ("down", "http: not an HTTP answer: 'HTTP/1.1 OK 200'", health.TARGET_ERROR, False)),
    (b"", ("down", "http: closed without an answer", health.TARGET_ERROR, False)),
    (b"HTTP/1.1 204 No", ("up", "http 204", "", False)),  # closed before the line ended: what came counts
    (b"HTTP/1.1 200\r\n", ("up", "http 200", "", False)),  # no reason phrase
    (b"hello\r\nHTTP/1.1 200 OK\r\n", ("down", "http: not an HTTP answer: 'hello'", health.TARGET_ERROR, False)),
    (b"x" * 50 + b"\r\n", ("down", f"http: not an HTTP answer: {'x' * 40!r}", health.TARGET_ERROR, False)),
])
def test_http_answers(server, line: bytes, want: tuple) -> None:
    s = start(server, [line])
    assert verdict(health.probe("127.0.0.1", s.port, HTTP, 1.0)) == want


def test_the_status_line_may_come_in_pieces_and_is_read_up_to_1024_bytes(server) -> None:
    s = start(server, [b"HTTP/1.1 2", b"00 OK\r\nX: y\r\n\r\n"])
    assert verdict(health.probe("127.0.0.1", s.port, HTTP, 1.0))[:2] == ("up", "http 200")
    long = start(server, [b"HTTP/1.1 200 " + b"x" * 2000])
    r = health.probe("127.0.0.1", long.port, HTTP, 1.0)
    assert verdict(r)[:2] == ("up", "http 200")


@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nX: " + b"x" * 8200])
def test_the_whole_head_is_enough_without_waiting_for_more(server, head: bytes) -> None:
    """Home sends its answer head (up to the blank line, or 8 KiB of it) and keeps the connection
    open: the check needs no more (issue 21: the whole head, within the deadline)."""
    s = start(server, [head], hold=True)
    r = health.probe("127.0.0.1", s.port, HTTP, 1.0)
    assert verdict(r)[:2] == ("up", "http 200") and r.latency < 0.9


def test_a_status_line_without_the_rest_of_its_head_is_slow_at_the_deadline(server) -> None:
    s = start(server, [b"HTTP/1.1 200 OK\r\n"], hold=True)
    r = health.probe("127.0.0.1", s.port, HTTP, 0.5)
    assert verdict(r)[:3] == ("slow", "http: no answer in time", health.BUSY) and 0.5 <= r.latency < 0.9


def test_the_request_names_path_host_and_closes(server) -> None:
    s = start(server, [b"HTTP/1.1 200 OK\r\n\r\n"])
    health.probe("127.0.0.1", s.port, HTTP, 1.0, host_header="blog.example.org")
    health.probe("127.0.0.1", s.port, Check("http", "/"), 1.0)
    assert s.requests == [
        "GET /health HTTP/1.1\r\nHost: blog.example.org\r\nUser-Agent: vpnoffload-watch\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: vpnoffload-watch\r\nConnection: close\r\n\r\n",
    ]


def test_accepted_but_unanswered_is_slow_because_busy(server) -> None:
    s = start(server, None)
    r = health.probe("127.0.0.1", s.port, HTTP, 0.3)
    assert verdict(r) == ("slow", "http: no answer in time", health.BUSY, False) and r.alive
    assert 0.3 <= r.latency < 2


def test_a_connect_that_times_out_is_slow_when_home_answers_ping_else_down(server) -> None:
    """A full accept queue drops SYNs: the connect times out while the host is alive."""
    s = start(server, None, backlog=0, accept=False)
    fillers = []
    try:
        for _ in range(4):  # fill the (tiny) accept queue; later SYNs are dropped
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", s.port))
            fillers.append(c)
        if Echo.send("127.0.0.1") is None:
            missing("raw ICMP sockets (root) to tell a busy home from a dead one")
        r = health.probe("127.0.0.1", s.port, Check("tcp"), 0.3)
        assert verdict(r) == ("slow", "connect: timed out (home answers ping)", health.BUSY, True)
        # Without a ping (a socket made elsewhere and no raw socket) the same timeout means down.
        tcp = socket.socket()
        r = health._probe("127.0.0.1", s.port, "tcp", "/", 0.3, None, tcp, None, "127.0.0.1")
        assert verdict(r) == ("down", "connect: timed out", health.HOME_UNREACHABLE, True) and not r.alive
    finally:
        for c in fillers:
            c.close()


def test_connect_errors_are_told_apart() -> None:
    assert health._connect_reason(OSError(errno.ECONNREFUSED, "x")) == health.TARGET_REFUSED
    assert health._connect_reason(OSError(errno.ENETUNREACH, "x")) == health.TUNNEL_DOWN
    assert health._connect_reason(OSError(errno.ENODEV, "x")) == health.TUNNEL_DOWN
    assert health._connect_reason(OSError(errno.EHOSTUNREACH, "x")) == health.HOME_UNREACHABLE
    assert health._reason(TimeoutError()) == "timed out"
    assert health._reason(OSError(errno.EHOSTUNREACH, "No route to host")) == "No route to host"
    assert health._reason(OSError("plain")) == "plain"


def test_combine_blames_the_vps_only_when_home_answers_directly() -> None:
    up = Result("up", 0.1, "http 200")
    down = Result("down", 0.2, "connect: Connection refused", reason=health.TARGET_REFUSED)
    blocked = Result("down", 0.5, "connect: timed out", timed_out=True, reason=health.HOME_UNREACHABLE)
    assert health.combine(down, blocked) is down
    assert health.combine(up, None) is up
    assert health.combine(up, Result("slow", 0.4, "x", timed_out=True)) is up
    both = health.combine(up, blocked)
    assert verdict(both) == ("down", "http 200; along the visitors' path: connect: timed out",
                             health.PATH_BLOCKED, True)
    assert both.latency == 0.5 and health.combine(Result("up", 0.9, "x"), blocked).latency == 0.9


def test_forward_probe_asks_for_its_sockets_and_is_no_evidence_without_them(server) -> None:
    """Issue 21: two TCP sockets (the second SYN), no raw one: no ping goes with this check."""
    asked = []

    def fails(specs):
        asked.append(specs)
        raise OSError("no probe namespace")

    assert health.forward_probe(fails, "2001:db8::80", 80, 0.3, "198.51.100.2") is None
    assert asked == [[(socket.AF_INET6, socket.SOCK_STREAM, 0)] * 2]
    assert health.forward_probe(lambda specs: [None, None], "192.0.2.1", 80, 0.3, "x") is None
    s = start(server, [b""])
    r = health.forward_probe(lambda specs: [socket.socket(), None], "127.0.0.1", s.port, 1.0, "127.0.0.1")
    assert r is not None and verdict(r) == ("up", "connected", "", False)
    asked.clear()
    health.forward_probe(fails, "192.0.2.1", 80, 0.3, "x")
    assert asked[0][0] == (socket.AF_INET, socket.SOCK_STREAM, 0)


def test_icmp_checksum() -> None:
    assert health._checksum(struct.pack("!BBHHH", 8, 0, 0, 1, 1)) == 0xF7FD
    assert health._checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D  # RFC 1071's example
    assert health._checksum(b"\xff\xff\xff\xff") == 0x0000  # the carries folded back in
    assert health._checksum(bytes.fromhex("ffffffff0001")) == 0xFFFE  # ... twice


def test_an_echo_is_answered_only_by_its_own_reply() -> None:
    echo = Echo.send("127.0.0.1")
    if echo is None:
        missing("raw ICMP sockets (root) for the watchdog's ping")
    try:
        assert echo.answered(wait=2.0)
    finally:
        echo.close()
    other = Echo.send("127.0.0.1")
    assert other is not None
    try:
        # The same reply, seen by a check waiting for another identifier or another address.
        stranger = Echo(other.sock, other.address, (other.ident + 1) & 0xFFFF)
        assert not stranger.answered(wait=0.3)
    finally:
        other.close()
    third = Echo.send("127.0.0.1")
    assert third is not None
    try:
        assert not Echo(third.sock, "127.0.0.2", third.ident).answered(wait=0.3)
        assert not third.answered(wait=0.0) or True  # may already be there; never blocks
    finally:
        third.close()
    assert not Echo(third.sock, "127.0.0.1", third.ident).answered(wait=0.0)  # closed: False, no error


def test_echo_sequence_and_packet(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = []

    class Raw:
        def setblocking(self, flag: bool) -> None:
            assert flag is False

        def sendto(self, packet: bytes, where: tuple) -> None:
            sent.append((packet, where))

        def close(self) -> None:
            sent.append("closed")

    monkeypatch.setattr(Echo, "_seq", 4)
    # A random identifier (above 0x7fff: unsigned fields) and 8 random bytes of payload.
    monkeypatch.setattr(health.os, "urandom", lambda n: b"\x90\x05" if n == 2 else TOKEN)
    echo = Echo.send("198.51.100.2", Raw())  # type: ignore[arg-type]
    assert echo is not None and Echo._seq == 5 and echo.ident == 0x9005 and echo.seq == 5 and echo.token == TOKEN
    packet, where = sent[0]
    assert where == ("198.51.100.2", 0)
    kind, code, checksum, ident, seq = struct.unpack_from("!BBHHH", packet)
    assert (kind, code, ident, seq) == (8, 0, 0x9005, 5) and packet[8:] == TOKEN
    assert checksum == health._checksum(struct.pack("!BBHHH", 8, 0, 0, 0x9005, 5) + TOKEN)
    monkeypatch.setattr(Echo, "_seq", 0xFFFF)
    assert Echo.send("198.51.100.2", Raw()) is not None and Echo._seq == 0  # type: ignore[arg-type]

    class Refusing(Raw):
        def sendto(self, packet: bytes, where: tuple) -> None:
            raise OSError(errno.EPERM, "no")

    sent.clear()
    assert Echo.send("198.51.100.2", Refusing()) is None and sent == ["closed"]  # type: ignore[arg-type]


def test_results_compare_without_their_reason() -> None:
    a = Result("down", 0.1, "x", timed_out=True, reason=health.BUSY)
    assert a == Result("down", 0.1, "x", timed_out=True) and a != Result("down", 0.1, "x")
    assert a != Result("up", 0.1, "x", timed_out=True) and a != Result("down", 0.2, "x", timed_out=True)
    assert a != Result("down", 0.1, "y", timed_out=True) and a != ("down", 0.1, "x", True)
    assert repr(a) == "Result('down', 0.1, 'x', timed_out=True)"


def test_tunnel_rx_packets_reads_the_device_counter() -> None:
    assert isinstance(health.tunnel_rx_packets("lo"), int)
    assert health.tunnel_rx_packets("vt-no-such-dev") is None


#: The request's random payload, which a reply must echo.
TOKEN = b"\x01\x02\x03\x04\x05\x06\x07\x08"


def icmp(kind: int, ident: int, src: str = "198.51.100.2", ihl: int = 5, seq: int = 1,
         token: bytes = TOKEN) -> tuple[bytes, tuple[str, int]]:
    """An IPv4 packet (header of ``ihl`` words) carrying an ICMP echo of ``kind``, as a raw socket reads it."""
    ip_header = bytes([0x40 | ihl]) + bytes(4 * ihl - 1)
    return ip_header + struct.pack("!BBHHH", kind, 0, 0, ident, seq) + token, (src, 0)


class Replies:
    """A raw socket's reads: packets, and BlockingIOError for None (nothing yet)."""

    def __init__(self, *reads) -> None:
        self.reads = list(reads)

    def recvfrom(self, size: int):
        read = self.reads.pop(0) if self.reads else None
        if read is None:
            raise BlockingIOError
        if isinstance(read, Exception):
            raise read
        return read

    def close(self) -> None:
        pass


def answered(*reads, wait: float = 0.0) -> bool:
    return Echo(Replies(*reads), "198.51.100.2", 0x8001, 1, TOKEN).answered(wait=wait)  # type: ignore[arg-type]


def test_only_an_echo_reply_with_our_identifier_from_home_counts() -> None:
    assert answered(icmp(0, 0x8001))
    assert answered(icmp(0, 0x8001, ihl=6))  # IP options: the ICMP header starts later
    assert not answered(icmp(8, 0x8001))  # our own request, seen on the raw socket
    assert not answered(icmp(0, 0x8002)) and not answered(icmp(0, 0x8001, src="198.51.100.3"))
    # A spoofed reply that guessed the identifier still misses the sequence or the payload.
    assert not answered(icmp(0, 0x8001, seq=2)) and not answered(icmp(0, 0x8001, token=bytes(8)))
    truncated = (icmp(0, 0x8001)[0][:24], ("198.51.100.2", 0))
    assert not answered(truncated)
    assert answered(icmp(0, 0x8002), icmp(8, 0x8001), icmp(0, 0x8001))  # read past the others
    assert not answered(OSError("closed"))


def test_a_reply_is_waited_for_until_the_deadline_only() -> None:
    assert answered(None, None, icmp(0, 0x8001), wait=1.0)  # came a little later
    assert not answered(None, icmp(0, 0x8001), wait=0.0)  # no waiting asked for


def test_the_given_sockets_are_the_ones_used(server) -> None:
    """forward_probe hands over sockets made in the probe namespace: they, not new ones, carry
    the check, and all are closed afterwards (no ping: issue 21)."""
    s = start(server, [b""])
    first, second = socket.socket(), socket.socket()
    r = health.forward_probe(lambda specs: [first, second], "127.0.0.1", s.port, 1.0, "198.51.100.9")
    assert r is not None and verdict(r) == ("up", "connected", "", False)
    assert first.fileno() == -1 and second.fileno() == -1



def test_a_reply_longer_than_the_request_still_counts() -> None:
    """Only the request's payload is compared: bytes after it (padding) do not spoil a reply."""
    packet, src = icmp(0, 0x8001)
    assert answered((packet + b"\x00pad", src))


class FakeEcho:
    """What Echo.send returns: records how long ``answered`` was asked to wait."""

    def __init__(self, answers: bool) -> None:
        self.answers, self.waits, self.closed = answers, [], False

    def answered(self, wait: float) -> bool:
        self.waits.append(wait)
        return self.answers

    def close(self) -> None:
        self.closed = True


def test_a_check_pings_on_the_raw_socket_it_is_given_and_connects_as_asked(monkeypatch) -> None:
    sent, connects = [], []
    echo = FakeEcho(answers=True)
    monkeypatch.setattr(health.Echo, "send", staticmethod(lambda address, sock=None: sent.append((address, sock))
                                                           or echo))

    def connect(address, port, timeout, sock=None):
        connects.append((address, port, timeout, sock))
        raise TimeoutError("timed out")

    monkeypatch.setattr(health, "connect", connect)
    raw, tcp = object(), object()
    r = health._probe("198.51.100.2", 8080, "tcp", "/", 0.3, None, None, raw, "198.51.100.9")
    assert sent == [("198.51.100.9", raw)] and connects == [("198.51.100.2", 8080, 0.3, None)]
    # The ping had the whole connect timeout to come back: it is not waited for any longer.
    assert echo.waits == [0.0] and echo.closed
    assert verdict(r) == ("slow", "connect: timed out (home answers ping)", health.BUSY, True)
    sent.clear()
    connects.clear()
    health._probe("198.51.100.2", 8080, "tcp", "/", 0.3, None, tcp, None, "198.51.100.9")
    assert sent == [] and connects == [("198.51.100.2", 8080, 0.3, tcp)]  # a socket made elsewhere: no ping


def test_the_time_left_to_a_deadline() -> None:
    import time

    assert 4.9 < health._left(time.monotonic() + 5) <= 5
    with pytest.raises(TimeoutError, match="^deadline passed$"):
        health._left(time.monotonic() - 1)
