"""Health checks through the tunnel: a TCP connect, or an HTTP GET.

Stdlib only (socket, struct; no dataclasses, no config model), because the
watchdog imports this on a 256 MB VPS.

A check tells three things apart, so a busy home server is not swapped out:
``down`` (nothing answers: connect refused, unreachable, timed out, reset, or
HTTP >= 500), ``up``, and ``slow`` (the connection was accepted, so the tunnel
and home box are alive, but the HTTP answer did not come in time). The
watchdog counts ``slow`` as alive.

A second check, :func:`forward_probe`, starts in the watchdog's probe namespace
(:mod:`vpnoffload.watch.probe`) and so takes the visitors' path through the
VPS's PREROUTING and FORWARD hooks. :func:`combine` folds the two into one
verdict, and every verdict carries a ``reason`` a user can act on
(:data:`REASONS`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

from vpnoffload.lean.marked import HEALTH_MARK, connect  # noqa: F401  (the checks' marked socket)
from vpnoffload.watch.pace import device_packets

TYPE_CHECKING = False  # typing costs ~1 MB resident (it imports re): annotations stay strings here
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal

    from vpnoffload.model import Check

    Verdict = Literal["up", "slow", "down"]

#: Why a check failed (or that it was only slow), in words `status` shows as they are.
TUNNEL_DOWN = "tunnel down"
HOME_UNREACHABLE = "home unreachable"
PATH_BLOCKED = "path blocked on the VPS"
TARGET_REFUSED = "target refused"
TARGET_ERROR = "target error"
BUSY = "busy"
CHECK_ERROR = "check error"
REASONS = (TUNNEL_DOWN, HOME_UNREACHABLE, PATH_BLOCKED, TARGET_REFUSED, TARGET_ERROR, BUSY, CHECK_ERROR)


class Result:
    """The verdict of one check. Immutable by convention; equal when all fields are."""

    __slots__ = ("verdict", "latency", "detail", "timed_out", "reason", "answered")

    def __init__(self, verdict: Verdict, latency: float, detail: str, timed_out: bool = False,
                 reason: str = "", answered: bool | None = None) -> None:
        self.verdict = verdict
        self.latency = latency  # seconds until the verdict
        self.detail = detail
        self.timed_out = timed_out  # no answer at all (as opposed to a refusal or an HTTP error)
        #: One of REASONS ("" when up); not part of equality, it is derived from the rest.
        self.reason = reason
        #: Did the home itself answer this check through the tunnel? None: as the verdict says
        #: (:attr:`home_answered`); False for a verdict excused by other evidence.
        self.answered = answered

    @property
    def alive(self) -> bool:
        return self.verdict != "down"

    @property
    def home_answered(self) -> bool:
        """Did the home box answer through the tunnel (even with a refusal or an error)? A ping
        answer counts; traffic from the tunnel that excused a lost check does not."""
        if self.answered is not None:
            return self.answered
        return self.alive or self.reason in (TARGET_REFUSED, TARGET_ERROR, PATH_BLOCKED)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and (self.verdict, self.latency, self.detail, self.timed_out) == (
            other.verdict, other.latency, other.detail, other.timed_out)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Result({self.verdict!r}, {self.latency!r}, {self.detail!r}, timed_out={self.timed_out!r})"


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)


def _connect_reason(exc: OSError) -> str:
    """What a failed connect means for the user: RST from home, no way to it, or no answer."""
    if exc.errno == errno.ECONNREFUSED:
        return TARGET_REFUSED
    if exc.errno in (errno.ENETUNREACH, errno.ENODEV):
        return TUNNEL_DOWN  # the VPS has no route to the tunnel address: no tun device, OpenVPN is down
    return HOME_UNREACHABLE


def probe(address: str, port: int, check: "Check", timeout: float, *, host_header: str | None = None) -> Result:
    """Run one check of ``address:port``: connect, request and the whole answer head end
    within ``timeout`` seconds together (a deadline, not a timeout per ``recv``: a target
    that trickles its answer cannot hold the check longer).

    A ping goes out together with the connect: if the connect times out but
    the home box answered the ping, home and tunnel are alive and the service
    is only overloaded (its accept queue full), so the verdict is ``slow``.
    """
    return _probe(address, port, check.kind, check.path, timeout, host_header, None, None, address)


def _probe(address: str, port: int, kind: str, http_path: str, timeout: float, host_header: str | None,
           tcp: socket.socket | None, raw: socket.socket | None, echo_address: str) -> Result:
    start = time.monotonic()
    deadline = start + timeout
    echo = Echo.send(echo_address, raw) if raw is not None or tcp is None else None
    try:
        sock = connect(address, port, timeout, tcp)
    except TimeoutError:
        alive = echo is not None and echo.answered(wait=0.0)
        verdict: Verdict = "slow" if alive else "down"
        return Result(verdict, time.monotonic() - start, "connect: timed out" + (" (home answers ping)" if alive else ""),
                      timed_out=True, reason=BUSY if alive else HOME_UNREACHABLE)
    except OSError as exc:
        return Result("down", time.monotonic() - start, f"connect: {_reason(exc)}", reason=_connect_reason(exc))
    finally:
        if echo is not None:
            echo.close()
    with sock:
        if kind == "tcp":
            return Result("up", time.monotonic() - start, "connected")
        return _http(sock, http_path, host_header or address, deadline, start)


def forward_probe(sockets: "Callable[[list[tuple[int, int, int]]], list[socket.socket | None]]", address: str,
                  port: int, timeout: float, echo_address: str = "") -> Result | None:
    """A TCP connect to ``address:port`` on sockets made in the probe namespace
    (``sockets``: ``watch.probe.ProbeNamespace.sockets``), so its packets cross the
    VPS's PREROUTING and FORWARD hooks as a visitor's do.

    ``address`` is a service's public listen address and port (DNATed to home like a
    visitor's, so a rule that drops only that port is met) or a home's tunnel address
    and the service's target port (forwarded without DNAT). No ping goes with it: a
    home that answers ping says nothing about this port. A second connect starts
    halfway to the deadline if the first has no answer yet (:func:`_connect_either`), so
    one SYN lost in a saturated tunnel is not taken for a block; a rule that drops the
    port loses both. A connect that gets no answer by ``timeout`` is ``down`` (timed out),
    and only the service's own visitors' flows may still show it was load
    (``watch.flows``). None when no socket can be made there: no evidence, never a
    failure. ``echo_address`` is no longer used.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        made = sockets([(family, socket.SOCK_STREAM, 0)] * FORWARD_ATTEMPTS)
    except (OSError, ValueError):
        return None
    socks = [s for s in made if s is not None]
    if not socks:
        return None
    start = time.monotonic()
    try:
        error = _connect_either(socks, (address, port), start + timeout)
    finally:
        for sock in socks:
            sock.close()
    latency = time.monotonic() - start
    if error is None:
        return Result("up", latency, "connected")
    if isinstance(error, TimeoutError):
        return Result("down", latency, "connect: timed out", timed_out=True, reason=HOME_UNREACHABLE)
    return Result("down", latency, f"connect: {_reason(error)}", reason=_connect_reason(error))


#: Connects of one visitor-path check: the next starts when half the time left has gone unanswered.
FORWARD_ATTEMPTS = 2


def _connect_either(socks: "list[socket.socket]", where: tuple[str, int], deadline: float) -> OSError | None:
    """Non-blocking connects on ``socks`` to ``where``, the next one started when half of the
    time left has passed without an answer; None as soon as one connects, else the first
    refusal (an answer too), else TimeoutError at ``deadline``."""
    import select

    pending: list[socket.socket] = []
    waiting = list(socks)
    next_start = time.monotonic()
    while True:
        now = time.monotonic()
        if waiting and now >= next_start:
            sock = waiting.pop(0)
            sock.setblocking(False)
            code = sock.connect_ex(where)
            if code == 0:
                return None
            if code not in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                return OSError(code, os.strerror(code))
            pending.append(sock)
            next_start = now + (deadline - now) / 2
        if now >= deadline:
            return TimeoutError("timed out")
        wake = min(deadline, next_start) if waiting else deadline
        _, ready, _ = select.select([], pending, [], max(0.0, wake - now))
        for sock in ready:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                return None
            return OSError(code, os.strerror(code))


def combine(direct: Result, forward: Result | None) -> Result:
    """One verdict from the check through the tunnel and the one along the visitors' path.

    A failing direct check speaks for itself (its reason names the tunnel,
    home or target). When it passes but the forwarded connection gets no
    answer or is refused, the VPS itself drops the visitors' packets: the
    verdict is ``down`` with reason :data:`PATH_BLOCKED` (a lost one, ``timed_out``,
    may still turn out to be load: ``Watchdog._own_flows``).
    """
    if not direct.alive or forward is None or forward.alive:
        return direct
    return Result("down", max(direct.latency, forward.latency),
                  f"{direct.detail}; along the visitors' path: {forward.detail}",
                  timed_out=forward.timed_out, reason=PATH_BLOCKED)


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; TimeoutError once it has passed (settimeout(0) would mean non-blocking)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _http(sock: socket.socket, path: str, host: str, deadline: float, start: float) -> Result:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: vpnoffload-watch\r\nConnection: close\r\n\r\n"
    try:
        sock.settimeout(_left(deadline))
        sock.sendall(request.encode("ascii", "replace"))
        line = _answer_head(sock, deadline)
    except TimeoutError:
        # Accepted but no whole answer head in time: home and tunnel are alive, the app is busy.
        return Result("slow", time.monotonic() - start, "http: no answer in time", reason=BUSY)
    except OSError as exc:
        return Result("down", time.monotonic() - start, f"http: {_reason(exc)}", reason=TARGET_ERROR)
    latency = time.monotonic() - start
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return Result("down", latency, f"http: not an HTTP answer: {line[:40]!r}", reason=TARGET_ERROR)
    code = int(parts[1])
    return Result("up" if code < 500 else "down", latency, f"http {code}", reason="" if code < 500 else TARGET_ERROR)


#: The answer head is read up to this much; a longer one is judged by its status line.
HEAD_LIMIT = 8192


def _answer_head(sock: socket.socket, deadline: float) -> str:
    """The status line, once the whole head (up to the blank line, or HEAD_LIMIT bytes, or the
    end of the stream) has arrived before ``deadline``; TimeoutError otherwise."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < HEAD_LIMIT:
        sock.settimeout(_left(deadline))
        chunk = sock.recv(HEAD_LIMIT - len(data))
        if not chunk:
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "closed without an answer")
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


class Echo:
    """One ICMP echo request on a raw socket, to tell a dead home from a busy service.

    A raw ICMP socket sees every echo reply the VPS receives, from anywhere: a reply counts
    only from the home's address and with this request's random identifier, sequence number
    and 8-byte payload, so a spoofed one cannot keep a dead home "alive" (a guess of 96 bits).
    """

    _seq = 0

    def __init__(self, sock: socket.socket, address: str, ident: int, seq: int = 0, token: bytes = b"") -> None:
        self.sock, self.address, self.ident, self.seq, self.token = sock, address, ident, seq, token

    @classmethod
    def send(cls, address: str, sock: socket.socket | None = None) -> "Echo | None":
        """Send the request (on ``sock``, a raw ICMP socket, if given); None when raw
        sockets are not allowed (then no ``slow`` verdicts)."""
        if sock is None:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            except OSError:
                return None
        cls._seq = seq = (cls._seq + 1) & 0xFFFF
        ident = int.from_bytes(os.urandom(2), "big")
        token = os.urandom(8)
        header = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + token
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header), ident, seq) + token
        try:
            sock.setblocking(False)
            sock.sendto(packet, (address, 0))
        except OSError:
            sock.close()
            return None
        return cls(sock, address, ident, seq, token)

    def answered(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while True:
            try:
                data, (src, _) = self.sock.recvfrom(1024)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
                continue
            except OSError:
                return False
            ihl = (data[0] & 0x0F) * 4
            if src == self.address and len(data) >= ihl + 8 + len(self.token):
                kind, _, _, ident, seq = struct.unpack_from("!BBHHH", data, ihl)
                token = data[ihl + 8:ihl + 8 + len(self.token)]
                if kind == 0 and ident == self.ident and seq == self.seq and token == self.token:
                    return True

    def close(self) -> None:
        self.sock.close()


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def tunnel_rx_packets(device: str) -> int | None:
    """Packets the VPS received from the tunnel so far (None if there is no such device).

    OpenVPN's own keepalives do not reach the tun device, so this grows only
    while a home box sends real traffic: a loaded tunnel that drops a check's
    packets still shows home alive; a pulled cable stops it dead.
    """
    return device_packets(device, "rx_packets")
