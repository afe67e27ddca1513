"""Several VPSes in front of one home box: which tunnel a config is, and what it may not share.

A home box joins each VPS with that VPS's config in a directory of its own, the
first (the default) at ``ROOT/vpnoffload.toml`` and each further one at
``ROOT/<dir>/vpnoffload.toml``, with its ``state/`` beside it as for one VPS.
Each tunnel gets its own :class:`Slot`: a tun device, a routing table, a rule
priority, a connection mark and firewall chains, so a reply leaves through the
tunnel its connection came in on and ``down home`` of one leaves the others be.

The slot is derived from the config alone, so it is the same at every boot and
for every command: the first config is slot 0 (``vpnoffload0``, table and
priority 7701, mark 0x20000000: what a home box with one VPS has always had);
a further one gets a slot from 1 to 6 by the sum of its tunnel subnet's address
bytes, so subnets that differ by one in any byte (10.89.0.0/24, 10.90.0.0/24, ...
or 10.89.1.0/24, ...) get consecutive slots; 10.89.0.0/24, the example the
docs give for a second VPS, is slot 1. Two configs on
one box that would share a slot, or whose tunnel subnets overlap, or that dial
the same VPS, are refused before anything changes (:func:`check_box`) with one
line that names both configs and the fix.

The connection mark is a 3-bit field (``(slot + 1) << 29`` under
``0xe0000000``), next to the VPS's service marks (0x0ff00000) and the health
mark (0x10000000), so at most seven VPSes per home box.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from vpnoffload.errors import ConfigError, VpnOffloadError
from vpnoffload.model import CHAIN_PREFIX, HOME_MARK, ROUTE_TABLE, RULE_PRIORITY, TUNNEL_DEVICE, Config

#: Tunnels one home box can hold: the mark field has seven non-zero values.
MAX_SLOTS = 7
MARK_SHIFT = 29
MARK_MASK = 0x7 << MARK_SHIFT
#: The chains of slot N > 0 are called VPNOFFLOAD-T<N>-IN and so on.
_SLOT_CHAIN = re.compile(rf"{CHAIN_PREFIX}-T(\d+)-")


@dataclass(frozen=True)
class Slot:
    """One tunnel's share of a home box: everything ``up home`` names for it."""

    index: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index < MAX_SLOTS:
            raise ValueError(f"slot {self.index} outside 0..{MAX_SLOTS - 1}")

    @property
    def device(self) -> str:
        return TUNNEL_DEVICE if self.index == 0 else f"vpnoffload{self.index}"

    @property
    def table(self) -> int:
        return ROUTE_TABLE + self.index

    @property
    def priority(self) -> int:
        return RULE_PRIORITY + self.index

    @property
    def mark(self) -> int:
        return (self.index + 1) << MARK_SHIFT

    @property
    def mask(self) -> int:
        return MARK_MASK

    @property
    def chain_prefix(self) -> str:
        """``VPNOFFLOAD-`` for slot 0 (today's chain names), ``VPNOFFLOAD-T<N>-`` for the others."""
        return f"{CHAIN_PREFIX}-" if self.index == 0 else f"{CHAIN_PREFIX}-T{self.index}-"

    def owns_chain(self, chain: str) -> bool:
        """True for this slot's chains. Slot 0 owns every vpnoffload chain no other slot owns
        (a box that is also a VPS keeps today's behaviour for its first config)."""
        if not chain.startswith(f"{CHAIN_PREFIX}-"):
            return False
        other = _SLOT_CHAIN.match(chain)
        return other is None if self.index == 0 else other is not None and int(other.group(1)) == self.index

    def tunnel_name(self, home: str) -> str:
        """The OpenVPN client's name (pidfile, log, systemd instance): unchanged for slot 0."""
        return f"home-{home}" if self.index == 0 else f"home-{home}-t{self.index}"

    def __str__(self) -> str:
        return (f"tunnel {self.index} (device {self.device}, table and priority {self.table}, "
                f"mark {self.mark:#x}/{self.mask:#x})")


#: The first (or only) tunnel of a home box: what a single-VPS home box has always had.
FIRST = Slot(0)
assert FIRST.mark == HOME_MARK


# ------------------------------------------------------------------ the box's configs


def _is_file(path: Path) -> bool:
    """Path.is_file, but a path the kernel refuses (too long, no permission) is no file either:
    the config's own reader then names the real problem in one line."""
    try:
        return path.is_file()
    except OSError:
        return False


def is_further(config_path: Path) -> bool:
    """True when ``config_path`` sits in a directory below the box's first config
    (``ROOT/vps2/vpnoffload.toml`` next to ``ROOT/vpnoffload.toml``)."""
    return _is_file(config_path.parent.parent / config_path.name)


def box_root(config_path: Path) -> Path:
    return config_path.parent.parent if is_further(config_path) else config_path.parent


def box_configs(config_path: Path) -> list[Path]:
    """Every config on this home box, the first one first, ``config_path`` among them."""
    root, name = box_root(config_path), config_path.name
    found = [root / name] if _is_file(root / name) else []
    try:
        found += sorted(p for p in root.glob(f"*/{name}") if _is_file(p))
    except OSError:  # an unreadable root: no further configs to be found
        pass
    if config_path.absolute() not in [p.absolute() for p in found]:
        found.append(config_path)
    return [p.absolute() for p in found]


#: The byte sum of 10.89.0.0, so that subnet (the docs' second VPS) is slot 1.
_FIRST_FURTHER = 10 + 89


def further_slot(subnet: IPv4Network) -> Slot:
    """The slot of a further config with tunnel ``subnet``: 1-6 by the sum of its bytes."""
    return Slot(1 + (sum(subnet.network_address.packed) - _FIRST_FURTHER) % (MAX_SLOTS - 1))


def slot_of(config_path: Path, config: Config) -> Slot:
    """The slot of the config at ``config_path`` (see the module's docstring)."""
    return further_slot(config.tunnel.subnet) if is_further(config_path) else Slot(0)


# ------------------------------------------------------------------ clashes


@dataclass(frozen=True)
class Joined:
    """One config on the box, as far as the clash checks need it."""

    path: Path
    config: Config
    slot: Slot


def others(config_path: Path) -> list[Joined]:
    """The box's other configs that load; a broken one is that config's own problem
    (its own ``up home`` says what is wrong), not a reason to refuse this one."""
    from vpnoffload import config as cfg

    found = []
    for path in box_configs(config_path):
        if path == config_path.absolute():
            continue
        try:
            other = cfg.load(path)
        except VpnOffloadError:
            continue
        found.append(Joined(path, other, slot_of(path, other)))
    return found


def check_box(config_path: Path, config: Config) -> Slot:
    """This config's slot, once nothing it needs clashes with another config on the box.

    Raises ConfigError (exit 2, nothing changed) naming both configs and the fix.
    """
    mine = Joined(config_path.absolute(), config, slot_of(config_path, config))
    rest = others(config_path)
    for other in rest:
        problem = clash(mine, other)
        if problem.startswith("both dial"):
            raise ConfigError(f"{mine.path} and {other.path} {problem}: keep one of the two configs on this home box")
        if problem:
            fix = suggest_subnet(mine, rest)
            # Short enough that the fix survives exits.MAX_LINE with configs under /etc/vpnoffload.
            raise ConfigError(f"{mine.path} and {other.path} {problem}: on one of their VPSes run 'vpnoffload "
                              f"init --tunnel-subnet {fix} --force', then copy its config and profile here again")
    return mine.slot


def clash(mine: Joined, other: Joined) -> str:
    """What two configs would share on one home box; "" when they can live side by side.

    The same target port is fine (each tunnel accepts it on its own device and
    address), and so is the same OpenVPN port of two VPSes (the client binds none).
    """
    a, b = mine.config, other.config
    if (a.vps.address, a.tunnel.port, a.tunnel.proto) == (b.vps.address, b.tunnel.port, b.tunnel.proto):
        return f"both dial the same VPS ({a.vps.address} port {a.tunnel.port}/{a.tunnel.proto})"
    if a.tunnel.subnet.overlaps(b.tunnel.subnet):
        return f"have overlapping tunnel subnets ({a.tunnel.subnet}, {b.tunnel.subnet})"
    if a.tunnel.subnet6 is not None and b.tunnel.subnet6 is not None and a.tunnel.subnet6.overlaps(b.tunnel.subnet6):
        return f"have overlapping IPv6 tunnel subnets ({a.tunnel.subnet6}, {b.tunnel.subnet6})"
    if mine.slot == other.slot:
        return f"would both use tunnel {mine.slot.index} (device {mine.slot.device})"
    return ""


def suggest_subnet(mine: Joined, rest: list[Joined]) -> IPv4Network:
    """A 10.N.0.0/24 from 10.89.0.0/24 on that overlaps none of the box's subnets and has a free slot."""
    taken = [j.config.tunnel.subnet for j in rest]
    slots = {j.slot for j in rest}
    base = IPv4Network("10.89.0.0/24")
    for step in range(160):
        candidate = IPv4Network((int(base.network_address) + (step << 16), 24))
        if not any(candidate.overlaps(t) for t in taken) and further_slot(candidate) not in slots:
            return candidate
    return base  # pragma: no cover - seven slots cannot all be taken by 256 tries
