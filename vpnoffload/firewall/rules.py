"""Firewall rules as data: what vpnoffload wants, what it owns now, and the plan between.

Everything vpnoffload puts into iptables lives in chains named ``VPNOFFLOAD-*``
plus the jump rules that lead into them from other chains, so reading back
"what we own" and removing it never touches anybody else's rules.

A :class:`Rule` is one iptables rule written exactly as ``iptables-save``
prints it (``-d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j ...``). The
python-iptables backend (:mod:`vpnoffload.firewall.iptc`) writes these and
reads them back in the same form, so desired and actual state compare equal
and a second ``up`` plans nothing.

Connection marks: the VPS marks each DNATed connection with the service's
mark, ``(index + 1) << 20`` under :data:`MARK_MASK` (``0x0ff00000``), where
``index`` is the service's position in the config (so at most 255 services).
Only those bits of the conntrack mark are touched (``--set-xmark value/mask``);
the watchdog deletes a service's conntrack entries with
``conntrack -D --mark value/mask`` (see :func:`service_mark`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from vpnoffload.model import CHAIN_PREFIX
from vpnoffload.model import MAX_SERVICES as MAX_SERVICES  # the firewall package names it too

#: Every chain whose name starts with this is vpnoffload's; nothing else is.
OWNED_PREFIX = f"{CHAIN_PREFIX}-"
#: The only tables vpnoffload writes (reading others would register them).
#: "filter6", "nat6" and "mangle6" are ip6tables' tables. Only the home box
#: writes mangle (it marks connections from the tunnel, see HOME_MARK).
TABLES = ("filter", "nat", "mangle", "filter6", "nat6", "mangle6")
BUILTIN_CHAINS: Mapping[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "filter6": ("INPUT", "FORWARD", "OUTPUT"),
    "nat6": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle6": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
}

DNAT_CHAIN = f"{OWNED_PREFIX}DNAT"
FORWARD_CHAIN = f"{OWNED_PREFIX}FWD"
INPUT_CHAIN = f"{OWNED_PREFIX}IN"
OUTPUT_CHAIN = f"{OWNED_PREFIX}OUT"
MARK_CHAIN = f"{OWNED_PREFIX}MARK"
#: The VPS's counting rules (no verdict): packets from and to each home, resets per service.
EVIDENCE_IN_CHAIN = f"{OWNED_PREFIX}EVIN"
EVIDENCE_OUT_CHAIN = f"{OWNED_PREFIX}EVOUT"

MARK_SHIFT = 20
MARK_MASK = 0xFF << MARK_SHIFT


@dataclass(frozen=True)
class Family:
    """What differs between the iptables (IPv4) and ip6tables (IPv6) halves of a ruleset."""

    version: int
    filter: str  # our name of its filter table
    nat: str
    mangle: str
    ping: tuple[str, ...]  # matches an echo request
    port_unreachable: str  # the REJECT type for UDP

    def host(self, address: object) -> str:
        """One address as iptables-save prints it: 203.0.113.10/32, 2001:db8::80/128."""
        return f"{address}/{32 if self.version == 4 else 128}"

    def endpoint(self, address: object, port: int) -> str:
        """A DNAT destination: 198.51.100.2:8080, [fd00:88::2]:8080."""
        return f"{address}:{port}" if self.version == 4 else f"[{address}]:{port}"


IPV4 = Family(4, "filter", "nat", "mangle", ("-p", "icmp", "-m", "icmp", "--icmp-type", "8"), "icmp-port-unreachable")
IPV6 = Family(6, "filter6", "nat6", "mangle6", ("-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", "128"),
              "icmp6-port-unreachable")


def table_label(table: str) -> str:
    """How people know a table: "iptables nat", "ip6tables filter" (for our "filter6")."""
    return f"ip6tables {table[:-1]}" if table.endswith("6") else f"iptables {table}"


def is_owned(chain: str) -> bool:
    return chain.startswith(OWNED_PREFIX)


def _jumps_to_owned(table: str, chain: str, args: tuple[str, ...]) -> bool:
    return is_owned(Rule(table, chain, args).target or "")


@dataclass(frozen=True, order=True)
class Rule:
    """One rule of ``chain`` in ``table``; ``args`` as ``iptables-save`` prints them."""

    table: str
    chain: str
    args: tuple[str, ...]

    @property
    def target(self) -> str | None:
        """The chain or target after ``-j``/``-g`` (None for a rule without one)."""
        for flag in ("-j", "-g"):
            if flag in self.args:
                i = self.args.index(flag)
                return self.args[i + 1] if i + 1 < len(self.args) else None
        return None

    @property
    def text(self) -> str:
        return " ".join(self.args)

    @property
    def set_names(self) -> tuple[str, ...]:
        """The address sets this rule matches (``-m set --match-set NAME src``)."""
        return tuple(self.args[i + 1] for i, a in enumerate(self.args[:-1]) if a == "--match-set")

    def __str__(self) -> str:
        return f"{table_label(self.table)} {self.chain}: {self.text}"


@dataclass(frozen=True)
class Ruleset:
    """All that vpnoffload owns: its chains (table, name) and every rule in them,
    plus its jump rules in other chains.

    Rules are kept grouped by (table, chain) in a fixed order, and each chain's
    rules in their own order, so two rulesets with the same content are equal
    however they were built or read.
    """

    chains: frozenset[tuple[str, str]] = frozenset()
    rules: tuple[Rule, ...] = ()
    #: How to fill the address sets the rules name (``firewall.access.AddressSet``), for
    #: the backend that has to create one. Not compared: a set's name carries a digest of
    #: its content, so equal rules mean equal sets.
    sets: tuple[Any, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "chains", frozenset(self.chains))
        # Stable sort: keeps each chain's own rule order.
        object.__setattr__(self, "rules", tuple(sorted(self.rules, key=lambda r: (r.table, r.chain))))
        for table, chain in self.chains:
            if not is_owned(chain):
                raise ValueError(f"{table} chain {chain} is not named {OWNED_PREFIX}*")
        for rule in self.rules:
            self._check(rule)

    def _check(self, rule: Rule) -> None:
        key = (rule.table, rule.chain)
        if is_owned(rule.chain):
            if key not in self.chains:
                raise ValueError(f"{rule}: chain {rule.chain} is not in the ruleset")
            return
        # A rule outside our chains is recognised as ours only by its jump target.
        target = rule.target
        if target is None or (rule.table, target) not in self.chains:
            raise ValueError(f"{rule}: a rule outside {OWNED_PREFIX}* chains must jump to one of ours")

    def tables(self) -> set[str]:
        return {t for t, _ in self.chains} | {r.table for r in self.rules}

    def table(self, name: str) -> "Ruleset":
        """The part of this ruleset in table ``name``."""
        return Ruleset(
            frozenset(c for c in self.chains if c[0] == name),
            tuple(r for r in self.rules if r.table == name),
            tuple(s for s in self.sets if s.table == name),
        )

    def chain_names(self, table: str) -> list[str]:
        return sorted(c for t, c in self.chains if t == table)

    def rules_of(self, table: str, chain: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.table == table and r.chain == chain)

    def jumps(self, table: str) -> tuple[Rule, ...]:
        """Our rules in chains we do not own (built-in chains), in order."""
        return tuple(r for r in self.rules if r.table == table and not is_owned(r.chain))

    def set_names(self, table: str) -> list[str]:
        """The address sets the rules of ``table`` match, in order, once each."""
        return list(dict.fromkeys(n for r in self.rules if r.table == table for n in r.set_names))

    def is_empty(self) -> bool:
        return not self.chains and not self.rules

    def lines(self) -> list[str]:
        """``iptables-save``-like text, for ``status`` and for tests."""
        out: list[str] = []
        for table in sorted(self.tables()):
            out.append(f"*{table}")
            out += [f":{c}" for c in self.chain_names(table)]
            out += [f"-A {r.chain} {r.text}" for r in self.rules if r.table == table]
            out += [f"# set {s.name}: {s.describe()}" for s in self.sets if s.table == table]
        return out


def empty_ruleset() -> Ruleset:
    """What ``down`` wants: nothing of vpnoffload's anywhere."""
    return Ruleset()


class Backend(Protocol):
    """Reads and writes what vpnoffload owns in the firewall. Use from one thread."""

    def read(self) -> Ruleset:
        """What vpnoffload owns now, read back from the kernel."""
        ...

    def write(self, table: str, content: Ruleset) -> None:
        """Make vpnoffload's chains and jumps in ``table`` exactly ``content``
        (its part in ``table``), in one atomic commit; leave all else alone."""
        ...

    def preload(self) -> None:
        """Load whatever the backend needs (libraries), so a later write does not wait for it."""
        ...


def table_content(content: Ruleset, table: str) -> Ruleset:
    """``content``, checked to hold nothing outside ``table`` (what ``write`` accepts)."""
    part = content.table(table)
    if part != content or len(part.sets) != len(content.sets):
        raise ValueError(f"content for table {table} has rules of other tables")
    return part


