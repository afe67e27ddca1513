"""The probe namespace: where the watchdog's second check starts, as a visitor's packet would.

A check from the VPS's own stack (``health.probe``) goes out through OUTPUT and
never meets PREROUTING or FORWARD, so a rule that drops forwarded traffic to
home (a firewall change, rp_filter, a broken route at home) leaves it passing
while every visitor times out. ``up vps`` therefore makes a small network
namespace with a veth pair to the VPS (:data:`VPS_DEVICE` on the VPS side,
:data:`PROBE_DEVICE` inside, on :data:`SUBNET`); a connection opened in it
arrives on the VPS like a visitor's: PREROUTING (DNAT), FORWARD, the tunnel,
home, and back through conntrack (no SNAT).

The watchdog stays in its own namespace: :func:`sockets` creates sockets
inside the probe namespace from a short-lived thread that ``setns``-es itself
(a socket keeps the namespace it was made in; only that thread moves). That
costs ``ctypes`` (~0.5 MB resident), imported only when the namespace exists.

Namespace names are global to the machine, so outside the initial network
namespace (a lab, a container) the name carries the VPS namespace's inode:
two labs never share one. Stdlib only (os, socket, threading): the lean
watchdog imports this.
"""

from __future__ import annotations

import os
import socket
import threading

BASE_NAME = "vpnoffload-probe"
#: The VPS end of the veth pair (<= 15 characters) and the end inside the probe namespace.
VPS_DEVICE = "vpnoffload-pb"
PROBE_DEVICE = "probe0"
#: A /30 from the benchmarking range (198.18.0.0/15): the VPS side gets the first host, the probe the second.
#: Override with VPNOFFLOAD_PROBE_SUBNET where it collides with something on the VPS.
DEFAULT_SUBNET = "198.18.255.252/30"
NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000


def subnet(env: "dict[str, str] | os._Environ[str] | None" = None) -> str:
    """The probe's /30 (``VPNOFFLOAD_PROBE_SUBNET`` or :data:`DEFAULT_SUBNET`)."""
    return (os.environ if env is None else env).get("VPNOFFLOAD_PROBE_SUBNET") or DEFAULT_SUBNET


def addresses(net: str | None = None) -> tuple[str, str]:
    """(VPS side, probe side) of the /30 ``net``: its first and second host addresses."""
    base, _, length = (net or subnet()).partition("/")
    if length != "30":
        raise ValueError(f"the probe subnet must be a /30, not {net!r}")
    a, b, c, d = (int(x) for x in base.split("."))
    first = ((a << 24) | (b << 16) | (c << 8) | d) & ~3
    return _dotted(first + 1), _dotted(first + 2)


def _dotted(n: int) -> str:
    return ".".join(str((n >> s) & 0xFF) for s in (24, 16, 8, 0))


def name(self_ns: str = "/proc/self/ns/net", init_ns: str = "/proc/1/ns/net") -> str:
    """The probe namespace's name for the network namespace this process runs in."""
    try:
        mine = os.stat(self_ns).st_ino
    except OSError:
        return BASE_NAME
    try:
        init = os.stat(init_ns).st_ino
    except OSError:  # pid 1 is out of reach (a sandbox): be unique rather than pretty
        init = None
    return BASE_NAME if mine == init else f"{BASE_NAME}-{mine:x}"


def path(ns_name: str | None = None) -> str:
    return os.path.join(NETNS_DIR, ns_name or name())


def present(ns_name: str | None = None, netns_dir: str = NETNS_DIR) -> bool:
    """Does the probe namespace exist (``up vps`` made it)? A name in /run/netns is a
    namespace only while a bind mount (nsfs, another device) sits on it: a plain file
    left behind when the mount went (made in a mount namespace that ended) is none."""
    where = os.path.join(netns_dir, ns_name or name())
    try:
        return os.stat(where).st_dev != os.stat(netns_dir).st_dev
    except OSError:
        return False


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        import ctypes  # lazy: ~0.5 MB, paid only by a watchdog that has a probe namespace

        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"setns into the probe namespace: {os.strerror(err)}")


def sockets(ns_path: str, specs: "list[tuple[int, int, int]]") -> "list[socket.socket | None]":
    """One socket per ``(family, type, proto)``, created inside the namespace at ``ns_path``.

    A spec the kernel refuses (a raw socket without CAP_NET_RAW) gives None;
    a namespace that cannot be entered raises OSError. The calling thread
    never leaves its namespace.
    """
    out: list = []
    error: list = []

    def inside() -> None:
        try:
            fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)  # this thread only, and it ends right after
            finally:
                os.close(fd)
        except OSError as exc:
            error.append(exc)
            return
        for family, kind, proto in specs:
            try:
                out.append(socket.socket(family, kind, proto))
            except OSError:
                out.append(None)

    worker = threading.Thread(target=inside, name="probe-ns")
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return out
