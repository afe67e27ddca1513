"""Openings as ufw's own rules: ``ufw allow ... comment vpnoffload`` and ``ufw route allow ...``.

ufw keeps its rules in its own files and writes them back on every
``ufw reload``, so an opening made here survives the host's reloads, and
``ufw status`` shows it with the comment. A rule ufw already had ("Skipping
adding existing rule") is the host's, not ours: it is not recorded, so
``down`` leaves it. ufw cannot match conntrack's DNAT status; the port it
opens stays guarded by vpnoffload's own rules (the page server's ports take
only DNATed connections there), and ufw's before-rules already accept
established traffic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vpnoffload.firewall.host.openings import COMMENT, Opening, Placement
from vpnoffload.proc import run

if TYPE_CHECKING:
    from vpnoffload.firewall.host.mechanism import Live

HINT = "apt-get install ufw"


def rule_args(opening: Opening) -> list[str]:
    """The rule in the form ``ufw show added`` prints it back (without "ufw" and the comment)."""
    args = ["route", "allow"] if opening.hook == "forward" else ["allow"]
    if opening.iif:
        args += ["in", "on", opening.iif]
    if opening.oif:
        args += ["out", "on", opening.oif]
    if opening.hook == "output" and not opening.oif:
        args += ["out"]
    if opening.saddr or opening.sport is not None:
        args += ["from", opening.saddr or "any"] + (["port", str(opening.sport)] if opening.sport is not None else [])
    if opening.daddr or opening.dport is not None:
        args += ["to", opening.daddr or "any"] + (["port", str(opening.dport)] if opening.dport is not None else [])
    if opening.proto:
        args += ["proto", opening.proto]
    return args


def shown(opening: Opening) -> str:
    """Our rule's line in ``ufw show added``."""
    return " ".join(["ufw", *rule_args(opening), "comment", f"'{COMMENT}'"])


def active() -> bool:
    """ufw is installed and enabled here."""
    from shutil import which

    if which("ufw") is None:
        return False
    return run(["ufw", "status"], check=False, timeout=20).stdout.startswith("Status: active")


def added_lines() -> set[str]:
    return {line.strip() for line in run(["ufw", "show", "added"], hint=HINT, timeout=20).stdout.splitlines()}


def add(opening: Opening) -> bool:
    """Add the rule; True if ufw added it (False: ufw had it already, so it is not ours)."""
    out = run(["ufw", *rule_args(opening), "comment", COMMENT], hint=HINT, timeout=30).stdout
    return "Skipping" not in out


def delete(opening: Opening) -> None:
    args = rule_args(opening)
    argv = ["ufw", "route", "delete", *args[1:]] if args[0] == "route" else ["ufw", "delete", *args]
    run(argv, hint=HINT, timeout=30)


class _Ufw:
    """ufw's own rules: ufw keeps and reloads them itself, so a reload never loses one."""

    name = "ufw"
    adopts = False  # a rule ufw already had is the host's, even with our comment

    def handle(self, place: Placement, live: Live, prefer: int | None = None) -> int | None:
        return None

    def present(self, place: Placement, live: Live) -> bool:
        return shown(place.opening) in live.once(("ufw",), added_lines)

    def add(self, place: Placement) -> tuple[bool, int | None]:
        return add(place.opening), None

    def remove(self, place: Placement, handle: int | None) -> None:
        if shown(place.opening) in added_lines():
            delete(place.opening)

    def lost(self, place: Placement, live: Live) -> bool:
        return False  # ufw puts its own rules back on reload


#: This module as a :class:`vpnoffload.firewall.host.mechanism.Mechanism`.
MECHANISM = _Ufw()
