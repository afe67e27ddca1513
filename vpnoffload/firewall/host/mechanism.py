"""The one interface every host firewall mechanism implements, and the read-once view of the host it works on.

A mechanism (native nftables, iptables-nft as Docker uses it, ufw) is one
module with one object, ``MECHANISM``, that makes, finds and removes an opening
in its own way; :mod:`vpnoffload.firewall.host.plan` looks it up by the name the
record carries (:data:`Placement.mechanism <vpnoffload.firewall.host.openings.Placement>`)
and never asks which one it holds. A new mechanism (firewalld's D-Bus, say) is a
new module and one line in the plan's registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from vpnoffload.firewall.host.openings import Placement

T = TypeVar("T")


class Live:
    """What is in the host's firewall now: the nft ruleset read once, and each mechanism's own
    reading (``iptables-nft-save``, ``ufw show added``) made at most once per plan or reconcile."""

    def __init__(self, ruleset: dict[str, Any]) -> None:
        self.ruleset = ruleset
        self._memo: dict[tuple[str, ...], Any] = {}

    def once(self, key: tuple[str, ...], read: Callable[[], T]) -> T:
        if key not in self._memo:
            self._memo[key] = read()
        return self._memo[key]  # type: ignore[no-any-return]


class Mechanism(Protocol):
    """How one host firewall mechanism opens vpnoffload's way, in its own place."""

    #: What the record calls it ("nft", "iptables-nft", "ufw").
    name: str
    #: A rule carrying vpnoffload's comment found there is adopted as ours (so ``down`` removes
    #: it). ufw says which rules it already had, so a ufw rule is only ever ours if we added it.
    adopts: bool

    def handle(self, place: Placement, live: Live, prefer: int | None = None) -> int | None:
        """The handle to record for our rule there (None: this mechanism has no handles, or no rule)."""
        ...

    def present(self, place: Placement, live: Live) -> bool:
        """Our rule for ``place`` is there now."""
        ...

    def add(self, place: Placement) -> tuple[bool, int | None]:
        """Make the rule: (is it ours to record, its handle)."""
        ...

    def remove(self, place: Placement, handle: int | None) -> None:
        """Remove our rule if it is still there; never one that is not ours."""
        ...

    def lost(self, place: Placement, live: Live) -> bool:
        """A host reload wiped our rule while its chain still exists (the watchdog puts it back)."""
        ...
