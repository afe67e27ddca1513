"""The friendly page server on the VPS that visitors reach while home is down.

The watchdog DNATs a failed service's new connections here. One listening
socket serves every service: the connection's original destination (read back
from conntrack with SO_ORIGINAL_DST) says which service the visitor asked
for, so the page can name its hostname. Every request gets HTTP 503 with
Retry-After and Cache-Control: no-store, so no browser or CDN keeps it.

Stdlib only; pages are rendered beforehand (jinja2 is not imported here).
"""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import struct
import threading
from collections.abc import Mapping
from typing import Any

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h (at SOL_IPV6)
MAX_REQUEST = 16 * 1024
READ_TIMEOUT = 5.0
RETRY_AFTER = 30

Destination = tuple[str, int]

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


def original_destination(sock: socket.socket) -> Destination | None:
    """Where the visitor was going before DNAT, or None for a direct connection.

    IPv6 addresses come back in their canonical text form (as ``str(IPv6Address)``).
    """
    if sock.family == socket.AF_INET6:
        try:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)  # a sockaddr_in6
        except OSError:
            return None
        (port,) = struct.unpack_from("!H", raw, 2)
        return str(ipaddress.IPv6Address(raw[8:24])), port
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


class _Handler(socketserver.BaseRequestHandler):
    server: "FallbackServer"

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(READ_TIMEOUT)
        try:
            dest = original_destination(sock)
            if self.server.tls_contexts is not None:
                context = self.server.tls_contexts.get(dest) if dest else None
                if context is None:
                    return  # no certificate for this name: close at once rather than hang
                sock = context.wrap_socket(sock, server_side=True)
            _read_head(sock)
            sock.sendall(self.server.response_for(dest))
        except OSError:
            pass  # a visitor that went away (or failed the TLS handshake) is not our problem


def _read_head(sock: socket.socket) -> None:
    """Read the request head (we answer every request the same; reading it avoids a RST)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST:
        chunk = sock.recv(4096)
        if not chunk:
            return
        data += chunk


class FallbackServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: Destination, pages: Mapping[Destination, bytes], *,
                 retry_after: int = RETRY_AFTER, tls_contexts: Mapping[Destination, Any] | None = None) -> None:
        """``tls_contexts``: for the TLS listener, an ssl.SSLContext per original destination
        (chosen before the handshake, so no SNI parsing is needed)."""
        self._lock = threading.Lock()
        self._responses: dict[Destination, bytes] = {}
        self.retry_after = retry_after
        self.tls_contexts = tls_contexts
        self.set_pages(pages)
        super().__init__(address, _Handler)

    def set_pages(self, pages: Mapping[Destination, bytes]) -> None:
        built = {dest: response(page, self.retry_after) for dest, page in pages.items()}
        with self._lock:
            self._responses = built

    def response_for(self, dest: Destination | None) -> bytes:
        with self._lock:
            found = self._responses.get(dest) if dest else None
        return found or response(GENERIC_PAGE.encode(), self.retry_after)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="fallback", daemon=True)
        thread.start()
        return thread


class FallbackServer6(FallbackServer):
    """The same server on an IPv6 socket (IPv6-only, so it can share the port
    number with the IPv4 one), for services listening on IPv6."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()
