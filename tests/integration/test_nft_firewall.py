"""NftBackend against the real nf_tables, inside throw-away network namespaces: the same
checks tests/integration/test_firewall.py makes of the python-iptables backend.

nft acts on the network namespace it runs in, so each step runs a small Python
program under ``ip netns exec``; the rules are checked with our own read(), and
independently with ``nft -j list ruleset`` and ``nft list ruleset``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.nslib import check_forwarding, in_ns, namespaces, needs_root, nft_sent_to_home, unique
from tests.prereq import requires, tool_problem
from vpnoffload.firewall import nft

pytestmark = [
    needs_root, pytest.mark.root, pytest.mark.timeout(120),
    requires(tool_problem("nft", "apt-get install nftables")),
]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "VPNOFFLOAD_FIREWALL": "nft"}

# Applies one of a few rulesets with plan() + apply() through the default backend
# (VPNOFFLOAD_FIREWALL=nft), then reports what it reads back.
FIREWALL = r"""
import json, sys
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from vpnoffload import firewall as fw
from vpnoffload.firewall.nft import NftBackend
from vpnoffload.model import Config, Home, Service, Tunnel, Vps
from vpnoffload.plan import apply, summaries

config = Config(
    vps=Vps(IPv4Address("203.0.113.10")),
    tunnel=Tunnel(IPv4Network("198.51.100.0/24"), subnet6=IPv6Network("fd00:88::/64")),
    homes={"home": Home("home", IPv4Address("198.51.100.2"), address6=IPv6Address("fd00:88::2"))},
    services={
        "web": Service("web", IPv4Address("203.0.113.10"), 80, "home", 8080),
        "dns": Service("dns", IPv4Address("203.0.113.11"), 53, "home", 5353, proto="udp"),
        "web6": Service("web6", IPv6Address("2001:db8:1::80"), 80, "home", 8080),
    },
)
desired = {
    "vps": fw.vps_ruleset(config),
    "vps-fallback": fw.vps_ruleset(config, frozenset({"web", "dns", "web6"})),
    "home": fw.home_ruleset(config, "home"),
    "empty": fw.empty_ruleset(),
}[sys.argv[1]]
backend = fw.default_backend()
assert isinstance(backend, NftBackend), backend
actions = fw.plan(backend, desired)
apply(actions)
read = backend.read()
result = {
    "applied": summaries(actions),
    "desired": desired.lines(),
    "read": read.lines(),
    "read_equal": read == desired,
    "replan": summaries(fw.plan(backend, desired)),
}
with open(sys.argv[2], "w") as out:
    json.dump(result, out)
"""

FOREIGN = """
table inet host {
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 22 accept comment "the host's own"
    }
}
table ip6 keepme {
    chain forward {
        type filter hook forward priority 10; policy accept;
        ip6 saddr 2001:db8::/32 counter
    }
}
"""


def firewall(ns: str, which: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{which}-{unique('r')}.json"
    proc = in_ns(ns, sys.executable, "-c", FIREWALL, which, str(out), check=False, env=ENV)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def ruleset(ns: str) -> str:
    return in_ns(ns, "nft", "list", "ruleset").stdout


def our_tables(ns: str) -> dict[str, dict]:
    """Our tables as ``nft -j list ruleset`` shows them: {"ip": {chain: [rule exprs]}, ...}."""
    items = json.loads(in_ns(ns, "nft", "-j", "list", "ruleset").stdout)["nftables"]
    out: dict[str, dict] = {}
    for item in items:
        if "chain" in item and item["chain"]["table"] == "vpnoffload":
            out.setdefault(item["chain"]["family"], {})[item["chain"]["name"]] = item["chain"]
    return out


def test_apply_reads_back_is_idempotent_and_removes_only_ours(tmp_path: Path) -> None:
    with namespaces(unique("nft")) as (ns,):
        in_ns(ns, "nft", "-f", "-", input=FOREIGN)
        in_ns(ns, "iptables-nft", "-w", "5", "-A", "FORWARD", "-s", "192.0.2.0/24", "-j", "ACCEPT")
        before = ruleset(ns)

        up = firewall(ns, "vps", tmp_path)
        assert up["applied"] and up["read_equal"], up["read"]
        assert up["replan"] == []
        # Read back independently of the backend: the whole ruleset, parsed.
        listing = json.loads(in_ns(ns, "nft", "-j", "list", "ruleset").stdout)
        parsed = [nft.parse_table(f, listing).ruleset for f in nft.FAMILIES]
        assert sorted(parsed[0].lines() + parsed[1].lines()) == sorted(up["desired"])
        chains = our_tables(ns)
        assert set(chains) == {"ip", "ip6"}
        prerouting = chains["ip"]["nat-PREROUTING"]
        assert (prerouting["type"], prerouting["hook"], prerouting["prio"]) == ("nat", "prerouting", -100)
        assert (chains["ip6"]["filter-FORWARD"]["hook"], chains["ip6"]["filter-FORWARD"]["prio"]) == ("forward", 0)
        assert {"VPNOFFLOAD-DNAT", "VPNOFFLOAD-FWD", "VPNOFFLOAD-IN"} <= set(chains["ip"])
        text = ruleset(ns)
        assert "dnat to 198.51.100.2:8080" in text and "dnat to [fd00:88::2]:8080" in text
        assert "ct mark set ct mark" in text and "ct status dnat" in text
        # Everybody else's tables are as they were.
        for line in before.splitlines():
            assert line in text

        again = firewall(ns, "vps", tmp_path)  # a second `up`, in a new process
        assert again["applied"] == [] and ruleset(ns) == text

        fallback = firewall(ns, "vps-fallback", tmp_path)
        assert fallback["read_equal"] and fallback["replan"] == []
        assert "reject with tcp reset" in ruleset(ns)

        changed = firewall(ns, "home", tmp_path)
        assert changed["read_equal"] and changed["replan"] == []
        assert "nat-PREROUTING" not in ruleset(ns)  # home has no nat: its base chain went

        down = firewall(ns, "empty", tmp_path)
        assert down["read_equal"] and down["read"] == [] and down["replan"] == []
        assert our_tables(ns) == {}
        assert ruleset(ns) == before  # byte for byte


def test_forwarding_through_the_rules(tmp_path: Path) -> None:
    """visitor -> VPS:80 reaches home:8080 with the visitor's own address; nothing
    else crosses the tunnel, a service on fallback is refused at once, and emptied
    ends hold nothing of ours (the same checks as for python-iptables)."""
    def nothing_left(vps: str, home: str) -> None:
        assert ruleset(vps) == "" and ruleset(home) == ""

    check_forwarding(firewall, tmp_path, nothing_left, nft_sent_to_home)


# A deny list of adjacent, nested and overlapping prefixes, applied as `up vps` applies it;
# prints the set's name and its listing.
DENY_LIST = r"""
import json, sys
from vpnoffload import firewall as fw
from vpnoffload.config.parse import parse
from vpnoffload.plan import apply

config = parse({"vps": {"address": "203.0.113.10"}, "homes": {"home": {"address": "10.88.0.2"}},
                "services": {"web": {"listen": "80", "target": "8080", "deny_file": sys.argv[1]}}})
desired = fw.vps_ruleset(config) if sys.argv[2] == "up" else fw.empty_ruleset()
backend = fw.default_backend()
apply(fw.plan(backend, desired))
print(json.dumps({"sets": [s.name for s in desired.sets], "replan": len(fw.plan(backend, desired))}))
"""


def test_a_merged_deny_set_holds_exactly_the_listed_addresses(tmp_path: Path) -> None:
    deny = tmp_path / "deny.txt"
    deny.write_text("\n".join([
        "192.0.2.0/26", "192.0.2.64/26",  # adjacent ...
        "192.0.2.128/25", "192.0.2.130",  # ... and nested: one prefix, 192.0.2.0/24
        "198.51.100.8/29", "198.51.100.12/30",  # overlapping
        "198.51.100.17",  # after a gap at .16
        "203.0.113.0/31", "203.0.113.2/32",  # adjacent, and no prefix: a range
        "2001:db8::/64",  # another family: not in the IPv4 set
    ]) + "\n")
    with namespaces(unique("nfs")) as (ns,):
        before = ruleset(ns)
        up = json.loads(in_ns(ns, sys.executable, "-c", DENY_LIST, str(deny), "up", env=ENV).stdout)
        assert up["replan"] == 0
        (name,) = up["sets"]
        listing = in_ns(ns, "nft", "list", "set", "ip", "vpnoffload", name).stdout
        assert " ".join(listing.split()).count("elements = { 192.0.2.0/24, 198.51.100.8/29, 198.51.100.17, "
                                               "203.0.113.0-203.0.113.2 }") == 1, listing

        def member(address: str) -> bool:  # the kernel's own lookup
            return in_ns(ns, "nft", "get", "element", "ip", "vpnoffload", name, "{", address, "}",
                         check=False).returncode == 0

        inside = ["192.0.2.0", "192.0.2.127", "192.0.2.128", "192.0.2.255", "198.51.100.8", "198.51.100.15",
                  "198.51.100.17", "203.0.113.0", "203.0.113.2"]
        outside = ["192.0.1.255", "192.0.3.0", "198.51.100.7", "198.51.100.16", "198.51.100.18", "203.0.113.3"]
        assert [a for a in inside if not member(a)] == []
        assert [a for a in outside if member(a)] == []

        in_ns(ns, sys.executable, "-c", DENY_LIST, str(deny), "down", env=ENV)
        assert ruleset(ns) == before
