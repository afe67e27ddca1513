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
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_interface, ip_network
from typing import Any, Protocol

from vpnoffload.errors import BackendError, ConfigError
from vpnoffload.model import RULE_PRIORITY, ROUTE_TABLE, TUNNEL_DEVICE, Config
from vpnoffload.plan import Action

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
    """A policy rule ``from <src> lookup <table> priority <priority>`` (IPv4 or IPv6, by ``src``)."""

    src: IPNetwork
    table: int = ROUTE_TABLE
    priority: int = RULE_PRIORITY

    def __str__(self) -> str:
        whole = self.src.prefixlen == self.src.max_prefixlen
        src = "all" if self.src.prefixlen == 0 else self.src.network_address if whole else self.src
        if self.src.version == 6 and self.src.prefixlen == 0:
            src = "all (IPv6)"
        return f"from {src} lookup {self.table} priority {self.priority}"


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


def home_routing(config: Config, home: str) -> RoutingState:
    """The rule and route that send replies from ``home``'s tunnel address back through the tunnel."""
    if home not in config.homes:
        raise ConfigError(f"no home named {home!r} in the config", field="home")
    address, address6 = config.homes[home].address, config.homes[home].address6
    rules = [Rule(IPv4Network(f"{address}/32"))]
    routes = [Route(ANY, config.tunnel.device)]
    if address6 is not None:
        rules.append(Rule(IPv6Network(f"{address6}/128")))
        routes.append(Route(ANY6, config.tunnel.device))
    return RoutingState(rules=tuple(rules), routes=tuple(routes))


def vps_addresses(config: Config, interface: str) -> list[Address]:
    """The dedicated listen addresses, as /32s (IPv6: /128s) on ``interface``."""
    return [Address(a, interface, a.max_prefixlen) for a in config.dedicated_addresses()]


def _owned(rule: Rule) -> bool:
    return rule.priority == RULE_PRIORITY and rule.table == ROUTE_TABLE


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
        sleep(interval)
    if backend.has_device(device):
        raise BackendError(f"{device} exists but did not get {address} within {timeout:g} s (is this the right home?)")
    raise BackendError(f"{device} did not appear within {timeout:g} s (is OpenVPN connected?)")


# ------------------------------------------------------------------ planning


def plan_routing(backend: RoutingBackend, desired: RoutingState) -> list[Action]:
    """Actions that turn our rules and our table into ``desired``; [] when already there."""
    for item in (*desired.rules, *desired.routes):
        if item.table != ROUTE_TABLE or getattr(item, "priority", RULE_PRIORITY) != RULE_PRIORITY:
            raise ValueError(f"{item} is outside what vpnoffload owns")
    rules = [r for r in backend.rules() if _owned(r)]
    routes = backend.routes(ROUTE_TABLE)
    # Stale entries go first (a stale default route would block the new one);
    # the table is filled before the rule points at it.
    return (
        [_delete_rule(backend, r) for r in rules if r not in desired.rules]
        + [_delete_route(backend, r) for r in routes if r not in desired.routes]
        + [_add_route(backend, r) for r in desired.routes if r not in routes]
        + [_add_rule(backend, r) for r in desired.rules if r not in rules]
    )


def plan_routing_down(backend: RoutingBackend) -> list[Action]:
    """Remove our rule(s), then everything in our table; nothing else."""
    return plan_routing(backend, RoutingState())


def plan_addresses(
    backend: RoutingBackend, desired: Sequence[Address], owned: Iterable[Address | Sequence[str]] = ()
) -> tuple[list[Action], list[Address]]:
    """Add each desired address the host does not have; drop owned ones no longer desired.

    ``owned`` is what an earlier ``up`` recorded. Returns the actions and the
    addresses vpnoffload owns once they are applied: record that list (it
    replaces the old one) so ``down`` removes exactly those. An address that is
    already on any interface was put there by someone else and is left alone.
    """
    present = backend.addresses()
    owned_list = [Address.from_record(o) for o in owned]
    wanted = {a.address for a in desired}
    actions = [_remove_address(backend, a) for a in owned_list if a.address not in wanted and a in present]
    owned_after: list[Address] = []
    for want in desired:
        if not any(p.address == want.address for p in present):
            actions.append(_add_address(backend, want))
            owned_after.append(want)
        elif want in owned_list and want in present:
            owned_after.append(want)
    return actions, owned_after


def plan_remove_addresses(backend: RoutingBackend, recorded: Iterable[Address | Sequence[str]]) -> list[Action]:
    """For ``down``: remove the recorded addresses that are still there."""
    present = backend.addresses()
    return [_remove_address(backend, a) for a in map(Address.from_record, recorded) if a in present]


def _add_rule(backend: RoutingBackend, rule: Rule) -> Action:
    return Action(f"add rule {rule}", lambda: backend.add_rule(rule), lambda: backend.delete_rule(rule))


def _delete_rule(backend: RoutingBackend, rule: Rule) -> Action:
    return Action(f"delete rule {rule}", lambda: backend.delete_rule(rule), lambda: backend.add_rule(rule))


def _add_route(backend: RoutingBackend, route: Route) -> Action:
    return Action(f"add route {route}", lambda: backend.add_route(route), lambda: backend.delete_route(route))


def _delete_route(backend: RoutingBackend, route: Route) -> Action:
    return Action(f"delete route {route}", lambda: backend.delete_route(route), lambda: backend.add_route(route))


def _add_address(backend: RoutingBackend, addr: Address) -> Action:
    return Action(f"add address {addr}", lambda: backend.add_address(addr), lambda: backend.delete_address(addr))


def _remove_address(backend: RoutingBackend, addr: Address) -> Action:
    return Action(f"remove address {addr}", lambda: backend.delete_address(addr), lambda: backend.add_address(addr))


# ------------------------------------------------------------------ errors


def _reason(code: int, device: str | None = None) -> str:
    """One readable phrase for a netlink errno."""
    if code == errno.ENODEV:
        hint = " (is the tunnel up?)" if device == TUNNEL_DEVICE else ""
        return f"no such device {device or ''}".rstrip() + hint
    if code in (errno.EPERM, errno.EACCES):
        return "permission denied (run as root)"
    if code == errno.ENETUNREACH:
        return "network unreachable (is the gateway on a connected subnet?)"
    if code == errno.EEXIST:
        return "it already exists"
    return os.strerror(code).lower()


_GONE = (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV)


# ------------------------------------------------------------------ pyroute2


class Pyroute2Backend(_Queries):
    """The real backend: one netlink socket, opened on first use.

    ``netns`` names a namespace (``ip netns`` style) to work in, for tests; it
    is never created. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._conn: Any = None

    def __enter__(self) -> "Pyroute2Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _ipr(self) -> Any:
        if self._conn is None:
            from pyroute2 import IPRoute  # lazy: see the module docstring

            where = f" in network namespace {self.netns}" if self.netns else ""
            try:
                # flags=0: fail on a missing namespace instead of creating it.
                self._conn = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
            except OSError as exc:
                raise BackendError(f"cannot open netlink{where}: {exc.strerror or exc}") from exc
        return self._conn

    def _call(self, what: str, fn: Callable[[], Any], tolerate: tuple[int, ...] = (), device: str | None = None) -> Any:
        """Run one netlink request; translate errors, except the errnos that mean "already so"."""
        from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError

        for _ in range(3):
            try:
                return fn()
            except NetlinkDumpInterrupted:
                continue  # the table changed mid-dump; dumping again is the cure
            except NetlinkError as exc:
                if exc.code in tolerate:
                    return None
                raise BackendError(f"cannot {what}: {_reason(exc.code, device)}") from exc
            except OSError as exc:
                raise BackendError(f"cannot {what}: {exc.strerror or exc}") from exc
        raise BackendError(f"cannot {what}: the kernel kept changing it while it was read")

    def _names(self) -> dict[int, str]:
        links = self._call("list devices", lambda: self._ipr().get_links())
        return {link["index"]: link.get("ifname") for link in links}

    def _index(self, device: str, what: str) -> int | None:
        found = self._call(what, lambda: self._ipr().link_lookup(ifname=device))
        return found[0] if found else None

    # rules

    def rules(self) -> list[Rule]:
        found: list[Rule] = []
        for family, anywhere in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            msgs = self._call("list rules", lambda family=family: self._ipr().get_rules(family=family))
            found += [
                Rule(
                    src=ip_network(f"{m.get('src') or anywhere}/{m['src_len']}"),
                    table=m.get("table") or 0,
                    priority=m.get("priority") or 0,
                )
                for m in msgs
            ]
        return found

    def _rule(self, command: str, rule: Rule, tolerate: tuple[int, ...]) -> None:
        spec: dict[str, Any] = {"family": _family(rule.src), "table": rule.table, "priority": rule.priority}
        if rule.src.prefixlen:
            spec.update(src=str(rule.src.network_address), src_len=rule.src.prefixlen)
        verb = "add" if command == "add" else "delete"
        self._call(f"{verb} rule {rule}", lambda: self._ipr().rule(command, **spec), tolerate)

    def add_rule(self, rule: Rule) -> None:
        self._rule("add", rule, (errno.EEXIST,))

    def delete_rule(self, rule: Rule) -> None:
        self._rule("del", rule, _GONE)

    # routes

    def routes(self, table: int) -> list[Route]:
        names = self._names()
        found: list[Route] = []
        for family, anywhere in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            msgs = self._call(f"list routes in table {table}",
                              lambda family=family: self._ipr().get_routes(family=family, table=table))
            found += [_route_from(m, names, anywhere) for m in msgs if m.get("table") == table]
        return found

    def _route(self, command: str, route: Route, tolerate: tuple[int, ...]) -> None:
        verb = "add" if command == "add" else "delete"
        what = f"{verb} route {route}"
        spec: dict[str, Any] = {"family": _family(route.dst), "dst": str(route.dst), "table": route.table}
        if route.device is not None:
            index = self._index(route.device, what)
            if index is None:
                if command == "del":
                    return  # the device is gone, and its routes went with it
                raise BackendError(f"cannot {what}: {_reason(errno.ENODEV, route.device)}")
            spec["oif"] = index
        if route.gateway is not None:
            spec["gateway"] = str(route.gateway)
        if route.metric is not None:
            spec["priority"] = route.metric
        if route.kind != "unicast":
            spec["type"] = route.kind
        self._call(what, lambda: self._ipr().route(command, **spec), tolerate, route.device)

    def add_route(self, route: Route) -> None:
        self._route("add", route, (errno.EEXIST,))

    def delete_route(self, route: Route) -> None:
        self._route("del", route, _GONE)

    # addresses and devices

    def devices(self) -> list[str]:
        return list(self._names().values())

    def addresses(self) -> list[Address]:
        names = self._names()
        found: list[Address] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            msgs = self._call("list addresses", lambda family=family: self._ipr().get_addr(family=family))
            found += [Address(ip_address(m.get("address")), names.get(m["index"], "?"), m["prefixlen"]) for m in msgs]
        return found

    def _addr(self, command: str, addr: Address, tolerate: tuple[int, ...]) -> None:
        what = f"{'add' if command == 'add' else 'remove'} address {addr}"
        index = self._index(addr.device, what)
        if index is None:
            if command == "del":
                return  # gone with its device
            raise BackendError(f"cannot {what}: {_reason(errno.ENODEV, addr.device)}")
        spec = {"index": index, "address": str(addr.address), "prefixlen": addr.prefixlen,
                "family": _family(addr.address)}
        self._call(what, lambda: self._ipr().addr(command, **spec), tolerate, addr.device)

    def add_address(self, address: Address) -> None:
        self._addr("add", address, (errno.EEXIST,))
        if address.address.version == 6:
            self._wait_for_dad(address)

    def _wait_for_dad(self, addr: Address, timeout: float = DAD_TIMEOUT) -> None:
        """Return once the new IPv6 address passed duplicate address detection
        (until then the kernel does not accept traffic to it)."""
        deadline = time.monotonic() + timeout
        while True:
            flags = self._address_flags(addr)
            if flags is None:
                return  # gone again (removed by someone); nothing to wait for
            if flags & _IFA_F_DADFAILED:
                self.delete_address(addr)
                raise BackendError(f"cannot add address {addr}: another host on the link already uses it "
                                   "(duplicate address detection failed)")
            if not flags & _IFA_F_TENTATIVE:
                return
            if time.monotonic() >= deadline:
                raise BackendError(f"address {addr} is still tentative after {timeout:g} s "
                                   "(duplicate address detection did not finish)")
            time.sleep(0.1)

    def _address_flags(self, addr: Address) -> int | None:
        msgs = self._call("list addresses", lambda: self._ipr().get_addr(family=socket.AF_INET6))
        for m in msgs:
            if ip_address(m.get("address")) == addr.address:
                return int(m["flags"]) | int(m.get("IFA_FLAGS") or 0)  # the header has the 8 old bits
        return None

    def delete_address(self, address: Address) -> None:
        self._addr("del", address, _GONE)

    def route_device(self, dst: IPv4Address) -> str | None:
        unreachable = (errno.ENETUNREACH, errno.EHOSTUNREACH)
        msgs = self._call(f"look up the route to {dst}", lambda: self._ipr().route("get", dst=str(dst)), unreachable)
        for m in msgs or ():
            if m.get("oif"):
                return self._names().get(m.get("oif"))
        return None


def _family(value: IPNetwork | IPAddr) -> int:
    return socket.AF_INET6 if value.version == 6 else socket.AF_INET


def _route_from(m: Any, names: dict[int, str], anywhere: str) -> Route:
    """A Route from a netlink message (IPv6's default metric 1024 reads as none)."""
    dst = ip_network(f"{m.get('dst') or anywhere}/{m['dst_len']}")
    metric = m.get("priority")
    if dst.version == 6 and metric == IPV6_DEFAULT_METRIC:
        metric = None
    return Route(
        dst=dst,
        device=names.get(m.get("oif")) if m.get("oif") else None,
        table=m.get("table"),
        gateway=ip_address(m.get("gateway")) if m.get("gateway") else None,
        metric=metric,
        kind=_ROUTE_TYPES.get(m["type"], str(m["type"])),
    )


# ------------------------------------------------------------------ fake


class FakeRoutingBackend(_Queries):
    """An in-memory kernel for unit tests; records every change in ``calls``.

    ``default_device`` is what :meth:`route_device` answers for an address not
    held locally (None: unreachable). Adding to a missing device fails like
    the kernel does; adds and deletes are as tolerant as the real backend's.
    """

    def __init__(
        self,
        devices: Iterable[str] = ("lo",),
        rules: Iterable[Rule] = (),
        routes: Iterable[Route] = (),
        addresses: Iterable[Address] = (),
        default_device: str | None = None,
    ) -> None:
        self.device_list = list(devices)
        self.rule_list = list(rules)
        self.route_list = list(routes)
        self.address_list = list(addresses)
        self.default_device = default_device
        self.calls: list[str] = []

    def _need(self, device: str | None, what: str) -> None:
        if device is not None and device not in self.device_list:
            raise BackendError(f"cannot {what}: {_reason(errno.ENODEV, device)}")

    def rules(self) -> list[Rule]:
        return list(self.rule_list)

    def add_rule(self, rule: Rule) -> None:
        self.calls.append(f"add rule {rule}")
        if rule not in self.rule_list:
            self.rule_list.append(rule)

    def delete_rule(self, rule: Rule) -> None:
        self.calls.append(f"delete rule {rule}")
        if rule in self.rule_list:
            self.rule_list.remove(rule)

    def routes(self, table: int) -> list[Route]:
        return [r for r in self.route_list if r.table == table]

    def add_route(self, route: Route) -> None:
        self.calls.append(f"add route {route}")
        self._need(route.device, f"add route {route}")
        if route not in self.route_list:
            self.route_list.append(route)

    def delete_route(self, route: Route) -> None:
        self.calls.append(f"delete route {route}")
        if route in self.route_list:
            self.route_list.remove(route)

    def devices(self) -> list[str]:
        return list(self.device_list)

    def addresses(self) -> list[Address]:
        return list(self.address_list)

    def add_address(self, address: Address) -> None:
        self.calls.append(f"add address {address}")
        self._need(address.device, f"add address {address}")
        if address not in self.address_list:
            self.address_list.append(address)

    def delete_address(self, address: Address) -> None:
        self.calls.append(f"remove address {address}")
        if address in self.address_list:
            self.address_list.remove(address)

    def route_device(self, dst: IPv4Address) -> str | None:
        if any(a.address == dst for a in self.address_list):
            return "lo"
        return self.default_device
