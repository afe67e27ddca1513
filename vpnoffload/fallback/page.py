"""The friendly page server on the VPS that visitors reach while home is down.

The watchdog DNATs a failed service's new connections here. One listening
socket serves every service: the connection's original destination (read back
from conntrack with SO_ORIGINAL_DST) says which service the visitor asked
for, so the page can name its hostname. Every request gets HTTP 503 with
Retry-After and Cache-Control: no-store, so no browser or CDN keeps it.

The connections are served by one bounded ``selectors`` loop
(:mod:`vpnoffload.fallback.pageloop`: connection cap, head and handshake deadlines, head
size cap, no thread per connection).

Offline copies (the last good version of a page, kept while home was up): a GET or HEAD for a path a service keeps
(:mod:`vpnoffload.fallback.copies`) is answered 200 from the copy instead, with
its content type, an ``Age`` and, for HTML, a small banner appended; the body is
streamed from its open file :data:`FILE_CHUNK` bytes at a time (one chunk per
connection in memory), the send deadline renewed while the visitor reads, up to
:data:`STREAM_TIMEOUT` in all.

Stdlib only (socket, selectors; ssl only when a TLS listener exists); pages
are rendered beforehand (jinja2 is not imported here).
"""

from __future__ import annotations

import socket

from vpnoffload.fallback.copyhttp import banner, copy_head, request_target
from vpnoffload.fallback.pageloop import (  # noqa: F401 (the bounds are part of this server's contract)
    ACCEPT_BATCH, FILE_CHUNK, HANDSHAKE_TIMEOUT, HEAD_TIMEOUT, IP6T_SO_ORIGINAL_DST, MAX_CONNECTIONS, MAX_HEAD,
    MAX_REQUEST, MAX_TLS_CONNECTIONS, READ_TIMEOUT, RETRY_AFTER, SEND_TIMEOUT, SO_ORIGINAL_DST, STREAM_TIMEOUT,
    SWEEP_EVERY, Destination, Loop, original_destination,
)

TYPE_CHECKING = False  # typing costs ~1 MB resident (it imports re): annotations stay strings here
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

GENERIC_PAGE = (
    "<!doctype html><html><head><meta charset=utf-8><title>Temporarily offline</title></head>"
    "<body><h1>Temporarily offline</h1><p>This site is taking a short break. Please try again in a minute.</p></body></html>"
)


def response(page: bytes, retry_after: int = RETRY_AFTER) -> bytes:
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(page)}\r\n"
        f"Retry-After: {retry_after}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + page


class FallbackServer:
    """One listening socket (non-blocking) and the pages it answers with.

    Served by a :class:`Loop` (several servers share one); :meth:`start` runs
    a loop of its own in a thread, for tests and embedding.
    """

    address_family = socket.AF_INET
    request_queue_size = 1024

    def __init__(self, address: Destination, pages: Mapping[Destination, bytes], *,
                 retry_after: int = RETRY_AFTER, tls_contexts: Mapping[Destination, Any] | None = None) -> None:
        """``tls_contexts``: for the TLS listener, an ssl.SSLContext per original destination
        (chosen before the handshake, so no SNI parsing is needed)."""
        self.retry_after = retry_after
        self.tls_contexts = tls_contexts
        self._generic = response(GENERIC_PAGE.encode(), retry_after)
        self._responses: dict[Destination, bytes] = {}
        #: Per destination: kept path -> vpnoffload.fallback.copies.Kept, and whether HTML gets the banner.
        self._kept: dict[Destination, dict[str, Any]] = {}
        self._banner: dict[Destination, bool] = {}
        self.set_pages(pages)
        sock = socket.socket(self.address_family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._configure(sock)
            sock.bind(address)
            sock.listen(self.request_queue_size)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.socket = sock
        self.server_address: Destination = sock.getsockname()[:2]
        self._loop: Loop | None = None
        self._thread: Any = None

    def _configure(self, sock: socket.socket) -> None:
        """Socket options before bind (the IPv6 server sets IPV6_V6ONLY)."""

    def set_pages(self, pages: Mapping[Destination, bytes]) -> None:
        # One attribute assignment: the loop sees the old dict or the new one.
        self._responses = {dest: response(page, self.retry_after) for dest, page in pages.items()}

    def set_kept(self, kept: Mapping[Destination, dict[str, Any]], banner: Mapping[Destination, bool]) -> None:
        """The offline copies to answer from (a replaced page closes once no connection streams it)."""
        self._kept, self._banner = dict(kept), dict(banner)

    def response_for(self, dest: Destination | None) -> bytes:
        found = self._responses.get(dest) if dest else None
        return found or self._generic

    def answer(self, dest: Destination | None, head: bytes | bytearray) -> tuple[bytes, Any, bytes]:
        """(what to send first, a kept page to stream after it or None, what follows that page).

        A GET/HEAD for a kept path of ``dest``'s service is answered from the copy;
        everything else gets the friendly page, as before."""
        kept = self._kept.get(dest) if dest else None
        if kept:
            method, target = request_target(head)
            page = kept.get(target) if method in ("GET", "HEAD") and target else None
            if page is not None:
                tail = banner(page.fetched) if page.html and self._banner.get(dest, True) else b""
                first = copy_head(page, len(tail))
                return (first, None, b"") if method == "HEAD" else (first, page, tail)
        return self.response_for(dest), None, b""

    def start(self) -> Any:
        """Serve in a thread of its own (the page server process runs one :class:`Loop` in its main thread)."""
        import threading

        self._loop = Loop([self])
        self._thread = threading.Thread(target=self._loop.run, name="fallback", daemon=True)
        self._thread.start()
        return self._thread

    def shutdown(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._thread.join(5)
            self._loop = None

    def server_close(self) -> None:
        self.socket.close()


class FallbackServer6(FallbackServer):
    """The same server on an IPv6 socket (IPv6-only, so it can share the port
    number with the IPv4 one), for services listening on IPv6."""

    address_family = socket.AF_INET6

    def _configure(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
