"""The friendly-page server: 503, Retry-After, no-store, the service's own page."""

from __future__ import annotations

import http.client

from vpnoffload.fallback import FallbackServer, response


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
