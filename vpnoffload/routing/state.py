"""Policy routing on the home box and extra public addresses on the VPS.

Home box: the VPS DNATs visitors to the home's tunnel address without SNAT, so
the home sees the visitor's real address and would answer through its own
default route (wrong source, dropped). One rule, ``from <home tunnel address>
lookup ROUTE_TABLE priority RULE_PRIORITY``, sends exactly those replies to
table ROUTE_TABLE, whose only route is ``default dev vpnoffload0``; everything
else the box sends keeps using the main table.

The route names the device only, no ``via``: tun is a layer-3 point-to-point
device with no neighbours to resolve, OpenVPN's client sends whatever it reads
from tun to the server, and a ``via <server address>`` would fail to install
(ENETUNREACH) with any topology where that address is not on-link.

IPv6: a home box with an IPv6 tunnel address gets the same pair for it (``ip
-6 rule from <home address6> lookup ROUTE_TABLE`` and a default route ``dev
vpnoffload0`` in the IPv6 table ROUTE_TABLE), so IPv6 visitors are answered
through the tunnel too. The kernel gives an IPv6 route without a metric the
metric 1024; routes read back with it compare equal to ones without.

VPS: listen addresses other than the VPS's own are added as /32s (IPv6: /128s);
what was added is returned so the caller records it, and ``down`` removes only
that. A new IPv6 address is usable only once duplicate address detection has
passed, so adding one waits for that (about a second) and fails if another
host on the link already uses it.

vpnoffload owns every rule at RULE_PRIORITY that looks up ROUTE_TABLE, and
everything in ROUTE_TABLE; nothing else is ever changed. pyroute2 is imported
inside :class:`Pyroute2Backend` only: importing any part of it runs the whole
package (~23 MB RSS, there is no narrower import), which the watchdog must not pay.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_interface
from typing import Any, Protocol

from vpnoffload import plan
from vpnoffload.errors import BackendError, ConfigError
from vpnoffload.hometunnels import Slot
from vpnoffload.model import RULE_PRIORITY, ROUTE_TABLE, TUNNEL_DEVICE, Config

ANY = IPv4Network("0.0.0.0/0")
ANY6 = IPv6Network("::/0")
_ROUTE_TYPES = {1: "unicast", 6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw"}
#: The metric the kernel gives an IPv6 route added without one (IP6_RT_PRIO_USER).
IPV6_DEFAULT_METRIC = 1024
#: How long adding an IPv6 address waits for duplicate address detection.
DAD_TIMEOUT = 5.0
_IFA_F_DADFAILED = 0x08
_IFA_F_TENTATIVE = 0x40
IPNetwork = IPv4Network | IPv6Network
IPAddr = IPv4Address | IPv6Address

# ------------------------------------------------------------------ state as data


@dataclass(frozen=True)
class Rule:
    """A policy rule ``from <src> [fwmark <mark>/<mask>] lookup <table> priority <priority>``
    (IPv4 or IPv6, by ``src``)."""

    src: IPNetwork
    table: int = ROUTE_TABLE
    priority: int = RULE_PRIORITY
    fwmark: int | None = None
    fwmask: int | None = None

    def __str__(self) -> str:
        whole = self.src.prefixlen == self.src.max_prefixlen
        src = "all" if self.src.prefixlen == 0 else self.src.network_address if whole else self.src
        if self.src.version == 6 and self.src.prefixlen == 0:
            src = "all (IPv6)"
        mark = "" if self.fwmark is None else f" fwmark {self.fwmark:#x}/{(self.fwmask or 0xFFFFFFFF):#x}"
        return f"from {src}{mark} lookup {self.table} priority {self.priority}"


@dataclass(frozen=True)
class Route:
    """An IPv4 or IPv6 route (by ``dst``). Read-back routes may carry a gateway,
    metric or non-unicast kind."""

    dst: IPNetwork
    device: str | None
    table: int = ROUTE_TABLE
    gateway: IPAddr | None = None
    metric: int | None = None
    kind: str = "unicast"

    def __str__(self) -> str:
        words = [] if self.kind == "unicast" else [self.kind]
        words.append("default" if self.dst == ANY else "default (IPv6)" if self.dst == ANY6 else str(self.dst))
        if self.gateway is not None:
            words.append(f"via {self.gateway}")
        if self.device is not None:
            words.append(f"dev {self.device}")
        words.append(f"table {self.table}")
        if self.metric is not None:
            words.append(f"metric {self.metric}")
        return " ".join(words)


@dataclass(frozen=True)
class Address:
    """An IPv4 or IPv6 address on a device. ``as_record``/``from_record`` match the state file."""

    address: IPAddr
    device: str
    prefixlen: int = 32

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen} dev {self.device}"

    def as_record(self) -> list[str]:
        return [self.device, f"{self.address}/{self.prefixlen}"]

    @classmethod
    def from_record(cls, entry: Sequence[str] | "Address") -> "Address":
        """Accept an Address or a ``[device, "a.b.c.d/32"]`` (or ``"2001:db8::80/128"``) pair from the state file."""
        if isinstance(entry, Address):
            return entry
        try:
            device, text = entry
            iface = ip_interface(text)
        except ValueError:
            raise ConfigError(f"state file: bad address entry {list(entry)!r}", field="addresses") from None
        return cls(iface.ip, device, iface.network.prefixlen)


@dataclass(frozen=True)
class RoutingState:
    rules: tuple[Rule, ...] = ()
    routes: tuple[Route, ...] = ()

    def __str__(self) -> str:
        return "; ".join([f"rule {r}" for r in self.rules] + [f"route {r}" for r in self.routes])


def describe(state: RoutingState) -> str:
    return str(state)


def home_routing(config: Config, home: str, slot: Slot | None = None) -> RoutingState:
    """The rules and route that send replies from ``home``'s tunnel address back through the tunnel.

    ``slot`` is which of the box's tunnels this is (vpnoffload.hometunnels): its
    device, table, priority and mark; each tunnel's replies find their own."""
    slot = slot or Slot()
    if home not in config.homes:
        raise ConfigError(f"no home named {home!r} in the config", field="home")
    address, address6 = config.homes[home].address, config.homes[home].address6
    # By source: replies of local servers. By mark: replies of whatever the
    # home box forwards a tunnel connection to (a container, a VM), which carry
    # another source until conntrack undoes the home's own DNAT.
    own = {"table": slot.table, "priority": slot.priority}
    marked = {**own, "fwmark": slot.mark, "fwmask": slot.mask}
    rules = [Rule(IPv4Network(f"{address}/32"), **own), Rule(ANY, **marked)]
    routes = [Route(ANY, slot.device, slot.table)]
    if address6 is not None:
        rules += [Rule(IPv6Network(f"{address6}/128"), **own), Rule(ANY6, **marked)]
        routes.append(Route(ANY6, slot.device, slot.table))
    return RoutingState(rules=tuple(rules), routes=tuple(routes))


def vps_addresses(config: Config, interface: str) -> list[Address]:
    """The dedicated listen addresses, as /32s (IPv6: /128s) on ``interface``."""
    return [Address(a, interface, a.max_prefixlen) for a in config.dedicated_addresses()]


def _owned(rule: Rule, table: int = ROUTE_TABLE, priority: int = RULE_PRIORITY) -> bool:
    return rule.priority == priority and rule.table == table


# ------------------------------------------------------------------ backends


class RoutingBackend(Protocol):
    """The kernel operations routing needs, for IPv4 and IPv6 alike.

    Adds tolerate "already exists" and deletes tolerate "already gone", so a
    re-run and a rollback are safe; everything else raises BackendError.
    """

    def rules(self) -> list[Rule]: ...
    def add_rule(self, rule: Rule) -> None: ...
    def delete_rule(self, rule: Rule) -> None: ...
    def routes(self, table: int) -> list[Route]: ...
    def add_route(self, route: Route) -> None: ...
    def delete_route(self, route: Route) -> None: ...
    def devices(self) -> list[str]: ...
    def addresses(self) -> list[Address]: ...
    def add_address(self, address: Address) -> None: ...
    def delete_address(self, address: Address) -> None: ...
    def route_device(self, dst: IPv4Address) -> str | None: ...
    def has_device(self, device: str) -> bool: ...
    def find_interface(self, address: IPv4Address) -> str: ...
    def wait_for_address(self, device: str, address: IPv4Address, timeout: float = 30.0) -> None: ...


class _Queries:
    """Questions answered from the primitives, shared by the real and the fake backend."""

    def has_device(self: Any, device: str) -> bool:
        return device in self.devices()

    def find_interface(self: Any, address: IPv4Address) -> str:
        return find_interface(address, self)

    def wait_for_address(self: Any, device: str, address: IPv4Address, timeout: float = 30.0) -> None:
        wait_for_address(self, device, address, timeout)


def find_interface(address: IPv4Address, backend: RoutingBackend | None = None) -> str:
    """The interface that holds ``address``, else the one the kernel would route it out of.

    The second case covers clouds that 1:1-NAT the public address without
    configuring it on any interface.
    """
    if backend is None:
        from vpnoffload.routing.netlink import Pyroute2Backend

        with Pyroute2Backend() as real:
            return find_interface(address, real)
    for have in backend.addresses():
        if have.address == address:
            return have.device
    device = backend.route_device(address)
    if device is None or device == "lo":
        raise BackendError(
            f"no interface holds or routes to {address}; set it in the config", field="vps.interface"
        )
    return device


def wait_for_address(
    backend: RoutingBackend,
    device: str,
    address: IPv4Address,
    timeout: float = 30.0,
    interval: float = 0.2,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once ``device`` exists and has ``address``; BackendError after ``timeout`` seconds."""
    deadline = clock() + timeout
    while True:
        if any(a.device == device and a.address == address for a in backend.addresses()):
            return
        if clock() >= deadline:
            break
        plan.raise_if_interrupted()
        sleep(interval)
    if backend.has_device(device):
        raise BackendError(f"{device} exists but did not get {address} within {timeout:g} s (is this the right home?)")
    raise BackendError(f"{device} did not appear within {timeout:g} s (is OpenVPN connected?)")


# ------------------------------------------------------------------ errors


def _reason(code: int, device: str | None = None) -> str:
    """One readable phrase for a netlink errno."""
    if code == errno.ENODEV:
        hint = " (is the tunnel up?)" if device and device.startswith(TUNNEL_DEVICE[:-1]) else ""
        return f"no such device {device or ''}".rstrip() + hint
    if code in (errno.EPERM, errno.EACCES):
        return "permission denied (run as root)"
    if code == errno.ENETUNREACH:
        return "network unreachable (is the gateway on a connected subnet?)"
    if code == errno.EEXIST:
        return "it already exists"
    return os.strerror(code).lower()


_GONE = (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV)


