"""The nftables backend: vpnoffload's rules in its own nf_tables tables, for hosts
without the legacy x_tables (nft-only kernels, RHEL 9 style).

Everything lives in ``table ip vpnoffload`` (our "filter", "nat" and, where the
policy uses it, "mangle") and ``table ip6 vpnoffload`` ("filter6", ...); nothing else of the host's ruleset
is read or changed. Inside it:

* a built-in chain we have rules in becomes a base chain named
  ``<table>-<CHAIN>`` (``nat-PREROUTING``, ``filter-FORWARD``) on the hook and
  priority of its iptables counterpart (:data:`HOOKS`), policy accept: our chain
  decides only by its own drops and rejects, as the legacy one did;
* an owned chain is a regular chain of the same name (``VPNOFFLOAD-FWD``);
* rules are translated by :mod:`.nftexpr` and read back from the expressions.

One nft table holds "filter", "nat" and "mangle", so an owned chain's iptables
table is where its jumps come from (a chain in nat is reached from a ``nat-*``
base chain). A chain nothing leads to is read as filter's, so writing one into
another table is refused; so is one name in two tables.

``write`` is one ``nft -j -f -`` transaction (atomic in the kernel): flush the
table's chains, delete those that go, add the new ones and every rule; for
filter also the access-control sets (:mod:`.access`): new ones created and
filled, unused ones deleted, in the same transaction. When the
last chain goes, the table goes, so ``down`` leaves ``nft list ruleset`` as it
was before ``up``. A change someone else made to our table between our read and
our write makes the transaction fail as a whole (a chain to delete is gone),
never half-apply.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vpnoffload.errors import BackendError
from vpnoffload.firewall import access, nftlock
from vpnoffload.firewall.nftexpr import meter_set, to_nft
from vpnoffload.firewall.nftread import from_nft
from vpnoffload.lean import counters
from vpnoffload.firewall.rules import BUILTIN_CHAINS, TABLES, Rule, Ruleset, is_owned, table_content, table_label

TABLE = "vpnoffload"
FAMILIES = ("ip", "ip6")
NFT_HINT = "apt-get install nftables (or dnf install nftables)"
#: (type, hook, priority) of each built-in chain, as iptables-nft registers them.
HOOKS: dict[tuple[str, str], tuple[str, str, int]] = {
    ("filter", "INPUT"): ("filter", "input", 0),
    ("filter", "FORWARD"): ("filter", "forward", 0),
    ("filter", "OUTPUT"): ("filter", "output", 0),
    ("nat", "PREROUTING"): ("nat", "prerouting", -100),  # dstnat
    ("nat", "INPUT"): ("nat", "input", 100),
    ("nat", "OUTPUT"): ("nat", "output", -100),
    ("nat", "POSTROUTING"): ("nat", "postrouting", 100),  # srcnat
    ("mangle", "PREROUTING"): ("filter", "prerouting", -150),  # priority mangle
    ("mangle", "INPUT"): ("filter", "input", -150),
    ("mangle", "FORWARD"): ("filter", "forward", -150),
    ("mangle", "OUTPUT"): ("route", "output", -150),  # a changed mark re-routes, as in iptables
    ("mangle", "POSTROUTING"): ("filter", "postrouting", -150),
}

Runner = Callable[[list[str], str | None], str]


def family_of(table: str) -> str:
    """The nft family holding one of our tables: "ip" for filter/nat, "ip6" for filter6/nat6."""
    return "ip6" if table.endswith("6") else "ip"


def _kind(table: str) -> str:
    return table.removesuffix("6")


def _table_in(family: str, kind: str) -> str:
    return f"{kind}6" if family == "ip6" else kind


def base_chain_name(table: str, chain: str) -> str:
    """nft name of built-in ``chain`` of ``table``: ("nat6", "PREROUTING") -> "nat-PREROUTING"."""
    return f"{_kind(table)}-{chain}"


def run_nft(argv: list[str], input: str | None = None) -> str:
    """``nft`` with ``argv`` through :func:`vpnoffload.proc.run`; its stdout."""
    from vpnoffload.proc import run

    return run(["nft", *argv], input=input, hint=NFT_HINT).stdout


# --------------------------------------------------------------------------
# What our table in one family holds


@dataclass
class Snapshot:
    """Our nft table in one family, read back: does it exist, which iptables table
    each of its chains belongs to, and the rules as a Ruleset."""

    family: str
    exists: bool = False
    owner: dict[str, str] = field(default_factory=dict)  # nft chain name -> our table name
    ruleset: Ruleset = field(default_factory=Ruleset)
    sets: set[str] = field(default_factory=set)  # names of the sets in our table (access control)
    counters: set[str] = field(default_factory=set)  # names of its counter objects (the VPS's counts)


def parse_table(family: str, listing: dict[str, Any]) -> Snapshot:
    """A :class:`Snapshot` from ``nft -j list table <family> vpnoffload`` output (or
    ``nft -j list ruleset``: only our table in ``family`` is looked at)."""

    def ours(kind: str) -> list[dict[str, Any]]:
        return [i[kind] for i in listing.get("nftables", [])
                if kind in i and i[kind].get("table") == TABLE and i[kind].get("family") == family]

    chains, found = ours("chain"), ours("rule")
    sets = {s["name"] for s in ours("set")}
    for name in sets:
        if not access.is_our_set(name):
            raise BackendError(f"nftables table {family} {TABLE}: set {name} is not vpnoffload's")
    named = {c["name"] for c in ours("counter")}
    for name in named:
        if not counters.is_counter(name):
            raise BackendError(f"nftables table {family} {TABLE}: counter {name} is not vpnoffload's")
    builtin = {base_chain_name(t, c): (t, c) for t in TABLES if family_of(t) == family for c in BUILTIN_CHAINS[t]}
    owner: dict[str, str] = {}
    for chain in chains:
        name = chain["name"]
        if "hook" in chain:
            if name not in builtin:
                raise BackendError(f"nftables table {family} {TABLE}: unknown base chain {name} (not vpnoffload's)")
            owner[name] = builtin[name][0]
        elif not is_owned(name):
            raise BackendError(f"nftables table {family} {TABLE}: chain {name} is not vpnoffload's")
    targets: dict[str, list[str]] = {}
    for rule in found:
        for expr in rule.get("expr", []):
            for verb in ("jump", "goto"):
                if verb in expr:
                    targets.setdefault(rule["chain"], []).append(expr[verb]["target"])
    # An owned chain belongs to the table of the base chains that lead to it.
    todo = [n for n in owner]
    while todo:
        source = todo.pop()
        for target in targets.get(source, []):
            if target not in owner:
                owner[target] = owner[source]
                todo.append(target)
    for chain in chains:
        owner.setdefault(chain["name"], _table_in(family, "filter"))
    rules = []
    for rule in found:
        name = rule["chain"]
        if name not in owner:
            raise BackendError(f"nftables table {family} {TABLE}: a rule in unknown chain {name}")
        chain_name = builtin[name][1] if name in builtin else name
        rules.append(from_nft(owner[name], chain_name, rule.get("expr", [])))
    owned = frozenset((owner[c["name"]], c["name"]) for c in chains if c["name"] not in builtin)
    try:
        ruleset = Ruleset(owned, tuple(rules))
    except ValueError as exc:
        raise BackendError(f"nftables table {family} {TABLE}: {exc}") from None
    return Snapshot(family, True, owner, ruleset, sets, named)


# --------------------------------------------------------------------------
# The transaction that makes one of our tables' part exactly ``content``


def _chain_ref(family: str, name: str) -> dict[str, Any]:
    return {"family": family, "table": TABLE, "name": name}


def _reachable(content: Ruleset, table: str) -> set[str]:
    """Our chains in ``content`` that a jump from a built-in chain leads to."""
    seen: set[str] = set()
    todo = [r.target for r in content.jumps(table)]
    while todo:
        name = todo.pop()
        if name and name not in seen and (table, name) in content.chains:
            seen.add(name)
            todo += [r.target for r in content.rules_of(table, name)]
    return seen


def batch(snapshot: Snapshot, table: str, content: Ruleset) -> list[dict[str, Any]]:
    """The nftables JSON commands (one transaction) that make ``table``'s part of our
    nft table exactly ``content``, given what ``snapshot`` read; [] if nothing to do.
    An address set's elements are :class:`RawJSON`: :func:`dumps` makes the text.

    Raises BackendError for content this layout cannot hold (see the module docstring)
    or a rule :mod:`.nftexpr` cannot translate.
    """
    family = snapshot.family
    mine = [n for n, t in snapshot.owner.items() if t == table]
    others = {n: t for n, t in snapshot.owner.items() if t != table}
    if _kind(table) != "filter":
        orphans = sorted(set(content.chain_names(table)) - _reachable(content, table))
        if orphans:
            raise BackendError(f"{table_label(table)}: chain {orphans[0]} has no jump from a built-in chain "
                               "(the nftables backend tells a chain's table by the jumps into it)")
    for name in content.chain_names(table):
        if name in others:
            raise BackendError(f"{table_label(table)}: chain {name} already belongs to {table_label(others[name])}"
                               f" in nftables table {family} {TABLE}")
    exprs = [(rule, to_nft(rule)) for rule in content.rules]  # translate all before touching anything
    bases = list(dict.fromkeys(r.chain for r in content.jumps(table)))
    for chain in bases:
        if (_kind(table), chain) not in HOOKS:
            raise BackendError(f"{table_label(table)}: no nftables hook for built-in chain {chain}")
    wanted = [base_chain_name(table, c) for c in bases] + content.chain_names(table)
    if not wanted and not others:
        return [{"delete": {"table": {"family": family, "name": TABLE}}}] if snapshot.exists else []
    cmds: list[dict[str, Any]] = [{"add": {"table": {"family": family, "name": TABLE}}}]
    # Flush first, so no rule still jumps to a chain deleted next.
    cmds += [{"flush": {"chain": _chain_ref(family, n)}} for n in mine]
    cmds += [{"delete": {"chain": _chain_ref(family, n)}} for n in mine if n not in wanted]
    for chain in bases:
        name = base_chain_name(table, chain)
        if name not in mine:
            kind, hook, prio = HOOKS[(_kind(table), chain)]
            cmds.append({"add": {"chain": {**_chain_ref(family, name), "type": kind, "hook": hook, "prio": prio,
                                           "policy": "accept"}}})
    cmds += [{"add": {"chain": _chain_ref(family, n)}} for n in content.chain_names(table) if n not in mine]
    if _kind(table) == "filter":
        cmds += _set_commands(snapshot, content, table, [e for _, e in exprs])
    cmds += _counter_commands(snapshot, table, [e for _, e in exprs])
    for rule, expr in exprs:
        chain = rule.chain if is_owned(rule.chain) else base_chain_name(table, rule.chain)
        cmds.append({"add": {"rule": {"family": family, "table": TABLE, "chain": chain, "expr": expr}}})
    return cmds


def _set_commands(snapshot: Snapshot, content: Ruleset, table: str, exprs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Create the sets ``content``'s rules name that our table lacks (an address set filled
    completely, in this same transaction) and delete those no rule names any more; they
    come after the flushes above, so no rule uses a set when it goes. A set of the same
    name is the same set (see :mod:`.access`): it is left alone."""
    family = snapshot.family
    named: dict[str, None] = dict.fromkeys(content.set_names(table))
    meters = dict.fromkeys(stmt["set"]["set"][1:] for expr in exprs for stmt in expr if "set" in stmt)
    specs = {s.name: s for s in content.sets}
    cmds: list[dict[str, Any]] = []
    cmds += [{"delete": {"set": _chain_ref(family, n)}} for n in sorted(snapshot.sets - set(named) - set(meters))]
    for name in meters:
        if name not in snapshot.sets:
            cmds.append({"add": {"set": {"family": family, "table": TABLE, **meter_set(name, 4 if family == "ip" else 6)}}})
    for name in named:
        if name in snapshot.sets:
            continue
        spec = specs.get(name)
        if spec is None:
            raise BackendError(f"{table_label(table)}: set {name} is gone and its content is not known here; "
                               "run 'vpnoffload up vps' again")
        body = {**_chain_ref(family, name), "type": "ipv4_addr" if spec.version == 4 else "ipv6_addr",
                "flags": ["interval"]}
        intervals = spec.intervals()
        if intervals:
            # In the set's own declaration, not a separate `add element`: nft then sends
            # them with the set and takes ~1/3 less CPU for 100 000 (bench/access.py).
            body["elem"] = RawJSON(elements_json(spec.version, intervals))
        cmds.append({"add": {"set": body}})
    return cmds


def _counter_commands(snapshot: Snapshot, table: str, exprs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Declare the named counters ``table``'s rules count into (the VPS's counts,
    ``lean.counters``) that our nft table lacks, and delete those no rule names any more
    (after the flushes above). Counters belong to the whole nft table, and filter and mangle
    both count: the other tables' rules (as the snapshot read them) keep theirs. One that
    stays keeps its count: the watchdog reads it across swaps."""
    family = snapshot.family
    wanted = dict.fromkeys(_counter_names(exprs))
    others = [to_nft(r) for r in snapshot.ruleset.rules if r.table != table]
    kept = set(wanted) | set(_counter_names(others))
    cmds: list[dict[str, Any]] = [{"delete": {"counter": _chain_ref(family, n)}}
                                  for n in sorted(snapshot.counters - kept)]
    cmds += [{"add": {"counter": _chain_ref(family, n)}} for n in wanted if n not in snapshot.counters]
    return cmds


def _counter_names(exprs: list[list[dict[str, Any]]]) -> list[str]:
    """The named counters these rules count into, in order."""
    return [stmt["counter"] for expr in exprs for stmt in expr if isinstance(stmt.get("counter"), str)]


@dataclass(frozen=True)
class RawJSON:
    """JSON text that :func:`dumps` puts into a command as it is (set elements)."""

    text: str


def elements_json(version: int, intervals: list[tuple[int, int]]) -> str:
    """An interval set's elements as an nftables JSON array: a prefix where an interval is
    one, else a range. Written as text: 100 000 elements as dicts through json.dumps took
    ~0.2 s, this ~0.06 s (the loop is inlined for the same reason)."""
    family, size, bits = (socket.AF_INET, 4, 32) if version == 4 else (socket.AF_INET6, 16, 128)
    ntop = socket.inet_ntop
    out = []
    for first, last in intervals:
        count = last - first + 1
        if count & (count - 1) == 0 and first & (count - 1) == 0:  # an aligned power of two: a prefix
            out.append(f'{{"prefix":{{"addr":"{ntop(family, first.to_bytes(size, "big"))}",'
                       f'"len":{bits + 1 - count.bit_length()}}}}}')
        else:
            out.append(f'{{"range":["{ntop(family, first.to_bytes(size, "big"))}",'
                       f'"{ntop(family, last.to_bytes(size, "big"))}"]}}')
    return "[" + ",".join(out) + "]"


def dumps(cmds: list[dict[str, Any]]) -> str:
    """``{"nftables": cmds}`` as JSON text, each :class:`RawJSON` in it spliced in as it is."""
    raws: list[RawJSON] = []

    def mark(obj: object) -> str:
        if not isinstance(obj, RawJSON):
            raise TypeError(f"{type(obj).__name__} is not JSON")
        raws.append(obj)
        return f"\0raw{len(raws) - 1}"

    text = json.dumps({"nftables": cmds}, default=mark)
    for i, raw in enumerate(raws):
        text = text.replace(f'"\\u0000raw{i}"', raw.text, 1)
    return text


# --------------------------------------------------------------------------
# The backend


class NftBackend:
    """Reads and writes vpnoffload's chains in nftables tables ``ip vpnoffload`` and
    ``ip6 vpnoffload`` through ``nft -j`` (see the module docstring).

    ``run`` runs nft with (argv, stdin) and returns its stdout (tests replace it).
    """

    def __init__(self, run: Runner = run_nft) -> None:
        self.run = run

    def preload(self) -> None:
        """Nothing to load: nft is a separate program, started per read and write."""

    def snapshot(self, family: str) -> Snapshot:
        """What our table in ``family`` holds now (an empty Snapshot if it does not exist).

        One terse listing of the whole ruleset: ``-t`` leaves out set elements (100 000
        prefixes of a deny list would take ~0.5 s to print and parse), and nft fetches
        them for ``list tables`` and ``list table`` even with ``-t``, but not for this.
        """
        listing = self._json(["-j", "-t", "list", "ruleset"])
        present = any(i.get("table", {}).get("family") == family and i["table"].get("name") == TABLE
                      for i in listing.get("nftables", []))
        if not present:
            return Snapshot(family)
        return parse_table(family, listing)

    def read(self) -> Ruleset:
        chains: set[tuple[str, str]] = set()
        rules: list[Rule] = []
        for family in FAMILIES:
            part = self.snapshot(family).ruleset
            chains |= part.chains
            rules += part.rules
        return Ruleset(frozenset(chains), tuple(rules))

    def write(self, table: str, content: Ruleset) -> None:
        if table not in TABLES:
            raise BackendError(f"unknown table {table}")
        content = table_content(content, table)
        with nftlock.held():  # no other vpnoffload write between the snapshot and the commit
            cmds = batch(self.snapshot(family_of(table)), table, content)
            if not cmds:
                return
            try:
                self.run(["-j", "-f", "-"], dumps(cmds))
            except BackendError as exc:
                raise BackendError(f"{table_label(table)} (nftables table {family_of(table)} {TABLE}): {exc}") from None

    def _json(self, argv: list[str]) -> dict[str, Any]:
        text = self.run(argv, None)
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise BackendError(f"nft {' '.join(argv)} printed no JSON: {exc}") from None
        return data if isinstance(data, dict) else {}

