"""Firewall rules as data, the plan between what vpnoffload owns and wants, and the
mechanisms that apply it.

- :mod:`.rules`: the data (``Rule``, ``Ruleset``), owned-chain names, the ``Backend`` protocol;
- :mod:`.policy`: the desired rules of each end (``vps_ruleset``, ``home_ruleset``);
- :mod:`.planner`: the plan of atomic per-table commits between the two;
- :mod:`.iptc`: the python-iptables backend (legacy x_tables).

Only the mechanism modules in this package touch netfilter.
"""

from vpnoffload.firewall.planner import default_backend, describe, plan
from vpnoffload.firewall.policy import (
    fallback_address, home_ruleset, service_mark, vps_ruleset,
)
from vpnoffload.firewall.rules import (
    BUILTIN_CHAINS, DNAT_CHAIN, FORWARD_CHAIN, INPUT_CHAIN, IPV4, IPV6, MARK_MASK, MARK_SHIFT, MAX_SERVICES,
    OUTPUT_CHAIN, OWNED_PREFIX, TABLES, Backend, Family, Rule, Ruleset, empty_ruleset, is_owned, table_content,
    table_label,
)

__all__ = [
    "BUILTIN_CHAINS", "DNAT_CHAIN", "FORWARD_CHAIN", "INPUT_CHAIN", "IPV4", "IPV6", "MARK_MASK", "MARK_SHIFT",
    "MAX_SERVICES", "OUTPUT_CHAIN", "OWNED_PREFIX", "TABLES", "Backend", "Family", "Rule", "Ruleset",
    "default_backend", "describe", "empty_ruleset", "fallback_address", "home_ruleset", "is_owned", "plan",
    "service_mark", "table_content", "table_label", "vps_ruleset",
]
