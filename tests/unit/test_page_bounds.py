"""The page server's bounds (issue 14): no thread per connection, a cap that drops the
oldest idle connection, deadlines for the whole head and the TLS handshake, a head size cap."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from vpnoffload.fallback import page, pageloop
from vpnoffload.fallback.page import FallbackServer, Loop


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pageloop, "HEAD_TIMEOUT", 0.6)
    monkeypatch.setattr(pageloop, "HANDSHAKE_TIMEOUT", 0.6)
    monkeypatch.setattr(pageloop, "SWEEP_EVERY", 0.05)


def serving(server: FallbackServer, **kw) -> tuple[Loop, threading.Thread]:
    loop = Loop([server], **kw)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return loop, thread


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


def test_whole_head_has_a_deadline_not_each_recv(fast) -> None:
    server = FallbackServer(("127.0.0.1", 0), {})
    loop, thread = serving(server)
    try:
        with socket.create_connection(server.server_address, timeout=3) as slow:
            start = time.monotonic()
            for _ in range(5):  # a byte every 0.2 s: a per-recv timeout of 0.6 s would never fire
                slow.sendall(b"G")
                time.sleep(0.2)
            took = closed_within(slow, 3)
            assert took is not None and time.monotonic() - start < 1.5
    finally:
        loop.stop()
        thread.join(3)
        server.server_close()


def test_cap_drops_the_oldest_idle_connection_and_serves_the_new_visitor() -> None:
    server = FallbackServer(("127.0.0.1", 0), {})
    loop, thread = serving(server, max_connections=3)
    idle = []
    try:
        for _ in range(3):
            idle.append(socket.create_connection(server.server_address, timeout=3))
            time.sleep(0.05)
        time.sleep(0.1)
        idle[1].sendall(b"GE")  # active: no longer the oldest idle after idle[0]... and idle[2]
        time.sleep(0.1)
        with socket.create_connection(server.server_address, timeout=3) as visitor:
            visitor.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert visitor.recv(100).startswith(b"HTTP/1.1 503")
        assert closed_within(idle[0], 1) is not None  # the oldest idle went first
        assert closed_within(idle[1], 0.3) is None  # the active one stayed
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
    loop, thread = serving(server, max_tls=2)
    try:
        silent = [socket.create_connection(server.server_address, timeout=3) for _ in range(3)]
        time.sleep(0.1)
        assert loop.tls_count <= 2  # the third dropped the oldest
        # No ClientHello ever: closed at the handshake deadline, not held.
        assert closed_within(silent[2], 2) is not None
        assert loop.tls_count == 0
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
        time.sleep(0.2)
        assert threading.active_count() == before + 1 and len(loop.conns) == 50
    finally:
        for s in socks:
            s.close()
        loop.stop()
        thread.join(3)
        server.server_close()
