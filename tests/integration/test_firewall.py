"""IptcBackend against real legacy iptables, inside throw-away network namespaces.

python-iptables acts on the network namespace of its process, so each step
runs a small Python program under ``ip netns exec``; the rules are checked
both with our own read() and with ``iptables-legacy-save``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.nslib import check_forwarding, in_ns, namespaces, needs_root, unique
from vpnoffload.lab.snapshot import normalize_xtables_save

pytestmark = [needs_root, pytest.mark.root, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# Applies one of a few rulesets with plan() + apply(), then reports what it
# reads back. Writes JSON to argv[2] (python-iptables borrows fd 1 internally).
FIREWALL = r"""
import json, sys
from ipaddress import IPv4Address, IPv4Network
from vpnoffload import firewall as fw
from vpnoffload.firewall.iptc import IptcBackend
from vpnoffload.model import Config, Home, Service, Tunnel, Vps
from vpnoffload.plan import apply, summaries

config = Config(
    vps=Vps(IPv4Address("203.0.113.10")),
    tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
    homes={"home": Home("home", IPv4Address("198.51.100.2"))},
    services={
        "web": Service("web", IPv4Address("203.0.113.10"), 80, "home", 8080),
        "dns": Service("dns", IPv4Address("203.0.113.11"), 53, "home", 5353, proto="udp"),
    },
)
desired = {
    "vps": fw.vps_ruleset(config),
    "vps-fallback": fw.vps_ruleset(config, frozenset({"web", "dns"})),
    "home": fw.home_ruleset(config, "home"),
    "empty": fw.empty_ruleset(),
}[sys.argv[1]]
backend = IptcBackend()
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

def firewall(ns: str, which: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{which}-{unique('r')}.json"
    proc = in_ns(ns, sys.executable, "-c", FIREWALL, which, str(out), check=False, env=ENV)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def save(ns: str) -> list[str]:
    """iptables-legacy-save without comments and with counters zeroed."""
    text = in_ns(ns, "iptables-legacy-save").stdout
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines() if not line.startswith("#")]


def add_foreign_rules(ns: str) -> None:
    """Somebody else's rules and chain, in both tables vpnoffload uses."""
    for args in (
        ["-A", "FORWARD", "-s", "192.0.2.0/24", "-j", "ACCEPT"],
        ["-N", "FOREIGN"],
        ["-A", "FOREIGN", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
        ["-A", "INPUT", "-j", "FOREIGN"],
        ["-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-j", "MASQUERADE"],
    ):
        in_ns(ns, "iptables-legacy", "-w", "5", *args)


def test_apply_reads_back_is_idempotent_and_removes_only_ours(tmp_path: Path) -> None:
    with namespaces(unique("fw")) as (ns,):
        add_foreign_rules(ns)
        before = save(ns)

        up = firewall(ns, "vps", tmp_path)
        assert up["applied"] and up["read_equal"], up["read"]
        assert up["replan"] == []

        saved = save(ns)
        for line in up["desired"]:
            if line.startswith("-A"):
                assert line in saved  # our read() prints exactly what iptables-save prints
            elif line.startswith(":"):
                assert f"{line} - [0:0]" in saved
        forward = [x for x in saved if x.startswith("-A FORWARD")]
        # The watchdog's counting chains first (they only count), then ours, then the host's.
        assert forward == ["-A FORWARD -i vpnoffload0 -j VPNOFFLOAD-EVIN",
                           "-A FORWARD -j VPNOFFLOAD-FWD", "-A FORWARD -s 192.0.2.0/24 -j ACCEPT"]
        # What leaves for home is counted after every verdict, in mangle POSTROUTING.
        assert "-A POSTROUTING -o vpnoffload0 -j VPNOFFLOAD-EVOUT" in saved
        assert "-A INPUT -j FOREIGN" in saved and "-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE" in saved
        # python-iptables was kept away from the tables we do not use.
        assert not {"*raw", "*security"} & set(saved)

        again = firewall(ns, "vps", tmp_path)  # a second `up`, in a new process
        assert again["applied"] == [] and save(ns) == saved

        changed = firewall(ns, "home", tmp_path)
        assert changed["read_equal"] and changed["replan"] == []  # mangle marks and ctorig matches read back equal
        assert "-A PREROUTING -j VPNOFFLOAD-MARK" in save(ns)
        # A jump into our chain from someone else's chain is ours too: `down` takes it
        # (else the chain could not be deleted).
        in_ns(ns, "iptables-legacy", "-w", "5", "-A", "FOREIGN", "-j", "VPNOFFLOAD-IN")

        down = firewall(ns, "empty", tmp_path)
        assert down["read_equal"] and down["read"] == [] and down["replan"] == []
        # The home's marks registered the legacy mangle table, which stays (empty,
        # policy ACCEPT) once touched: that is not a leftover.
        assert normalize_xtables_save("\n".join(save(ns))) == normalize_xtables_save("\n".join(before))


def test_forwarding_through_the_rules(tmp_path: Path) -> None:
    """visitor -> VPS:80 reaches home:8080 with the visitor's own address; nothing
    else crosses the tunnel, and a service on fallback is refused at once."""
    check_forwarding(firewall, tmp_path)
