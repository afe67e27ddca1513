"""The probe namespace's names and addresses: where the watchdog's second check starts.

A check from the VPS's own stack (``health.probe``) goes out through OUTPUT and
never meets PREROUTING or FORWARD, so a rule that drops forwarded traffic to
home (a firewall change, rp_filter, a broken route at home) leaves it passing
while every visitor times out. The running watchdog therefore keeps a small
network namespace of its own (:mod:`vpnoffload.watch.probe`) with a veth pair
to the VPS (:data:`VPS_DEVICE` on the VPS side, :data:`PROBE_DEVICE` inside, on
:data:`SUBNET`); a connection opened in it arrives on the VPS like a visitor's:
PREROUTING (DNAT), FORWARD, the tunnel, home, and back through conntrack (no SNAT).

This module is only the shared vocabulary: the firewall rules
(``firewall.policy``, ``firewall.hostfw``) let the probe's flows through by
these names whether or not a watchdog runs. Stdlib only (the lean watchdog
imports it).
"""

from __future__ import annotations

import os

#: The VPS end of the veth pair (<= 15 characters) and the end inside the probe namespace.
VPS_DEVICE = "vpnoffload-pb"
PROBE_DEVICE = "probe0"
#: A /30 from the benchmarking range (198.18.0.0/15): the VPS side gets the first host, the probe the second.
#: Override with VPNOFFLOAD_PROBE_SUBNET where it collides with something on the VPS.
DEFAULT_SUBNET = "198.18.255.252/30"


def subnet(env: "dict[str, str] | os._Environ[str] | None" = None) -> str:
    """The probe's /30 (``VPNOFFLOAD_PROBE_SUBNET`` or :data:`DEFAULT_SUBNET`)."""
    return (os.environ if env is None else env).get("VPNOFFLOAD_PROBE_SUBNET") or DEFAULT_SUBNET


def addresses(net: str | None = None) -> tuple[str, str]:
    """(VPS side, probe side) of the /30 ``net``: its first and second host addresses."""
    base, _, length = (net or subnet()).partition("/")
    if length != "30":
        raise ValueError(f"the probe subnet must be a /30, not {net!r}")
    a, b, c, d = (int(x) for x in base.split("."))
    first = ((a << 24) | (b << 16) | (c << 8) | d) & ~3
    return _dotted(first + 1), _dotted(first + 2)


def _dotted(n: int) -> str:
    return ".".join(str((n >> s) & 0xFF) for s in (24, 16, 8, 0))
