"""The page server's event loop: one thread, one ``selectors`` loop, every socket non-blocking,
with the bounds that keep a flood from costing memory or starving a new visitor (see
:mod:`vpnoffload.fallback.page` for what is answered).

* at most :data:`MAX_CONNECTIONS` open at once, of them :data:`MAX_TLS_CONNECTIONS`
  over TLS (an OpenSSL connection costs tens of KiB, a plain one about one);
  a new one beyond that drops the one idle longest (the slow trickler, not the visitor);
* the TLS handshake must finish within :data:`HANDSHAKE_TIMEOUT` and the whole
  request head within :data:`HEAD_TIMEOUT` (a deadline, not a timeout per
  ``recv``: a byte every second does not keep a connection alive), the answer
  within :data:`SEND_TIMEOUT`;
* the head is read up to :data:`MAX_HEAD` bytes; a longer one gets the page at once;
* a kept page is streamed :data:`FILE_CHUNK` bytes at a time, up to :data:`STREAM_TIMEOUT`.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import time

TYPE_CHECKING = False  # typing costs ~1 MB resident (it imports re): annotations stay strings here
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from vpnoffload.fallback.page import FallbackServer

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h (at SOL_IPV6)
MAX_HEAD = 8 * 1024
MAX_CONNECTIONS = 1024
MAX_TLS_CONNECTIONS = 128
HANDSHAKE_TIMEOUT = 5.0
HEAD_TIMEOUT = 5.0
SEND_TIMEOUT = 5.0
RETRY_AFTER = 30
#: A kept page is read from disk this much at a time (one chunk per connection in memory).
FILE_CHUNK = 8 * 1024
#: The most a kept page's answer may take, however steadily the visitor reads.
STREAM_TIMEOUT = 60.0
ACCEPT_BATCH = 64  # accepts per wakeup, so a SYN flood cannot keep the loop from serving others
SWEEP_EVERY = 0.25  # how often deadlines are checked (and the longest the loop sleeps)
#: Kept for callers of the old per-recv timeout; the head deadline replaces it.
READ_TIMEOUT = HEAD_TIMEOUT
MAX_REQUEST = MAX_HEAD

Destination = tuple[str, int]

_HANDSHAKE, _READ, _WRITE = 0, 1, 2


def original_destination(sock: socket.socket) -> Destination | None:
    """Where the visitor was going before DNAT, or None for a direct connection.

    Addresses come back as ``inet_ntop`` writes them (for IPv6 the canonical
    compressed form, as ``str(IPv6Address)``).
    """
    if sock.family == socket.AF_INET6:
        try:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)  # a sockaddr_in6
        except OSError:
            return None
        (port,) = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


class _Conn:
    __slots__ = ("sock", "server", "dest", "state", "head", "out", "deadline", "events", "tls",
                 "page", "offset", "tail", "until")

    def __init__(self, sock: Any, server: "FallbackServer", dest: Destination | None, state: int,
                 deadline: float) -> None:
        self.sock, self.server, self.dest, self.state, self.deadline = sock, server, dest, state, deadline
        self.head = bytearray()
        self.out: memoryview | None = None
        self.events = selectors.EVENT_READ
        self.tls = state == _HANDSHAKE
        #: A kept page being streamed (vpnoffload.fallback.copies.Kept), how far, and what follows it.
        self.page: Any = None
        self.offset = 0
        self.tail = b""
        self.until = 0.0


class Loop:
    """One selector over the listening sockets of ``servers`` and every connection they accepted."""

    def __init__(self, servers: Iterable["FallbackServer"], *, max_connections: int = MAX_CONNECTIONS,
                 max_tls: int = MAX_TLS_CONNECTIONS, clock: Callable[[], float] = time.monotonic) -> None:
        self.selector = selectors.DefaultSelector()
        self.max_connections, self.max_tls = max_connections, max_tls
        self.tls_count = 0
        self.clock = clock
        #: fd -> connection, least recently active first (a dict keeps insertion order).
        self.conns: dict[int, _Conn] = {}
        self.stopped = False
        for server in servers:
            self.selector.register(server.socket, selectors.EVENT_READ, server)

    def run(self, on_wakeup: Callable[[], None] | None = None) -> None:
        """Serve until :meth:`stop` (or ``stopped`` set, e.g. from a signal handler); ``on_wakeup``
        runs at least every :data:`SWEEP_EVERY` s (reloads and the like)."""
        next_sweep = self.clock() + SWEEP_EVERY
        try:
            while not self.stopped:
                for key, _ in self.selector.select(SWEEP_EVERY):
                    if not isinstance(key.data, _Conn):  # a listening server
                        self._accept(key.data)
                    else:
                        self._serve(key.data)
                now = self.clock()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_EVERY
                if on_wakeup is not None:
                    on_wakeup()
        finally:
            for conn in list(self.conns.values()):
                self._close(conn)
            self.selector.close()

    def stop(self) -> None:
        self.stopped = True

    # -------------------------------------------------------------- events

    def _accept(self, server: "FallbackServer") -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = server.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EMFILE, ENOBUFS, ECONNABORTED: make room and try on the next wakeup
                self._drop_oldest()
                return
            sock.setblocking(False)
            if len(self.conns) >= self.max_connections:
                self._drop_oldest()
            if server.tls_contexts is not None and self.tls_count >= self.max_tls:
                self._drop_oldest(tls=True)
            self._admit(server, sock)

    def _admit(self, server: "FallbackServer", sock: socket.socket) -> None:
        now = self.clock()
        dest = original_destination(sock)
        try:
            if server.tls_contexts is not None:
                context = server.tls_contexts.get(dest) if dest else None
                if context is None:
                    sock.close()  # no certificate for this name: close at once rather than hang
                    return
                tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                conn = _Conn(tls, server, dest, _HANDSHAKE, now + HANDSHAKE_TIMEOUT)
            else:
                conn = _Conn(sock, server, dest, _READ, now + HEAD_TIMEOUT)
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError):
            sock.close()
            return
        self.conns[conn.sock.fileno()] = conn
        self.tls_count += conn.tls

    def _serve(self, conn: _Conn) -> None:
        try:
            if conn.state == _HANDSHAKE:
                if not self._handshake(conn):
                    return
            if conn.state == _READ:
                if not self._read(conn):
                    return
            self._write(conn)
        except (OSError, ValueError):  # ssl.SSLError is an OSError: a visitor that went away or failed TLS
            self._close(conn)

    def _handshake(self, conn: _Conn) -> bool:
        import ssl  # already loaded: only TLS listeners make handshakes

        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
            return False
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
            return False
        conn.state, conn.deadline = _READ, self.clock() + HEAD_TIMEOUT
        self._touch(conn)
        return True

    def _read(self, conn: _Conn) -> bool:
        """Read what has arrived; True once the whole head (or MAX_HEAD bytes) is in."""
        while True:
            try:
                chunk = conn.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                self._want(conn, selectors.EVENT_READ)
                self._touch(conn)
                return False
            except OSError as exc:
                wanted = _tls_wants(exc)
                if wanted is None:
                    raise
                self._want(conn, wanted)
                return False
            if not chunk:
                self._close(conn)
                return False
            start = max(0, len(conn.head) - 3)
            conn.head += chunk
            if b"\r\n\r\n" in conn.head[start:] or len(conn.head) >= MAX_HEAD:
                break
        head, conn.page, conn.tail = conn.server.answer(conn.dest, conn.head)
        conn.head = bytearray()
        conn.out = memoryview(head)
        now = self.clock()
        conn.state, conn.deadline, conn.until = _WRITE, now + SEND_TIMEOUT, now + STREAM_TIMEOUT
        return True

    def _refill(self, conn: _Conn) -> bool:
        """The next chunk of a kept page (then its tail) into ``conn.out``; False when all is sent."""
        page = conn.page
        if page is not None and conn.offset < page.size:
            chunk = os.pread(page.fd, min(FILE_CHUNK, page.size - conn.offset), conn.offset)
            if not chunk:  # the file shrank under us (it never should: bodies are never rewritten)
                raise OSError("kept page truncated")
            conn.offset += len(chunk)
            conn.out = memoryview(chunk)
        elif conn.tail:
            conn.out, conn.tail, conn.page = memoryview(conn.tail), b"", None
        else:
            conn.page = None  # let go of it: a page replaced on reload closes once nobody streams it
            return False
        # A visitor who keeps reading keeps the connection, up to STREAM_TIMEOUT in all.
        conn.deadline = min(conn.until, self.clock() + SEND_TIMEOUT)
        return True

    def _write(self, conn: _Conn) -> None:
        assert conn.out is not None
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                self._want(conn, selectors.EVENT_WRITE)
                return
            except OSError as exc:
                wanted = _tls_wants(exc)
                if wanted is None:
                    raise
                self._want(conn, wanted)
                return
            conn.out = conn.out[sent:]
            if not conn.out and not self._refill(conn):
                break
        self._close(conn)

    # -------------------------------------------------------------- bookkeeping

    def _want(self, conn: _Conn, events: int) -> None:
        if conn.events != events:
            self.selector.modify(conn.sock, events, conn)
            conn.events = events

    def _touch(self, conn: _Conn) -> None:
        """Mark ``conn`` as just active: it moves to the end of the drop order."""
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is not None:
            self.conns[fd] = conn

    def _drop_oldest(self, tls: bool = False) -> None:
        """Close the connection idle longest (of the TLS ones, with ``tls``)."""
        oldest = next((c for c in self.conns.values() if c.tls or not tls), None)
        if oldest is not None:
            self._close(oldest)

    def _sweep(self, now: float) -> None:
        for conn in [c for c in self.conns.values() if c.deadline <= now]:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        conn.page = None
        try:
            fd = conn.sock.fileno()
        except (OSError, ValueError):
            fd = -1
        if self.conns.pop(fd, None) is not None:
            self.tls_count -= conn.tls
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            conn.sock.close()
        except OSError:
            pass


def _tls_wants(exc: OSError) -> int | None:
    """The selector event a non-blocking TLS call waits for, or None when ``exc`` is a real error."""
    name = type(exc).__name__
    if name == "SSLWantReadError":
        return selectors.EVENT_READ
    if name == "SSLWantWriteError":
        return selectors.EVENT_WRITE
    return None


