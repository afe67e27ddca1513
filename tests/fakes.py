"""In-memory stand-ins for vpnoffload's OS backends, for unit tests only."""

from __future__ import annotations

from dataclasses import dataclass, field

from vpnoffload.errors import BackendError
import errno
from collections.abc import Iterable
from ipaddress import IPv4Address

from vpnoffload.routing.state import Address, Route, Rule as RouteRule, _Queries, _reason
from vpnoffload.firewall.rules import (
    BUILTIN_CHAINS, TABLES, Rule, Ruleset, _jumps_to_owned, is_owned, table_content, table_label,
)


@dataclass
class FakeBackend:
    """An in-memory firewall for unit tests: ``tables[table][chain]`` is a list of
    rule argument tuples. Behaves like :class:`IptcBackend` for everything
    vpnoffload does, including leaving foreign chains and rules alone.

    ``fail_tables``: writes to these tables raise BackendError (nothing changes).
    ``writes``: the tables written, in order.
    """

    tables: dict[str, dict[str, list[tuple[str, ...]]]] = field(default_factory=dict)
    fail_tables: set[str] = field(default_factory=set)
    writes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for table, builtins in BUILTIN_CHAINS.items():
            chains = self.tables.setdefault(table, {})
            for chain in builtins:
                chains.setdefault(chain, [])

    def preload(self) -> None:
        return None

    def read(self) -> Ruleset:
        chains: set[tuple[str, str]] = set()
        rules: list[Rule] = []
        for table in TABLES:
            for chain, entries in self.tables[table].items():
                owned = is_owned(chain)
                if owned:
                    chains.add((table, chain))
                rules += [Rule(table, chain, a) for a in entries if owned or _jumps_to_owned(table, chain, a)]
        return Ruleset(frozenset(chains), tuple(rules))

    def write(self, table: str, content: Ruleset) -> None:
        content = table_content(content, table)
        if table in self.fail_tables:
            raise BackendError(f"{table_label(table)}: cannot commit: simulated failure")
        chains = {name: list(entries) for name, entries in self.tables[table].items()}
        for name, entries in chains.items():
            if not is_owned(name):
                entries[:] = [a for a in entries if not _jumps_to_owned(table, name, a)]
        for name in [n for n in chains if is_owned(n)]:
            del chains[name]
        for name in content.chain_names(table):
            chains[name] = [r.args for r in content.rules_of(table, name)]
        jumps: dict[str, list[tuple[str, ...]]] = {}
        for rule in content.jumps(table):
            if rule.chain not in chains:
                raise BackendError(f"{table_label(table)}: no chain {rule.chain}")
            jumps.setdefault(rule.chain, []).append(rule.args)
        for name, entries in jumps.items():
            chains[name][:0] = entries  # jumps go first, like IptcBackend
        self.tables[table] = chains
        self.writes.append(table)

    def dump(self) -> dict[str, dict[str, list[tuple[str, ...]]]]:
        """A deep copy of every table, to compare before and after."""
        return {t: {c: list(r) for c, r in chains.items()} for t, chains in self.tables.items()}




class FakeRoutingBackend(_Queries):
    """An in-memory kernel for unit tests; records every change in ``calls``.

    ``default_device`` is what :meth:`route_device` answers for an address not
    held locally (None: unreachable). Adding to a missing device fails like
    the kernel does; adds and deletes are as tolerant as the real backend's.
    """

    def __init__(
        self,
        devices: Iterable[str] = ("lo",),
        rules: Iterable[RouteRule] = (),
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

    def rules(self) -> list[RouteRule]:
        return list(self.rule_list)

    def add_rule(self, rule: RouteRule) -> None:
        self.calls.append(f"add rule {rule}")
        if rule not in self.rule_list:
            self.rule_list.append(rule)

    def delete_rule(self, rule: RouteRule) -> None:
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
