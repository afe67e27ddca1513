"""The access keys of a service: ``allow``, ``deny``, ``allow_file``,
``deny_file``, ``rate`` and ``max_conns``, checked into a :class:`~vpnoffload.model.Access`.

The same checks serve the TOML keys and the flags of ``service add``/``service
set`` (which write those keys), so a bad value gets one line naming the key.
The prefix files themselves are read by ``up vps`` (see
:mod:`vpnoffload.firewall.access`): they can be large, and the home box shares
this config without them.
"""

from __future__ import annotations

import re
from ipaddress import ip_network
from typing import Any

from vpnoffload.config import checks
from vpnoffload.errors import ConfigError
from vpnoffload.model import Access, IPNetwork
from vpnoffload.names import shown

ACCESS_KEYS = ("allow", "deny", "allow_file", "deny_file", "rate", "max_conns")
#: More inline prefixes belong in a file (one parse of the config stays cheap).
MAX_INLINE = 1000
MAX_RATE = 100_000
MAX_CONNS = 100_000
RATE_RE = re.compile(r"([0-9]{1,6})/s(ec(ond)?)?")


def parse_access(body: dict[str, Any], field: str) -> Access:
    """The access keys of one service's table (all optional)."""
    rate = body.get("rate")
    max_conns = body.get("max_conns")
    return Access(
        allow=prefixes(body.get("allow", []), f"{field}.allow"),
        deny=prefixes(body.get("deny", []), f"{field}.deny"),
        allow_file=checks.optional_file(body.get("allow_file"), f"{field}.allow_file"),
        deny_file=checks.optional_file(body.get("deny_file"), f"{field}.deny_file"),
        rate=None if rate is None else check_rate(rate, f"{field}.rate"),
        max_conns=None if max_conns is None else checks.number(max_conns, f"{field}.max_conns", integer=True,
                                                               minimum=1, maximum=MAX_CONNS),
    )


def prefixes(value: Any, field: str) -> tuple[IPNetwork, ...]:
    """A list of CIDR prefixes ("192.0.2.0/24", "2001:db8::/32"; a bare address is one host)."""
    if not isinstance(value, list):
        raise ConfigError('must be a list of prefixes, e.g. ["192.0.2.0/24", "2001:db8::/32"]', field=field)
    if len(value) > MAX_INLINE:
        raise ConfigError(f"{len(value)} prefixes: put more than {MAX_INLINE} in a file (allow_file/deny_file)",
                          field=field)
    found = [prefix(item, field) for item in value]
    return tuple(dict.fromkeys(found))


def prefix(value: Any, field: str) -> IPNetwork:
    """One prefix; host bits must be zero (198.51.100.0/24, not 198.51.100.7/24)."""
    if not isinstance(value, str) or not value.isascii() or not value.strip():
        raise ConfigError(f"{shown(value)} is not a prefix (e.g. 192.0.2.0/24 or 2001:db8::/32)", field=field)
    try:
        return ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ConfigError(f"{shown(value)} is not a prefix ({exc})", field=field) from None


def check_rate(value: Any, field: str) -> int:
    """``"10/s"``: new connections per second per source, 1 to 100000."""
    text = value.strip() if isinstance(value, str) else None
    found = RATE_RE.fullmatch(text) if text else None
    if found is None or not 1 <= int(found.group(1)) <= MAX_RATE:
        raise ConfigError(f"{shown(value)} is not a rate: give new connections per second per source, "
                          f"e.g. \"10/s\" (1 to {MAX_RATE})", field=field)
    return int(found.group(1))


def rate_text(rate: int) -> str:
    return f"{rate}/s"
