"""The plan between what vpnoffload owns in the firewall now and what it wants.

Each changed table becomes one atomic commit; see :func:`plan`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from functools import partial

from vpnoffload.firewall.rules import TABLES, Backend, Rule, Ruleset, is_owned, table_label
from vpnoffload.plan import Action

def default_backend() -> Backend:
    """The real backend: python-iptables where the legacy x_tables exist, nftables
    where they do not, or what ``VPNOFFLOAD_FIREWALL`` says (see :mod:`.choose`).
    Nothing heavy is imported until the backend is used."""
    from vpnoffload.firewall import choose

    return choose.make(choose.chosen()[0])


def plan(backend: Backend, desired: Ruleset, scope: Callable[[str], bool] | None = None) -> list[Action]:
    """The actions that turn what ``backend`` holds now into ``desired``; [] if equal.

    With ``scope`` (a test on chain names), only the chains it accepts and the
    jumps into them are compared and changed: what another tunnel of the same
    home box owns is written back as it was read (see vpnoffload.hometunnels).

    Each changed table is rewritten in one atomic commit (the last action for
    that table, whose undo writes back what was read here). The actions before
    it only describe the individual changes for ``--dry-run``; they do nothing
    by themselves. Tables gaining or changing content go filter first (the
    FORWARD guard before the DNAT); tables being emptied go nat first.
    """
    current = backend.read()
    if scope is not None:
        desired = _within(current, desired, scope)
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


def _within(current: Ruleset, desired: Ruleset, scope: Callable[[str], bool]) -> Ruleset:
    """``desired`` for the chains in ``scope``, and ``current`` for everything else.

    A table whose part in scope is already as desired stays exactly as read (the
    order of jumps of several owners in one built-in chain included), so a
    second ``up`` plans nothing.
    """
    def part(rules: Ruleset, inside: bool) -> Ruleset:
        return Ruleset(frozenset(c for c in rules.chains if scope(c[1]) == inside),
                       tuple(r for r in rules.rules if scope(r.chain if is_owned(r.chain) else r.target or "") == inside))

    mine, rest = part(current, True), part(current, False)
    wanted = part(desired, True)
    if part(desired, False) != Ruleset():
        raise ValueError("the desired rules reach outside their scope")
    merged_chains: set[tuple[str, str]] = set()
    merged_rules: list[Rule] = []
    for table in sorted(current.tables() | wanted.tables()):
        source = current.table(table) if mine.table(table) == wanted.table(table) else None
        if source is None:
            source = Ruleset(rest.table(table).chains | wanted.table(table).chains,
                             rest.table(table).rules + wanted.table(table).rules)
        merged_chains |= source.chains
        merged_rules += source.rules
    return Ruleset(frozenset(merged_chains), tuple(merged_rules))


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
    # Access-control sets (firewall/access.py): a set's name changes with its content.
    old_sets, new_sets = before.set_names(table), after.set_names(table)
    lines += [f"{table_label(table)}: load set {s.name} ({s.describe()})"
              for s in after.sets if s.table == table and s.name in new_sets and s.name not in old_sets]
    lines += [f"{table_label(table)}: remove set {n}" for n in old_sets if n not in new_sets]
    return lines


def _chain_diff(old: Iterable[Rule], new: Iterable[Rule], table: str, chain: str) -> list[str]:
    a, b = [r.text for r in old], [r.text for r in new]
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        out += [f"{table_label(table)} {chain}: delete {t}" for t in a[i1:i2] if op in ("delete", "replace")]
        out += [f"{table_label(table)} {chain}: {t}" for t in b[j1:j2] if op in ("insert", "replace")]
    return out
