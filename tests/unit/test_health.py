"""Health checks against real sockets on loopback: up, down, slow, HTTP status."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from vpnoffload.watch.health import probe
from vpnoffload.model import Check


def serve(reply: bytes | None, delay: float = 0.0) -> tuple[int, threading.Event]:
    """A one-shot loopback server: accepts, optionally answers after ``delay``."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    done = threading.Event()

    def run() -> None:
        srv.settimeout(5)
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.recv(1024)
            if done.wait(delay) or reply is None:
                return
            conn.sendall(reply)
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1], done


@pytest.fixture
def closed_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    yield port


def test_tcp_up(closed_port: int) -> None:
    port, _ = serve(None)
    assert probe("127.0.0.1", port, Check("tcp"), 1.0).verdict == "up"


def test_refused_is_down(closed_port: int) -> None:
    result = probe("127.0.0.1", closed_port, Check("tcp"), 1.0)
    assert result.verdict == "down" and "refused" in result.detail.lower()


@pytest.mark.parametrize("status,verdict", [(200, "up"), (404, "up"), (302, "up"), (500, "down"), (503, "down")])
def test_http_status(status: int, verdict: str) -> None:
    port, _ = serve(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
    result = probe("127.0.0.1", port, Check("http", "/health"), 1.0, host_header="blog.example.org")
    assert result.verdict == verdict and f"http {status}" in result.detail


def test_accepted_but_no_answer_is_slow_not_down() -> None:
    port, done = serve(b"HTTP/1.1 200 OK\r\n\r\n", delay=3)
    try:
        result = probe("127.0.0.1", port, Check("http", "/"), 0.3)
    finally:
        done.set()
    assert result.verdict == "slow" and result.alive


def test_garbage_answer_is_down() -> None:
    port, _ = serve(b"SSH-2.0-OpenSSH\r\n")
    assert probe("127.0.0.1", port, Check("http", "/"), 1.0).verdict == "down"
