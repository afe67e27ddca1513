"""The fail-fast rule for proxy services against real legacy iptables, in a throw-away
namespace: while a proxy service is on fallback, a connection from the VPS itself
to the dead home is reset at once, but a health check (carrying HEALTH_MARK)
still goes out to see whether home is back. The rule reads back as written, so a
second apply plans nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.budget import budget
from tests.nslib import in_ns, namespaces, needs_root, unique

pytestmark = [needs_root, pytest.mark.root, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# Writes the filter part of vps_ruleset with blog on fallback, then tries to
# connect to home the way nginx would and the way the watchdog does.
PROGRAM = r"""
import json, socket, sys, time
from vpnoffload import firewall as fw
from vpnoffload.watch import health
from vpnoffload.config import parse_text
from vpnoffload.firewall.iptc import IptcBackend
from vpnoffload.plan import apply, summaries

config = parse_text('''
[vps]
address = "203.0.113.10"
[tunnel]
subnet = "198.51.100.0/24"
[homes.home]
address = "198.51.100.2"
[services.blog]
listen = "80"
target = "8080"
hostname = "blog.example.org"
via = "proxy"
''')
desired = fw.vps_ruleset(config, active={"blog": sys.argv[1] or None}).table("filter")
backend = IptcBackend()
apply(fw.plan(backend, desired))
result = {"read_equal": backend.read().table("filter") == desired,
          "replan": summaries(fw.plan(backend, desired))}

def attempt(connect):
    start = time.monotonic()
    try:
        connect().close()
        verdict = "open"
    except ConnectionRefusedError:
        verdict = "refused"
    except TimeoutError:
        verdict = "timeout"
    return verdict, time.monotonic() - start

result["web_server"] = attempt(lambda: socket.create_connection(("198.51.100.2", 8080), timeout=0.5))
result["health_check"] = attempt(lambda: health.connect("198.51.100.2", 8080, 0.5))
with open(sys.argv[2], "w") as out:
    json.dump(result, out)
"""


def run(ns: str, active: str, tmp_path: Path) -> dict:
    out = tmp_path / f"result-{active or 'fallback'}.json"
    in_ns(ns, sys.executable, "-c", PROGRAM, active, str(out), env=ENV, timeout=30)
    return json.loads(out.read_text())


def test_dead_home_is_refused_at_once_except_to_health_checks(tmp_path: Path) -> None:
    with namespaces(unique("ff")) as (ns,):
        # Home's tunnel address is routed into a veth whose other end answers
        # nothing: packets vanish there, as into a tunnel whose far end is gone.
        in_ns(ns, "ip", "link", "add", "vpnoffload0", "type", "veth", "peer", "name", "deadend")
        in_ns(ns, "ip", "addr", "add", "198.51.100.1/24", "dev", "vpnoffload0")
        in_ns(ns, "ip", "link", "set", "deadend", "up")
        in_ns(ns, "ip", "link", "set", "vpnoffload0", "up")

        down = run(ns, "", tmp_path)
        assert down["read_equal"] and down["replan"] == []
        verdict, seconds = down["web_server"]
        assert verdict == "refused" and seconds < budget().refused_at_once
        assert down["health_check"][0] == "timeout"  # not refused: the check sees the real (dead) home
        rules = in_ns(ns, "iptables-legacy-save", "-t", "filter").stdout
        assert "-A OUTPUT -j VPNOFFLOAD-OUT" in rules
        assert "-m mark ! --mark 0x10000000/0x10000000 -j REJECT --reject-with tcp-reset" in rules

        up = run(ns, "home", tmp_path)
        assert up["read_equal"] and up["replan"] == []
        assert up["web_server"][0] == "timeout"  # no longer refused: home may be tried again
