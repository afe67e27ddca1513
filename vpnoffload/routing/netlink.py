"""The real routing backend: pyroute2 over one netlink socket.

pyroute2 is imported inside :class:`Pyroute2Backend` only (the whole package costs
~23 MB RSS, and the watchdog must not pay it).
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from ipaddress import IPv4Address, ip_address, ip_network
from typing import Any

from vpnoffload.errors import BackendError
from vpnoffload.routing.state import (
    _GONE, _IFA_F_DADFAILED, _IFA_F_TENTATIVE, _ROUTE_TYPES, DAD_TIMEOUT, IPV6_DEFAULT_METRIC, Address, IPAddr,
    IPNetwork, Route, Rule, _Queries, _reason,
)

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
                    fwmark=m.get("fwmark"),
                    fwmask=m.get("fwmask") if m.get("fwmark") is not None else None,
                )
                for m in msgs
            ]
        return found

    def _rule(self, command: str, rule: Rule, tolerate: tuple[int, ...]) -> None:
        spec: dict[str, Any] = {"family": _family(rule.src), "table": rule.table, "priority": rule.priority}
        if rule.src.prefixlen:
            spec.update(src=str(rule.src.network_address), src_len=rule.src.prefixlen)
        if rule.fwmark is not None:
            spec.update(fwmark=rule.fwmark, fwmask=rule.fwmask if rule.fwmask is not None else 0xFFFFFFFF)
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
            time.sleep(0.05)

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


