"""IPv6 against a real kernel, in throw-away namespaces: ip6tables rules written
with python-iptables (read back, compared with ``ip6tables-legacy-save``,
removed), DNAT in both families from one process, and pyroute2's IPv6 policy
routing and dedicated addresses (with duplicate address detection).

Addresses: 2001:db8::/32 (documentation) and the ULA fd00:88::/64 only.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest

from tests.nslib import in_ns, link, namespaces, needs_root, sh, unique
from vpnoffload import routing
from vpnoffload.errors import ApplyError
from vpnoffload.lab.snapshot import normalize_xtables_save
from vpnoffload.plan import apply
from vpnoffload.routing import Address, Pyroute2Backend

pytestmark = [needs_root, pytest.mark.root, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

CONFIG = """
[vps]
address = "203.0.113.10"
[tunnel]
subnet = "198.51.100.0/24"
subnet6 = "fd00:88::/64"
[homes.home]
address = "198.51.100.2"
[services.blog]
listen = "[2001:db8:1::80]:80"
target = "8080"
[services.dns6]
listen = "[2001:db8:1::53]:53"
target = "5353"
proto = "udp"
[services.web]
listen = "80"
target = "8081"
"""

# Applies the rulesets named in argv[2:] one after the other in ONE process (as
# the watchdog's swap child does), reporting what it reads back after the last.
FIREWALL = r"""
import json, sys
from vpnoffload import config as cfg, firewall as fw
from vpnoffload.firewall.iptc import IptcBackend
from vpnoffload.plan import apply, summaries
config = cfg.parse_text(sys.stdin.read())
backend = IptcBackend()
applied = []
for which in sys.argv[2:]:
    desired = {
        "vps": fw.vps_ruleset(config),
        "vps-fallback": fw.vps_ruleset(config, frozenset({"blog", "dns6"})),
        "nat6-only": fw.vps_ruleset(config).table("nat6"),
        "home": fw.home_ruleset(config, "home"),
        "empty": fw.empty_ruleset(),
    }[which]
    actions = fw.plan(backend, desired)
    apply(actions)
    applied.append(summaries(actions))
read = backend.read()
with open(sys.argv[1], "w") as out:
    json.dump({"applied": applied, "desired": desired.lines(), "read": read.lines(), "read_equal": read == desired,
               "replan": summaries(fw.plan(backend, desired))}, out)
"""


def firewall(ns: str, tmp_path: Path, *which: str) -> dict:
    out = tmp_path / f"{unique('r')}.json"
    proc = in_ns(ns, sys.executable, "-c", FIREWALL, str(out), *which, check=False, env=ENV, input=CONFIG)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def save6(ns: str) -> list[str]:
    text = in_ns(ns, "ip6tables-legacy-save").stdout
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines() if not line.startswith("#")]


def _sections(lines: list[str], *tables: str) -> list[str]:
    """The lines of the named tables' sections (``*filter6`` ...) of a ruleset's ``lines()``."""
    out: list[str] = []
    keep = False
    for line in lines:
        if line.startswith("*"):
            keep = line[1:] in tables
        elif keep:
            out.append(line)
    return out


def test_ip6tables_rules_apply_read_back_and_go_away(tmp_path: Path) -> None:
    with namespaces(unique("fw6")) as (ns,):
        # Somebody else's IPv6 rules, which must survive.
        in_ns(ns, "ip6tables-legacy", "-w", "5", "-A", "FORWARD", "-s", "2001:db8:9::/64", "-j", "ACCEPT")
        in_ns(ns, "ip6tables-legacy", "-w", "5", "-t", "nat", "-A", "POSTROUTING", "-s", "2001:db8:9::/64",
              "-j", "MASQUERADE")
        before = save6(ns)

        up = firewall(ns, tmp_path, "vps")
        assert up["read_equal"] and up["replan"] == [], up["read"]
        saved = save6(ns)
        lines = up["desired"]
        v6_lines = _sections(lines, "filter6", "nat6")
        for line in v6_lines:
            if line.startswith("-A"):
                assert line in saved, line  # read back exactly as ip6tables-save prints it
        assert "-A VPNOFFLOAD-DNAT -d 2001:db8:1::80/128 -p tcp -m tcp --dport 80 -j DNAT --to-destination [fd00:88::2]:8080" in saved
        assert [x for x in saved if x.startswith("-A FORWARD")] == \
            ["-A FORWARD -j VPNOFFLOAD-FWD", "-A FORWARD -s 2001:db8:9::/64 -j ACCEPT"]
        assert not {"*mangle", "*raw", "*security"} & set(saved)

        # Swaps to the page and back, and the home rules, in new processes.
        fallback = firewall(ns, tmp_path, "vps-fallback", "vps")
        assert fallback["read_equal"] and "[2001:db8:1::80]:503" in "\n".join(fallback["applied"][0])
        home = firewall(ns, tmp_path, "home")
        assert home["read_equal"] and "-A VPNOFFLOAD-IN -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT" in save6(ns)

        down = firewall(ns, tmp_path, "empty")
        assert down["read"] == [] and down["replan"] == []
        # The home's marks registered ip6tables' mangle, which stays (empty) once touched.
        assert normalize_xtables_save("\n".join(save6(ns))) == normalize_xtables_save("\n".join(before))


def test_dnat_in_both_families_from_one_process_either_order(tmp_path: Path) -> None:
    """libxt_NAT.so serves DNAT to both families only after iptc_backend registers it twice."""
    with namespaces(unique("fwo")) as (ns,):
        first_v6 = firewall(ns, tmp_path, "nat6-only", "vps")  # IPv6 DNAT written before IPv4's
        assert first_v6["read_equal"], first_v6["read"]
        assert firewall(ns, tmp_path, "empty")["read"] == []
        first_v4 = firewall(ns, tmp_path, "vps", "vps-fallback")
        assert first_v4["read_equal"], first_v4["read"]
        firewall(ns, tmp_path, "empty")


def test_ipv4_only_hosts_never_touch_ip6tables(tmp_path: Path) -> None:
    with namespaces(unique("fw4")) as (ns,):
        script = ("from vpnoffload.firewall.iptc import IptcBackend; IptcBackend().read(); "
                  "print(open('/proc/net/ip6_tables_names').read().split() if "
                  "__import__('os').path.exists('/proc/net/ip6_tables_names') else [])")
        out = in_ns(ns, sys.executable, "-c", script, env=ENV).stdout
        assert out.strip() == "[]"


def wait_for_dad(*names: str) -> None:
    """Until the link addresses stopped being tentative (they take no traffic before)."""
    deadline = time.monotonic() + 10
    while any(in_ns(ns, "ip", "-6", "addr", "show", "tentative").stdout.strip() for ns in names):
        assert time.monotonic() < deadline, "duplicate address detection did not finish"
        time.sleep(0.1)


def test_ipv6_policy_routing_and_dedicated_address_with_dad() -> None:
    home, peer = unique("h6"), unique("p6")
    with namespaces(home, peer):
        link(home, "2001:db8:3::2/64", peer, "2001:db8:3::1/64", names=("eth0", "eth0"))
        wait_for_dad(home, peer)
        sh("ip", "-n", home, "tuntap", "add", "dev", "vpnoffload0", "mode", "tun")
        sh("ip", "-n", home, "link", "set", "vpnoffload0", "up")
        rules_before = in_ns(home, "ip", "-6", "rule").stdout
        with Pyroute2Backend(home) as backend:
            desired = routing.RoutingState(
                rules=(routing.Rule(IPv6Network("fd00:88::2/128")),),
                routes=(routing.Route(routing.ANY6, "vpnoffload0"),),
            )
            apply(routing.plan_routing(backend, desired))
            assert routing.plan_routing(backend, desired) == []  # the kernel's metric 1024 reads back as none
            assert "from fd00:88::2 lookup 7701" in in_ns(home, "ip", "-6", "rule").stdout
            assert "default dev vpnoffload0" in in_ns(home, "ip", "-6", "route", "show", "table", "7701").stdout
            got = in_ns(home, "ip", "-6", "route", "get", "2001:db8:2::2", "from", "fd00:88::2").stdout
            assert "dev vpnoffload0" in got and "table 7701" in got

            # A dedicated address: added only once DAD passed (so it takes traffic at once).
            actions, owned = routing.plan_addresses(backend, [Address(IPv6Address("2001:db8:3::80"), "eth0", 128)])
            apply(actions)
            shown = in_ns(home, "ip", "-6", "addr", "show", "dev", "eth0").stdout
            assert re.search(r"inet6 2001:db8:3::80/128 scope global \n", shown), shown  # not "tentative"
            assert in_ns(peer, "ping", "-6", "-c1", "-W2", "2001:db8:3::80", check=False).returncode == 0

            # Someone else on the link already has this one: a clear error, nothing left behind.
            in_ns(peer, "ip", "-6", "addr", "add", "2001:db8:3::81/64", "dev", "eth0", "nodad")
            taken, _ = routing.plan_addresses(backend, [Address(IPv6Address("2001:db8:3::81"), "eth0", 128)])
            with pytest.raises(ApplyError, match="already uses it"):
                apply(taken)
            assert "2001:db8:3::81" not in in_ns(home, "ip", "-6", "addr").stdout

            apply(routing.plan_remove_addresses(backend, owned))
            apply(routing.plan_routing_down(backend))
        assert "2001:db8:3::80" not in in_ns(home, "ip", "-6", "addr").stdout
        assert in_ns(home, "ip", "-6", "rule").stdout == rules_before
        assert in_ns(home, "ip", "-6", "route", "show", "table", "7701", check=False).stdout == ""
