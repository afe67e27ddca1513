"""Plans between vpnoffload's routing state in the kernel and the desired one (see :mod:`.state`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vpnoffload.model import RULE_PRIORITY, ROUTE_TABLE
from vpnoffload.plan import Action
from vpnoffload.routing.state import Address, Route, RoutingBackend, RoutingState, Rule, _owned

def plan_routing(backend: RoutingBackend, desired: RoutingState,
                 table: int = ROUTE_TABLE, priority: int = RULE_PRIORITY) -> list[Action]:
    """Actions that turn our rules and our table into ``desired``; [] when already there.

    ``table`` and ``priority`` are the tunnel's own (vpnoffload.hometunnels.Slot):
    another tunnel's rules and table on the same box are never looked at."""
    owned: tuple[Rule | Route, ...] = (*desired.rules, *desired.routes)
    for item in owned:
        if item.table != table or getattr(item, "priority", priority) != priority:
            raise ValueError(f"{item} is outside what vpnoffload owns")
    rules = [r for r in backend.rules() if _owned(r, table, priority)]
    routes = backend.routes(table)
    # Stale entries go first (a stale default route would block the new one);
    # the table is filled before the rule points at it.
    return (
        [_delete_rule(backend, r) for r in rules if r not in desired.rules]
        + [_delete_route(backend, r) for r in routes if r not in desired.routes]
        + [_add_route(backend, r) for r in desired.routes if r not in routes]
        + [_add_rule(backend, r) for r in desired.rules if r not in rules]
    )


def plan_routing_down(backend: RoutingBackend, table: int = ROUTE_TABLE, priority: int = RULE_PRIORITY) -> list[Action]:
    """Remove our rule(s), then everything in our table; nothing else."""
    return plan_routing(backend, RoutingState(), table, priority)


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


