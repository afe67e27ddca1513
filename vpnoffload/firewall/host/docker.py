"""Openings in iptables-nft chains: Docker's ``DOCKER-USER``, or a plain iptables-nft built-in chain.

Written with the ``iptables-nft``/``ip6tables-nft`` commands, never as native
nft rules: a native rule in a table iptables-nft manages would break
iptables-nft's own view of it (and Docker's). Each rule carries
``-m comment --comment vpnoffload`` and is written with its arguments in the
order ``iptables-save`` prints them, so one ``iptables-nft-save`` tells which
of ours are there (cheap enough for the watchdog's periodic check).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vpnoffload.firewall.host.openings import COMMENT, Opening, Placement
from vpnoffload.proc import run

if TYPE_CHECKING:
    from vpnoffload.firewall.host.mechanism import Live

HINT = "apt-get install iptables"


def command(family: str) -> str:
    return "ip6tables-nft" if family == "ip6" else "iptables-nft"


def rule_args(opening: Opening) -> list[str]:
    """The rule's match and target, in iptables-save's order."""
    host = 32 if opening.family == 4 else 128
    args: list[str] = []
    if opening.saddr:
        args += ["-s", f"{opening.saddr}/{host}"]
    if opening.daddr:
        args += ["-d", f"{opening.daddr}/{host}"]
    if opening.iif:
        args += ["-i", opening.iif]
    if opening.oif:
        args += ["-o", opening.oif]
    if opening.proto:
        args += ["-p", opening.proto]
        if opening.sport is not None or opening.dport is not None:
            args += ["-m", opening.proto]
        if opening.sport is not None:
            args += ["--sport", str(opening.sport)]
        if opening.dport is not None:
            args += ["--dport", str(opening.dport)]
    if opening.ct == "dnat":
        args += ["-m", "conntrack", "--ctstate", "DNAT"]
    elif opening.ct == "established":
        args += ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"]
    return args + ["-m", "comment", "--comment", COMMENT, "-j", "ACCEPT"]


def save_line(chain: str, opening: Opening) -> str:
    """How ``iptables-nft-save`` prints our rule."""
    return " ".join(["-A", chain, *rule_args(opening)])


def saved_lines(family: str, table: str = "filter") -> set[str]:
    """The rule lines of ``table`` now (empty when iptables-nft has no such table)."""
    result = run([f"{command(family)}-save", "-t", table], hint=HINT, check=False, timeout=15)
    return {line.strip() for line in result.stdout.splitlines() if line.startswith("-A ")}


def insert(family: str, table: str, chain: str, opening: Opening) -> None:
    run([command(family), "-w", "5", "-t", table, "-I", chain, "1", *rule_args(opening)], hint=HINT)


def delete(family: str, table: str, chain: str, opening: Opening) -> None:
    run([command(family), "-w", "5", "-t", table, "-D", chain, *rule_args(opening)], hint=HINT)


class _IptablesNft:
    """iptables-nft chains (Docker's ``DOCKER-USER``, or a built-in chain), told apart by ``iptables-nft-save``."""

    name = "iptables-nft"
    adopts = True

    def handle(self, place: Placement, live: Live, prefer: int | None = None) -> int | None:
        return None  # iptables-nft rules are found by their saved line, not a handle

    def present(self, place: Placement, live: Live) -> bool:
        lines = live.once(("iptables-nft", place.family, place.table), lambda: saved_lines(place.family, place.table))
        return save_line(place.chain, place.opening) in lines

    def add(self, place: Placement) -> tuple[bool, int | None]:
        insert(place.family, place.table, place.chain, place.opening)
        return True, None

    def remove(self, place: Placement, handle: int | None) -> None:
        if save_line(place.chain, place.opening) in saved_lines(place.family, place.table):
            delete(place.family, place.table, place.chain, place.opening)

    def lost(self, place: Placement, live: Live) -> bool:
        from vpnoffload.firewall.host import nft

        if not nft.chain_exists(live.ruleset, "ip6" if place.family == "ip6" else "ip", place.table, place.chain):
            return False
        return not self.present(place, live)


#: This module as a :class:`vpnoffload.firewall.host.mechanism.Mechanism`.
MECHANISM = _IptablesNft()
