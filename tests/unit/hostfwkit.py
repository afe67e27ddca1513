"""Helpers shared by the host-firewall unit tests: the config, the recorded rulesets, a fake firewalld."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

from vpnoffload.firewall.host.openings import detect

SAMPLES = Path(__file__).parent / "hostfw"


CONFIG = """
[vps]
address = "203.0.113.10"
[tunnel]
subnet = "198.51.100.0/24"
[homes.home]
address = "198.51.100.2"
[services.web]
listen = "80"
target = "8080"
check = "http:/"
hostname = "blog.example.org"
fallback = "page"
[services.git]
listen = "203.0.113.11:22"
target = "2222"
"""


def sample(name: str) -> dict:
    return json.loads((SAMPLES / f"{name}.json").read_text())


def firewalld_13() -> dict:
    """The firewalld-shaped sample as firewalld 1.3 writes it: ``ct status dnat accept`` in filter_INPUT
    and filter_FORWARD (firewalld's nftables.py), not a jump."""
    ruleset = copy.deepcopy(sample("firewalld"))
    for item in ruleset["nftables"]:
        rule = item.get("rule")
        if rule and any("jump" in e and e["jump"]["target"].endswith("_dnat") for e in rule["expr"]):
            rule["expr"][-1] = {"accept": None}
    # firewalld 1.3's RFC 3964 reject in filter_OUTPUT (build_rfc3964_ipv4_rules): it makes the chain
    # "drop", but nothing vpnoffload sends goes there.
    ruleset["nftables"].append({"rule": {"family": "inet", "table": "firewalld", "chain": "filter_OUTPUT", "handle": 99,
                                         "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6",
                                                  "field": "daddr"}}, "right": {"set": [{"prefix": {
                                                      "addr": "2002:a00::", "len": 24}}]}}},
                                                  {"reject": {"type": "icmpv6", "expr": "addr-unreachable"}}]}})
    return ruleset


def running_host(zones=(("eth0", "public"),), default="public"):
    return detect(firewalld_13(), firewalld=True, firewalld_zones=zones, firewalld_default=default)


class FakeFirewalld:
    """firewall-cmd's runtime: rich rules and interface bindings per zone; every argv kept."""

    def __init__(self) -> None:
        self.rich: dict[str, set[str]] = {}
        self.interfaces: dict[str, set[str]] = {}
        self.argvs: list[list[str]] = []
        self.state = "running"

    def __call__(self, argv, **kwargs) -> subprocess.CompletedProcess:
        self.argvs.append(argv)
        args = dict(a.removeprefix("--").split("=", 1) if "=" in a else (a.removeprefix("--"), "") for a in argv[1:])
        zone = args.get("zone", "public")
        out = ""
        if "state" in args:
            out = self.state
        elif "query-rich-rule" in args:
            out = "yes" if args["query-rich-rule"] in self.rich.get(zone, set()) else "no"
        elif "add-rich-rule" in args:
            self.rich.setdefault(zone, set()).add(args["add-rich-rule"])
        elif "remove-rich-rule" in args:
            self.rich[zone].remove(args["remove-rich-rule"])
        elif "query-interface" in args:
            out = "yes" if args["query-interface"] in self.interfaces.get(zone, set()) else "no"
        elif "get-zone-of-interface" in args:
            out = next((z for z, i in self.interfaces.items() if args["get-zone-of-interface"] in i), "no zone")
        elif "add-interface" in args:
            self.interfaces.setdefault(zone, set()).add(args["add-interface"])
        elif "remove-interface" in args:
            self.interfaces[zone].remove(args["remove-interface"])
        else:
            raise AssertionError(f"unexpected firewall-cmd {argv}")
        assert "--permanent" not in argv
        return subprocess.CompletedProcess(argv, 0 if out != "no" else 1, out + "\n", "")

    def reload(self) -> None:
        """What --reload does to the runtime: back to the permanent configuration (here: empty)."""
        self.rich.clear()


class FakeChild:
    def __init__(self, code: int | None) -> None:
        self.code, self.pid, self.closed, self.killed = code, 4242, False, False

    def poll(self) -> int | None:
        return self.code

    def close(self) -> None:
        self.closed = True

    def kill(self) -> None:
        self.killed = True
