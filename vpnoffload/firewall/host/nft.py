"""Openings in the host's native nftables base chains, through ``nft -j`` (JSON, never a rule string).

Each rule is inserted at the top of the host's dropping chain, tagged with the
comment ``vpnoffload``, and its handle recorded. Removal deletes a recorded
handle only if the rule there is still ours (same chain, same match, our
comment): a host that reloaded its ruleset in between reuses handles, and a
rule of the host's must never be deleted. All inserts (and all deletes) of one
plan step go in one transaction.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from vpnoffload.errors import BackendError
from vpnoffload.firewall import nftlock
from vpnoffload.firewall.host.openings import COMMENT, Opening, Placement
from vpnoffload.proc import run

if TYPE_CHECKING:
    from vpnoffload.firewall.host.mechanism import Live

NFT_HINT = "apt-get install nftables"


def list_ruleset() -> dict[str, Any]:
    """``nft -j list ruleset``, parsed (an empty ruleset when nft prints nothing)."""
    out = run(["nft", "-j", "list", "ruleset"], hint=NFT_HINT, timeout=15).stdout
    try:
        return json.loads(out) if out.strip() else {"nftables": []}
    except ValueError as exc:
        raise BackendError(f"nft -j list ruleset printed something that is not JSON: {exc}") from None


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def expr(opening: Opening) -> list[dict[str, Any]]:
    """The rule's statements, written the way ``nft -j`` reads them back (so they compare equal)."""
    out: list[dict[str, Any]] = []
    if opening.iif:
        out.append(_match({"meta": {"key": "iifname"}}, opening.iif))
    if opening.oif:
        out.append(_match({"meta": {"key": "oifname"}}, opening.oif))
    ip = "ip" if opening.family == 4 else "ip6"
    if opening.saddr:
        out.append(_match({"payload": {"protocol": ip, "field": "saddr"}}, opening.saddr))
    if opening.daddr:
        out.append(_match({"payload": {"protocol": ip, "field": "daddr"}}, opening.daddr))
    if opening.proto and opening.sport is None and opening.dport is None:
        out.append(_match({"meta": {"key": "l4proto"}}, opening.proto))
    if opening.proto and opening.sport is not None:
        out.append(_match({"payload": {"protocol": opening.proto, "field": "sport"}}, opening.sport))
    if opening.proto and opening.dport is not None:
        out.append(_match({"payload": {"protocol": opening.proto, "field": "dport"}}, opening.dport))
    if opening.ct == "dnat":
        out.append(_match({"ct": {"key": "status"}}, "dnat", "in"))
    elif opening.ct == "established":
        out.append(_match({"ct": {"key": "state"}}, ["established", "related"], "in"))
    out.append({"accept": None})
    return out


def _body(family: str, table: str, chain: str, opening: Opening) -> dict[str, Any]:
    return {"family": family, "table": table, "chain": chain, "expr": expr(opening), "comment": COMMENT}


def _ours(rule: dict[str, Any], family: str, table: str, chain: str, statements: list[dict[str, Any]]) -> bool:
    return ((rule.get("family"), rule.get("table"), rule.get("chain")) == (family, table, chain)
            and rule.get("comment") == COMMENT
            and [e for e in rule.get("expr", []) if "counter" not in e] == statements)


def find(ruleset: dict[str, Any], family: str, table: str, chain: str, opening: Opening,
         prefer: int | None = None) -> int | None:
    """The handle of our rule for ``opening`` in that chain (``prefer`` first if it is one), or None."""
    statements = expr(opening)
    handles = [i["rule"].get("handle") for i in ruleset.get("nftables", [])
               if "rule" in i and _ours(i["rule"], family, table, chain, statements)]
    if prefer in handles:
        return prefer
    return handles[0] if handles else None


def chain_exists(ruleset: dict[str, Any], family: str, table: str, chain: str) -> bool:
    return any("chain" in i and (i["chain"]["family"], i["chain"]["table"], i["chain"]["name"]) == (family, table, chain)
               for i in ruleset.get("nftables", []))


def insert(places: list[Placement]) -> list[int]:
    """Insert one rule per placement at the top of its chain, in one transaction; their handles, in order."""
    if not places:
        return []
    batch = {"nftables": [{"insert": {"rule": _body(p.family, p.table, p.chain, p.opening)}} for p in places]}
    with nftlock.held():
        out = run(["nft", "-e", "-j", "-f", "/dev/stdin"], input=json.dumps(batch), hint=NFT_HINT, timeout=15).stdout
    try:
        echoed = json.loads(out).get("nftables", [])
        handles = [int(i["insert"]["rule"]["handle"]) for i in echoed if "insert" in i]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"nft did not echo the handles of the rules it inserted: {exc}") from None
    if len(handles) != len(places):
        raise BackendError(f"nft echoed {len(handles)} handle(s) for {len(places)} inserted rule(s)")
    return handles


def delete(targets: list[tuple[str, str, str, int]]) -> None:
    """Delete rules by (family, table, chain, handle), in one transaction."""
    if not targets:
        return
    batch = {"nftables": [{"delete": {"rule": {"family": f, "table": t, "chain": c, "handle": h}}}
                          for f, t, c, h in targets]}
    with nftlock.held():
        run(["nft", "-j", "-f", "/dev/stdin"], input=json.dumps(batch), hint=NFT_HINT, timeout=15)


class _Nft:
    """Native nftables: our rule at the top of the host's dropping base chain, tracked by handle."""

    name = "nft"
    adopts = True

    def handle(self, place: Placement, live: Live, prefer: int | None = None) -> int | None:
        return find(live.ruleset, place.family, place.table, place.chain, place.opening, prefer)

    def present(self, place: Placement, live: Live) -> bool:
        return self.handle(place, live) is not None

    def add(self, place: Placement) -> tuple[bool, int | None]:
        return True, insert([place])[0]

    def remove(self, place: Placement, handle: int | None) -> None:
        with nftlock.held():  # the handle read must still be ours when it is deleted
            found = find(list_ruleset(), place.family, place.table, place.chain, place.opening, handle)
            if found is not None:
                delete([(place.family, place.table, place.chain, found)])

    def lost(self, place: Placement, live: Live) -> bool:
        return (chain_exists(live.ruleset, place.family, place.table, place.chain)
                and find(live.ruleset, place.family, place.table, place.chain, place.opening) is None)


#: This module as a :class:`vpnoffload.firewall.host.mechanism.Mechanism`.
MECHANISM = _Nft()
