"""Openings through a running firewalld, with ``firewall-cmd`` and runtime configuration only.

firewalld rewrites its whole nftables table on every ``firewall-cmd --reload``
and restart, so a rule written into that table behind its back does not last;
what firewalld itself holds does (until the reload resets the runtime to the
permanent configuration, after which the watchdog puts ours back). Two of
firewalld's own mechanisms cover what vpnoffload needs (see
:func:`vpnoffload.firewall.host.openings.choose`):

- new connections in (OpenVPN's port on the VPS, the services' ports arriving
  on the tunnel at home): a **rich rule** in the runtime zone of the interface
  they arrive on, e.g. ``rule family="ipv4" destination address="203.0.113.10"
  port port="1194" protocol="udp" accept``;
- the watchdog's visitor-path check, forwarded from its probe veth (a device
  of vpnoffload's own that carries nothing else) into the tunnel: that
  **interface bound to the trusted zone**.

Nothing is ever written with ``--permanent``: ``down`` leaves firewalld's
permanent configuration untouched and its runtime exactly as before. A rich
rule or binding firewalld already had is the host's, not ours (firewalld keeps
no comment to tell them apart), so it is neither recorded nor removed.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from vpnoffload.errors import BackendError
from vpnoffload.firewall.host.openings import Opening, Placement
from vpnoffload.proc import run

if TYPE_CHECKING:
    from vpnoffload.firewall.host.mechanism import Live

HINT = "apt-get install firewalld"
#: firewall-cmd talks to the daemon over D-Bus; a busy daemon (mid-reload) answers within seconds.
TIMEOUT = 30.0


def rich_rule(opening: Opening) -> str:
    """The rich rule for an opening of new connections in, in the form firewalld prints it back.

    A rich rule has one of port, source-port or protocol; our input openings
    have at most a destination port (the source-port case is an established
    reply, which firewalld's base chain accepts first and never reaches here).
    The interface is matched by the zone the rule goes into.
    """
    parts = [f'rule family="{"ipv4" if opening.family == 4 else "ipv6"}"']
    if opening.saddr:
        parts.append(f'source address="{opening.saddr}"')
    if opening.daddr:
        parts.append(f'destination address="{opening.daddr}"')
    if opening.proto and opening.dport is not None:
        parts.append(f'port port="{opening.dport}" protocol="{opening.proto}"')
    elif opening.proto and opening.sport is not None:
        parts.append(f'source-port port="{opening.sport}" protocol="{opening.proto}"')
    elif opening.proto:
        parts.append(f'protocol value="{opening.proto}"')
    return " ".join([*parts, "accept"])


def _cmd(*args: str, check: bool = True) -> str:
    return run(["firewall-cmd", *args], hint=HINT, check=check, timeout=TIMEOUT).stdout.strip()


def running() -> bool:
    """firewalld is installed and its daemon answers ("running")."""
    if shutil.which("firewall-cmd") is None:
        return False
    return _cmd("--state", check=False) == "running"


def zones() -> tuple[tuple[tuple[str, str], ...], str]:
    """((interface, zone), ...) of the runtime bindings, and the default zone.

    ``--get-active-zones`` prints each zone, then indented ``interfaces: a b``
    and ``sources: ...`` lines.
    """
    bindings: list[tuple[str, str]] = []
    zone = ""
    for line in _cmd("--get-active-zones").splitlines():
        if line and not line[0].isspace():
            zone = line.split()[0]
        elif line.strip().startswith("interfaces:") and zone:
            bindings += [(name, zone) for name in line.split(":", 1)[1].split()]
    return tuple(bindings), _cmd("--get-default-zone") or "public"


def _is_binding(place: Placement) -> bool:
    return place.opening.hook == "forward"


def _query(place: Placement) -> bool:
    if _is_binding(place):
        return _cmd(f"--zone={place.chain}", f"--query-interface={place.opening.iif}", check=False) == "yes"
    return _cmd(f"--zone={place.chain}", f"--query-rich-rule={rich_rule(place.opening)}", check=False) == "yes"


def add(place: Placement) -> bool:
    """Make the rich rule or binding in firewalld's runtime; False when firewalld had it already (not ours)."""
    if _query(place):
        return False
    if _is_binding(place):
        bound = _cmd(f"--get-zone-of-interface={place.opening.iif}", check=False)
        if bound and bound != "no zone":
            raise BackendError(f"firewalld has {place.opening.iif} in zone {bound}: vpnoffload binds it to "
                               f"{place.chain} only when it is in none (firewall-cmd --zone={bound} "
                               f"--remove-interface={place.opening.iif})")
        _cmd(f"--zone={place.chain}", f"--add-interface={place.opening.iif}")
    else:
        _cmd(f"--zone={place.chain}", f"--add-rich-rule={rich_rule(place.opening)}")
    return True


def remove(place: Placement) -> None:
    """Take ours out of firewalld's runtime if it is still there (a reload may have done it already)."""
    if not running() or not _query(place):
        return
    if _is_binding(place):
        _cmd(f"--zone={place.chain}", f"--remove-interface={place.opening.iif}")
    else:
        _cmd(f"--zone={place.chain}", f"--remove-rich-rule={rich_rule(place.opening)}")


class _Firewalld:
    """firewalld's runtime rich rules and interface bindings, asked for through ``firewall-cmd``."""

    name = "firewalld"
    adopts = False  # firewalld keeps no comment: one it already had is the host's

    def handle(self, place: Placement, live: Live, prefer: int | None = None) -> int | None:
        return None

    def present(self, place: Placement, live: Live) -> bool:
        key = ("firewalld", place.chain, place.opening.iif or "", rich_rule(place.opening), place.opening.hook)
        return live.once(key, lambda: _query(place))

    def add(self, place: Placement) -> tuple[bool, int | None]:
        return add(place), None

    def remove(self, place: Placement, handle: int | None) -> None:
        remove(place)

    def lost(self, place: Placement, live: Live) -> bool:
        # While firewalld is stopped (mid-restart) nothing of it filters: the next ruleset change
        # (its table coming back) brings the watchdog here again.
        return live.once(("firewalld-running",), running) and not self.present(place, live)


#: This module as a :class:`vpnoffload.firewall.host.mechanism.Mechanism`.
MECHANISM = _Firewalld()
