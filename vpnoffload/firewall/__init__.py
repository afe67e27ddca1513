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

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from vpnoffload.errors import BackendError, ConfigError
from vpnoffload.model import CHAIN_PREFIX, HEALTH_MARK, Config, Service
from vpnoffload.plan import Action

#: Every chain whose name starts with this is vpnoffload's; nothing else is.
OWNED_PREFIX = f"{CHAIN_PREFIX}-"
#: The only tables vpnoffload writes (reading others would register them).
#: "filter6" and "nat6" are ip6tables' filter and nat tables.
TABLES = ("filter", "nat", "filter6", "nat6")
BUILTIN_CHAINS: Mapping[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter6": ("INPUT", "FORWARD", "OUTPUT"),
    "nat6": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}

DNAT_CHAIN = f"{OWNED_PREFIX}DNAT"
FORWARD_CHAIN = f"{OWNED_PREFIX}FWD"
INPUT_CHAIN = f"{OWNED_PREFIX}IN"
OUTPUT_CHAIN = f"{OWNED_PREFIX}OUT"

MARK_SHIFT = 20
MARK_MASK = 0xFF << MARK_SHIFT
MAX_SERVICES = 0xFF


@dataclass(frozen=True)
class Family:
    """What differs between the iptables (IPv4) and ip6tables (IPv6) halves of a ruleset."""

    version: int
    filter: str  # our name of its filter table
    nat: str
    ping: tuple[str, ...]  # matches an echo request
    port_unreachable: str  # the REJECT type for UDP

    def host(self, address: object) -> str:
        """One address as iptables-save prints it: 203.0.113.10/32, 2001:db8::80/128."""
        return f"{address}/{32 if self.version == 4 else 128}"

    def endpoint(self, address: object, port: int) -> str:
        """A DNAT destination: 198.51.100.2:8080, [fd00:88::2]:8080."""
        return f"{address}:{port}" if self.version == 4 else f"[{address}]:{port}"


IPV4 = Family(4, "filter", "nat", ("-p", "icmp", "-m", "icmp", "--icmp-type", "8"), "icmp-port-unreachable")
IPV6 = Family(6, "filter6", "nat6", ("-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", "128"),
              "icmp6-port-unreachable")


def table_label(table: str) -> str:
    """How people know a table: "iptables nat", "ip6tables filter" (for our "filter6")."""
    return f"ip6tables {table[:-1]}" if table.endswith("6") else f"iptables {table}"


def is_owned(chain: str) -> bool:
    return chain.startswith(OWNED_PREFIX)


def _jumps_to_owned(table: str, chain: str, args: tuple[str, ...]) -> bool:
    return is_owned(Rule(table, chain, args).target or "")


# --------------------------------------------------------------------------
# The data


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
        )

    def chain_names(self, table: str) -> list[str]:
        return sorted(c for t, c in self.chains if t == table)

    def rules_of(self, table: str, chain: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.table == table and r.chain == chain)

    def jumps(self, table: str) -> tuple[Rule, ...]:
        """Our rules in chains we do not own (built-in chains), in order."""
        return tuple(r for r in self.rules if r.table == table and not is_owned(r.chain))

    def is_empty(self) -> bool:
        return not self.chains and not self.rules

    def lines(self) -> list[str]:
        """``iptables-save``-like text, for ``status`` and for tests."""
        out: list[str] = []
        for table in sorted(self.tables()):
            out.append(f"*{table}")
            out += [f":{c}" for c in self.chain_names(table)]
            out += [f"-A {r.chain} {r.text}" for r in self.rules if r.table == table]
        return out


def empty_ruleset() -> Ruleset:
    """What ``down`` wants: nothing of vpnoffload's anywhere."""
    return Ruleset()


# --------------------------------------------------------------------------
# Desired state


def service_mark(config: Config, service: str) -> tuple[int, int]:
    """(value, mask) of the conntrack mark the VPS gives ``service``'s connections."""
    names = list(config.services)
    if service not in names:
        raise ConfigError(f"no service named {service!r}", field="services")
    index = names.index(service)
    if index >= MAX_SERVICES:
        raise ConfigError(f"at most {MAX_SERVICES} services are supported", field="services")
    return (index + 1) << MARK_SHIFT, MARK_MASK


def _mark_text(value: int, mask: int = MARK_MASK) -> str:
    return f"{value:#x}/{mask:#x}"  # the form iptables-save prints


def _port_match(proto: str, port: int) -> tuple[str, ...]:
    return ("-p", proto, "-m", proto, "--dport", str(port))


class _Builder:
    """Collects chains and rules; keeps the rule constructors short."""

    def __init__(self) -> None:
        self.chains: set[tuple[str, str]] = set()
        self.rules: list[Rule] = []

    def chain(self, table: str, name: str) -> None:
        self.chains.add((table, name))

    def add(self, table: str, chain: str, *args: str) -> None:
        self.rules.append(Rule(table, chain, tuple(args)))

    def build(self) -> Ruleset:
        return Ruleset(frozenset(self.chains), tuple(self.rules))


def vps_ruleset(config: Config, fallback: frozenset[str] = frozenset(),
                active: Mapping[str, str | None] | None = None) -> Ruleset:
    """The VPS's rules: DNAT each service to its home through the tunnel, mark the
    connection, and let through the tunnel only what was DNATed to a configured
    home address, port and protocol. No SNAT: home sees the visitor's address.

    Services named in ``fallback`` (home is down, says the watchdog): a web
    service's new connections are DNATed to the friendly-page server on the VPS
    instead; any other service's are refused at once (TCP reset / ICMP port
    unreachable), so no visitor waits on a dead home.

    ``active`` names the home box each service's new connections go to (the
    watchdog's choice among the service's homes; default its first home; None
    means fallback, like naming it in ``fallback``).

    Services with ``via = "proxy"`` are not DNATed (the VPS's web server
    connects to home itself); they only get the fail-fast OUTPUT rules.
    """
    active = dict(active or {})
    unknown = sorted((fallback | set(active)) - set(config.services))
    if unknown:
        raise ConfigError(f"no service named {unknown[0]!r}", field="services")
    fallback = fallback | {name for name, home in active.items() if home is None}
    for name, home in active.items():
        if home is not None and home not in config.services[name].homes:
            raise ConfigError(f"{home!r} is not one of {name}'s home boxes", field=f"services.{name}.homes")
    b = _Builder()
    _vps_family(b, config, IPV4, fallback, active)
    _vps_output(b, config, fallback, active)
    # With an IPv6 tunnel the same guard goes into ip6tables, whether or not a
    # service listens on IPv6 yet: the tunnel must not become a way out over IPv6.
    if config.tunnel.subnet6 is not None:
        _vps_family(b, config, IPV6, fallback, active)
    return b.build()


def _vps_family(b: "_Builder", config: Config, fam: Family, fallback: frozenset[str],
                active: Mapping[str, str | None]) -> None:
    """The DNAT, FORWARD and INPUT rules of one address family (see vps_ruleset)."""
    dev = config.tunnel.device
    b.chain(fam.nat, DNAT_CHAIN)
    b.add(fam.nat, "PREROUTING", "!", "-i", dev, "-j", DNAT_CHAIN)
    _vps_input(b, config, fam)
    b.chain(fam.filter, FORWARD_CHAIN)
    b.add(fam.filter, "FORWARD", "-j", FORWARD_CHAIN)
    # Replies and later packets of connections we DNATed (mark set), both ways.
    b.add(
        fam.filter, FORWARD_CHAIN,
        "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
        "-m", "connmark", "!", "--mark", _mark_text(0), "-j", "ACCEPT",
    )  # fmt: skip
    for svc in config.services.values():
        if svc.via == "proxy":
            continue  # the VPS's web server connects to home itself; see _vps_output
        if svc.listen_address.version != fam.version:
            continue
        mark = _mark_text(service_mark(config, svc.name)[0])
        home = _home_address(config, active.get(svc.name) or svc.home, fam)
        down = svc.name in fallback
        listen = ("-d", fam.host(svc.listen_address), *_port_match(svc.proto, svc.listen_port))
        b.add(fam.nat, DNAT_CHAIN, *listen, "-j", "CONNMARK", "--set-xmark", mark)
        to = fallback_address(config, svc) if down and svc.serves_page else fam.endpoint(home, svc.target_port)
        b.add(fam.nat, DNAT_CHAIN, *listen, "-j", "DNAT", "--to-destination", to)
        # Every home of the service stays allowed, so connections a swap moved
        # away from a healthy backup can finish there.
        for candidate in svc.homes:
            b.add(
                fam.filter, FORWARD_CHAIN,
                "-d", fam.host(_home_address(config, candidate, fam)), "-o", dev,
                *_port_match(svc.proto, svc.target_port),
                "-m", "conntrack", "--ctstate", "DNAT", "-m", "connmark", "--mark", mark,
                *(_refusal(svc, fam) if down and not svc.serves_page else ("-j", "ACCEPT")),
            )  # fmt: skip
    b.add(fam.filter, FORWARD_CHAIN, "-o", dev, "-j", "DROP")
    # The VPS is not the home box's way out to the internet.
    b.add(fam.filter, FORWARD_CHAIN, "-i", dev, "-j", "DROP")
    b.add(fam.filter, FORWARD_CHAIN, "-j", "RETURN")


def _home_address(config: Config, home: str, fam: Family) -> object:
    """A home box's tunnel address in ``fam`` (config validation guarantees an IPv6 one)."""
    return config.homes[home].address if fam.version == 4 else config.homes[home].address6


def fallback_address(config: Config, svc: Service) -> str:
    """Where a failed web service's visitors are sent: the page server on the VPS.

    An IPv6 service's visitors go to the page server's IPv6 socket (it listens
    on [::]) at the service's own listen address, which is on the VPS anyway.
    """
    port = config.watch.fallback_port + (1 if svc.page_over_tls else 0)
    if svc.ipv6:
        return IPV6.endpoint(svc.listen_address, port)
    return f"{config.vps.address}:{port}"


def _vps_input(b: "_Builder", config: Config, fam: Family = IPV4) -> None:
    """The VPS's own INPUT: the page server takes only what we DNATed to it, and a
    home box gets no new connections to the VPS itself (its sshd, say) through
    the tunnel; replies to the watchdog's checks are ESTABLISHED and pass."""
    dev = config.tunnel.device
    table = fam.filter
    b.chain(table, INPUT_CHAIN)
    b.add(table, "INPUT", "-j", INPUT_CHAIN)
    ports = (config.watch.fallback_port, config.watch.fallback_port + 1)
    for port in ports:
        b.add(table, INPUT_CHAIN, *_port_match("tcp", port), "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
    for port in ports:
        b.add(table, INPUT_CHAIN, *_port_match("tcp", port), "-j", "DROP")
    b.add(table, INPUT_CHAIN, "-i", dev, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
    b.add(table, INPUT_CHAIN, "-i", dev, "-j", "DROP")
    b.add(table, INPUT_CHAIN, "-j", "RETURN")


def _vps_output(b: "_Builder", config: Config, fallback: frozenset[str], active: Mapping[str, str | None]) -> None:
    """Fail fast for proxy services: while a home box is not to be used, the VPS's
    own web server gets an immediate reset when it connects to it, so it serves
    the friendly page at once instead of waiting out its connect timeout.

    A home is refused while its service is on fallback, or while it comes before
    the home the watchdog chose (those are the unhealthy ones). The watchdog's own
    checks carry HEALTH_MARK and still reach the real home, to notice recovery.
    """
    proxied = [s for s in config.services.values() if s.via == "proxy"]
    if not proxied:
        return
    b.chain("filter", OUTPUT_CHAIN)
    b.add("filter", "OUTPUT", "-j", OUTPUT_CHAIN)
    refused: dict[tuple[str, int], None] = {}
    for svc in proxied:
        chosen = None if svc.name in fallback else (active.get(svc.name) or svc.home)
        dead = svc.homes if chosen is None else svc.homes[: svc.homes.index(chosen)]
        refused.update({(str(config.homes[h].address), svc.target_port): None for h in dead})
    for address, port in refused:
        b.add(
            "filter", OUTPUT_CHAIN, "-d", f"{address}/32", *_port_match("tcp", port),
            "-m", "mark", "!", "--mark", f"{HEALTH_MARK:#x}/{HEALTH_MARK:#x}", "-j", "REJECT", "--reject-with", "tcp-reset",
        )  # fmt: skip
    b.add("filter", OUTPUT_CHAIN, "-j", "RETURN")


def _refusal(svc: Service, fam: Family = IPV4) -> tuple[str, ...]:
    reason = "tcp-reset" if svc.proto == "tcp" else fam.port_unreachable
    return ("-j", "REJECT", "--reject-with", reason)


def home_ruleset(config: Config, home: str) -> Ruleset:
    """A home box's rules: from the tunnel accept only the ports of its services
    (and ping, so the tunnel can be checked), and forward nothing from it.

    ICMP errors (PMTU discovery included) for our connections are RELATED and
    pass with them; other ICMP from the tunnel is dropped.
    """
    if home not in config.homes:
        raise ConfigError(f"no home named {home!r}", field="homes")
    b = _Builder()
    # Every service's port is open over IPv4, IPv6 ones too: the watchdog checks
    # each home through the tunnel at its IPv4 address.
    _home_family(b, config, home, IPV4, config.services_of(home))
    # A home with an IPv6 tunnel address gets the same closed door in ip6tables,
    # open only for the ports of its IPv6 services.
    if config.homes[home].address6 is not None:
        _home_family(b, config, home, IPV6, [s for s in config.services_of(home) if s in config.ipv6_services])
    return b.build()


def _home_family(b: "_Builder", config: Config, home: str, fam: Family, services: list[Service]) -> None:
    dev = config.tunnel.device
    address = _home_address(config, home, fam)
    b.chain(fam.filter, INPUT_CHAIN)
    b.add(fam.filter, "INPUT", "-i", dev, "-j", INPUT_CHAIN)
    b.add(fam.filter, INPUT_CHAIN, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
    ports = dict.fromkeys((s.proto, s.target_port) for s in services)
    for proto, port in ports:
        b.add(fam.filter, INPUT_CHAIN, "-d", fam.host(address), *_port_match(proto, port), "-j", "ACCEPT")
    b.add(fam.filter, INPUT_CHAIN, *fam.ping, "-j", "ACCEPT")
    b.add(fam.filter, INPUT_CHAIN, "-j", "DROP")
    b.chain(fam.filter, FORWARD_CHAIN)
    b.add(fam.filter, "FORWARD", "-i", dev, "-j", FORWARD_CHAIN)
    b.add(fam.filter, FORWARD_CHAIN, "-j", "DROP")


# --------------------------------------------------------------------------
# Backends


class Backend(Protocol):
    """Reads and writes what vpnoffload owns in the firewall. Use from one thread."""

    def read(self) -> Ruleset:
        """What vpnoffload owns now, read back from the kernel."""
        ...

    def write(self, table: str, content: Ruleset) -> None:
        """Make vpnoffload's chains and jumps in ``table`` exactly ``content``
        (its part in ``table``), in one atomic commit; leave all else alone."""
        ...


def table_content(content: Ruleset, table: str) -> Ruleset:
    """``content``, checked to hold nothing outside ``table`` (what ``write`` accepts)."""
    part = content.table(table)
    if part != content:
        raise ValueError(f"content for table {table} has rules of other tables")
    return part


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


def default_backend() -> Backend:
    """The real backend (imports python-iptables, ~20 MB, only when called)."""
    from vpnoffload.firewall.iptc import IptcBackend

    return IptcBackend()


# --------------------------------------------------------------------------
# Planning


def plan(backend: Backend, desired: Ruleset) -> list[Action]:
    """The actions that turn what ``backend`` holds now into ``desired``; [] if equal.

    Each changed table is rewritten in one atomic commit (the last action for
    that table, whose undo writes back what was read here). The actions before
    it only describe the individual changes for ``--dry-run``; they do nothing
    by themselves. Tables gaining or changing content go filter first (the
    FORWARD guard before the DNAT); tables being emptied go nat first.
    """
    current = backend.read()
    changed = [t for t in sorted(current.tables() | desired.tables(), key=_table_rank)
               if current.table(t) != desired.table(t)]  # fmt: skip
    filling = [t for t in changed if not desired.table(t).is_empty()]
    emptying = [t for t in reversed(changed) if desired.table(t).is_empty()]
    actions: list[Action] = []
    for table in filling + emptying:
        before, after = current.table(table), desired.table(table)
        changes = describe(before, after, table)
        actions += [Action(line, _nothing) for line in changes]
        actions.append(
            Action(
                f"{table_label(table)}: commit the {len(changes)} change(s) above in one step",
                partial(backend.write, table, after),
                partial(backend.write, table, before),
            )
        )
    return actions


def _table_rank(table: str) -> tuple[int, str]:
    return (TABLES.index(table) if table in TABLES else len(TABLES), table)


def _nothing() -> None:
    return None


def describe(before: Ruleset, after: Ruleset, table: str) -> list[str]:
    """Human lines for the difference of ``before`` and ``after`` in ``table``."""
    old, new = set(before.chain_names(table)), set(after.chain_names(table))
    gone = old - new
    lines = [f"{table_label(table)}: create chain {c}" for c in sorted(new - old)]
    # Our chains' content first, then the jumps into them; a deleted chain's
    # rules go with it and are not listed one by one.
    chains = sorted(
        {r.chain for r in before.table(table).rules + after.table(table).rules} - gone,
        key=lambda c: (not is_owned(c), c),
    )
    for chain in chains:
        lines += _chain_diff(before.rules_of(table, chain), after.rules_of(table, chain), table, chain)
    for chain in sorted(gone):
        count = len(before.rules_of(table, chain))
        lines.append(f"{table_label(table)}: delete chain {chain} and its {count} rule(s)")
    return lines


def _chain_diff(old: Iterable[Rule], new: Iterable[Rule], table: str, chain: str) -> list[str]:
    a, b = [r.text for r in old], [r.text for r in new]
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        out += [f"{table_label(table)} {chain}: delete {t}" for t in a[i1:i2] if op in ("delete", "replace")]
        out += [f"{table_label(table)} {chain}: {t}" for t in b[j1:j2] if op in ("insert", "replace")]
    return out
