"""The friendly page's listening ports, held by the watchdog for its whole life.

The page server runs only during outages: if nobody held its port in between,
a local user could bind it first and receive every visitor of the outage under
the site's real name. So the watchdog binds every page listener when it starts
(and refuses to start when one is taken) and keeps them until it exits; it
hands them to each page server it starts (fds 3, 4, ... and
``--listen-fds 4:503=3,...``). Between the watchdog's lives (a crash, a
restart) only the port itself protects it: the default, 503, is below 1024,
where only root (CAP_NET_BIND_SERVICE) can bind; ``doctor`` warns about a
configured port that is not.

A held socket is bound but not listening (costs nothing, queues nothing), with
``SO_REUSEPORT`` and without ``SO_REUSEADDR``: Linux then refuses the port to
every other user (``SO_REUSEPORT`` groups need the same uid; ``SO_REUSEADDR``
needs both sockets to set it), while a page server that ``up vps`` starts as
root can still bind beside it. The page server listens on the socket it got;
after it exits the watchdog shuts the shared socket down again
(:meth:`Held.quiet`: back to bound-only, the port stays reserved), so no
connection queues where nobody accepts. Stdlib ``socket`` only: the watchdog is lean.
"""

from __future__ import annotations

import socket

from vpnoffload.errors import BackendError

TYPE_CHECKING = False  # typing costs ~1 MB resident in the lean watchdog
if TYPE_CHECKING:
    from vpnoffload.lean.snapshot import ConfigView

#: Where the page server gets the first passed socket.
FIRST_FD = 3


def wanted(config: "ConfigView") -> list[tuple[str, str, int]]:
    """(key, host, port) of every listener the page server needs for ``config``: the VPS's
    address at fallback_port (+1 for TLS pages), and ``[::]`` for IPv6 page services."""
    port = config.watch.fallback_port
    pages = [s for s in config.services.values() if s.serves_page]
    if not pages:
        return []
    tls = any(s.page_over_tls for s in pages)
    found = [(key(4, port), config.vps_local_address, port)]
    if tls:
        found.append((key(4, port + 1), config.vps_local_address, port + 1))
    ipv6 = [s for s in config.ipv6_services if s.serves_page]
    if ipv6:
        found.append((key(6, port), "::", port))
        if tls and any(s.page_over_tls for s in ipv6):
            found.append((key(6, port + 1), "::", port + 1))
    return found


def key(family: int, port: int) -> str:
    return f"{family}:{port}"


def reserve(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, not listening, that no other user can share (see above)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Held:
    """The listeners one watchdog holds, by :func:`key`."""

    def __init__(self) -> None:
        self.socks: dict[str, socket.socket] = {}

    def hold(self, config: "ConfigView") -> None:
        """Bind every listener ``config`` wants that is not held yet; BackendError naming the
        first one that is taken (the ones bound so far stay held)."""
        for name, host, port in wanted(config):
            if name in self.socks:
                continue
            try:
                self.socks[name] = reserve(host, port)
            except OSError as exc:
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                raise BackendError(f"watch.fallback_port: cannot hold {shown} for the friendly page "
                                   f"({exc.strerror or exc}); another program has it: stop it or choose "
                                   f"another fallback_port") from None

    def passed(self) -> list[tuple[str, int]]:
        """(key, fd) in ascending fd order: the page server gets them as fds 3, 4, ..."""
        return sorted(((name, s.fileno()) for name, s in self.socks.items()), key=lambda item: item[1])

    def quiet(self) -> None:
        """Stop listening on sockets a page server listened on (it exited): the port stays held.

        Only a listening socket is shut down: Linux un-lists it and clears its shutdown
        flags. On a socket that is merely bound, shutdown() would fail (ENOTCONN) and still
        set them, and every connection a later page server accepts on it would be born shut."""
        for sock in self.socks.values():
            try:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()


def _digits(text: str, most: int) -> bool:
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def format_fds(passed: list[tuple[str, int]]) -> str:
    """``--listen-fds`` for the sockets :meth:`Held.passed` lists, as the child numbers them."""
    return ",".join(f"{name}={FIRST_FD + i}" for i, (name, _) in enumerate(passed))


def parse_fds(text: str) -> dict[str, int]:
    """``4:503=3,6:503=4`` -> {"4:503": 3, "6:503": 4}; BackendError on anything else."""
    found: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        name, _, fd = item.partition("=")
        family, _, port = name.partition(":")
        if family not in ("4", "6") or not _digits(port, 5) or not _digits(fd, 4):
            raise BackendError(f"--listen-fds: {item[:40]!r} is not FAMILY:PORT=FD")
        found[name] = int(fd)
    return found
