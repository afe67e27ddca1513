"""The friendly-page server: 503, Retry-After, no-store, the service's own page."""

from __future__ import annotations

import http.client

import pytest

from tests.helpers import self_signed
from vpnoffload.fallback import pageloop
from vpnoffload.fallback.page import FallbackServer, response


def test_response_headers() -> None:
    raw = response(b"<p>hi</p>", retry_after=17).decode()
    head, _, body = raw.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 503 Service Unavailable")
    assert "Retry-After: 17" in head and "Cache-Control: no-store" in head
    assert "Content-Length: 9" in head and body == "<p>hi</p>"


def test_server_answers_every_request_with_the_page() -> None:
    server = FallbackServer(("127.0.0.1", 0), {("203.0.113.10", 80): b"<p>blog</p>"}, retry_after=5)
    server.start()
    try:
        port = server.server_address[1]
        for path in ("/", "/some/deep/link?x=1"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
            conn.request("GET", path)
            reply = conn.getresponse()
            body = reply.read().decode()
            # Not DNATed (a direct connection): the generic page, still a 503.
            assert reply.status == 503 and reply.getheader("Retry-After") == "5"
            assert reply.getheader("Cache-Control") == "no-store" and "offline" in body
        server.set_pages({})
    finally:
        server.shutdown()
        server.server_close()


def test_page_chosen_by_original_destination() -> None:
    server = FallbackServer(("127.0.0.1", 0), {("203.0.113.10", 80): b"<p>blog</p>"})
    try:
        assert b"<p>blog</p>" in server.response_for(("203.0.113.10", 80))
        assert b"offline" in server.response_for(("203.0.113.10", 81))
        assert b"offline" in server.response_for(None)
    finally:
        server.server_close()


def test_https_service_gets_the_page_over_tls_and_unknown_names_a_fast_close(tmp_path, monkeypatch) -> None:
    import socket
    import ssl


    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    self_signed("blog.example.org", cert, key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    dest = ("203.0.113.10", 443)
    server = FallbackServer(("127.0.0.1", 0), {dest: b"<p>blog over tls</p>"}, tls_contexts={dest: ctx})
    server.start()
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    try:
        port = server.server_address[1]
        monkeypatch.setattr(pageloop, "original_destination", lambda sock: dest)
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            with client.wrap_socket(raw, server_hostname="blog.example.org") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: blog.example.org\r\n\r\n")
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
        assert data.startswith(b"HTTP/1.1 503") and b"blog over tls" in data
        # A name with no certificate configured: closed at once, never a hang.
        monkeypatch.setattr(pageloop, "original_destination", lambda sock: ("203.0.113.99", 443))
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            # Closed: the handshake meets EOF (or a reset). A socket kept open would end in a
            # timeout instead, which is an OSError too, so that is deliberately not accepted.
            with pytest.raises((ssl.SSLEOFError, ConnectionResetError)):
                client.wrap_socket(raw, server_hostname="other.example.org")
    finally:
        server.shutdown()
        server.server_close()
