"""The page server's bounds (issue 14): no thread per connection, a cap that drops the
oldest idle connection, deadlines for the whole head and the TLS handshake, a head size cap."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.helpers import wait_until
from vpnoffload.fallback import page, pageloop
from vpnoffload.fallback.page import FallbackServer, Loop


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pageloop, "HEAD_TIMEOUT", 0.6)
    monkeypatch.setattr(pageloop, "HANDSHAKE_TIMEOUT", 0.6)
    monkeypatch.setattr(pageloop, "SWEEP_EVERY", 0.05)


class Clock:
    """The loop's clock, moved by the test: deadlines pass when the test says, not when a
    loaded machine happens to get there (no fixed sleeps, no race with the deadline)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def serving(server: FallbackServer, **kw) -> tuple[Loop, threading.Thread]:
    loop = Loop([server], **kw)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return loop, thread


def conns(loop: Loop, n: int) -> None:
    """Wait until the loop holds exactly ``n`` connections."""
    wait_until(f"{n} connections held", lambda: (len(loop.conns) == n, len(loop.conns)), limit=5, interval=0.01)


def closed_within(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), or None if it stayed open ``limit`` s."""
    sock.settimeout(limit)
    start = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - start


def still_open(sock: socket.socket) -> bool:
    """True when ``sock`` is neither closed nor reset by the server (and has nothing to read)."""
    sock.setblocking(False)
    try:
        sock.recv(1)  # data or EOF: not an idle open connection
        return False
    except BlockingIOError:
        return True
    except ConnectionError:
        return False
    finally:
        sock.setblocking(True)


def test_whole_head_has_a_deadline_not_each_recv(fast) -> None:
    clock = Clock()
    server = FallbackServer(("127.0.0.1", 0), {})
    loop, thread = serving(server, clock=clock)
    try:
        with socket.create_connection(server.server_address, timeout=3) as slow:
            conns(loop, 1)
            conn = next(iter(loop.conns.values()))
            for sent in range(1, 4):  # a byte every 0.2 s: a per-recv timeout of 0.6 s would never fire
                slow.sendall(b"G")
                wait_until("the byte read", lambda n=sent: (len(conn.head) == n, bytes(conn.head)), limit=5,
                           interval=0.01)
                clock.now += 0.2
            # 0.6 s after the connection came: still within the head's deadline...
            assert still_open(slow) and len(loop.conns) == 1
            clock.now += 0.1  # ...0.7 s: past it, though the last byte came only 0.3 s ago
            assert closed_within(slow, 3) is not None
    finally:
        loop.stop()
        thread.join(3)
        server.server_close()


def test_cap_drops_the_oldest_idle_connection_and_serves_the_new_visitor() -> None:
    server = FallbackServer(("127.0.0.1", 0), {})
    loop, thread = serving(server, max_connections=3)
    idle = []
    try:
        for n in range(1, 4):  # one at a time, so their order is known
            idle.append(socket.create_connection(server.server_address, timeout=3))
            conns(loop, n)
        idle[1].sendall(b"GE")  # active: no longer the oldest idle after idle[0]... and idle[2]
        wait_until("idle[1]'s bytes read", lambda: (any(c.head == b"GE" for c in list(loop.conns.values())), None),
                   limit=5, interval=0.01)
        with socket.create_connection(server.server_address, timeout=3) as visitor:
            visitor.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert visitor.recv(100).startswith(b"HTTP/1.1 503")
        assert closed_within(idle[0], 3) is not None  # the oldest idle went first
        assert still_open(idle[1]) and still_open(idle[2])  # the active one (and the newer) stayed
        assert len(loop.conns) <= 3
    finally:
        for s in idle:
            s.close()
        loop.stop()
        thread.join(3)
        server.server_close()


def test_oversized_head_gets_the_page_at_once() -> None:
    server = FallbackServer(("127.0.0.1", 0), {})
    loop, thread = serving(server)
    try:
        with socket.create_connection(server.server_address, timeout=3) as big:
            big.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * page.MAX_HEAD)  # never ends its head
            assert big.recv(100).startswith(b"HTTP/1.1 503")
    finally:
        loop.stop()
        thread.join(3)
        server.server_close()


def test_tls_handshake_has_a_deadline_and_tls_connections_their_own_cap(fast, tmp_path, monkeypatch) -> None:
    import ssl

    from tests.helpers import self_signed

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    self_signed("blog.example.org", cert, key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    dest = ("203.0.113.10", 443)
    monkeypatch.setattr(pageloop, "original_destination", lambda sock: dest)
    server = FallbackServer(("127.0.0.1", 0), {dest: b"<p>tls</p>"}, tls_contexts={dest: ctx})
    clock = Clock()
    loop, thread = serving(server, max_tls=2, clock=clock)
    try:
        silent = []
        for n in range(1, 4):
            silent.append(socket.create_connection(server.server_address, timeout=3))
            if n <= 2:
                conns(loop, n)
        assert closed_within(silent[0], 3) is not None  # the third dropped the oldest
        wait_until("the third admitted", lambda: (loop.tls_count == 2, loop.tls_count), limit=5, interval=0.01)
        assert still_open(silent[1]) and still_open(silent[2])
        # No ClientHello ever: closed at the handshake deadline, not held.
        clock.now += 0.7
        assert closed_within(silent[2], 3) is not None
        wait_until("no TLS connection left", lambda: (loop.tls_count == 0, loop.tls_count), limit=5, interval=0.01)
        for s in silent:
            s.close()
    finally:
        loop.stop()
        thread.join(3)
        server.server_close()


def test_one_thread_serves_many_connections() -> None:
    server = FallbackServer(("127.0.0.1", 0), {})
    before = threading.active_count()
    loop, thread = serving(server)
    socks = []
    try:
        socks = [socket.create_connection(server.server_address, timeout=3) for _ in range(50)]
        conns(loop, 50)
        assert threading.active_count() == before + 1
    finally:
        for s in socks:
            s.close()
        loop.stop()
        thread.join(3)
        server.server_close()
