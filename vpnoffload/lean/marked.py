"""The marked TCP connect: how the VPS's own checks reach a home that the fail-fast rules refuse.

While a ``via = "proxy"`` service is on fallback, ``VPNOFFLOAD-OUT`` resets every
connection from the VPS to its home, except those carrying :data:`HEALTH_MARK`:
the watchdog's health checks and the page server's offline copier, which must
see home come back. Both run in lean processes, so this is stdlib ``socket`` only.
"""

from __future__ import annotations

import socket

#: ``vpnoffload.model.HEALTH_MARK``, written here so the lean processes do not import
#: the model (dataclasses, ipaddress: ~2 MB); a unit test keeps the two equal.
HEALTH_MARK = 0x10000000


def connect(address: str, port: int, timeout: float, sock: socket.socket | None = None) -> socket.socket:
    """A TCP connection carrying HEALTH_MARK, so the fail-fast rule that refuses a
    dead home to the VPS's web server does not refuse the check that would see
    it come back. Without CAP_NET_ADMIN the mark is left off (a check run by hand).
    ``sock``, made elsewhere (in the probe namespace), is used as it is, unmarked."""
    if sock is None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, HEALTH_MARK)
        except PermissionError:
            pass
        except BaseException:
            sock.close()
            raise
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock
