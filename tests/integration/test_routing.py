"""Routing and sysctl backends against a real kernel, in throw-away namespaces.

A veth end named vpnoffload0 (198.51.100.2/24) stands in for the tun device;
its peer plays the VPS end. A second veth is the home's uplink with the main
default route. Everything is asserted by reading the kernel back with ``ip``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from tests.nslib import in_ns, link, namespaces, needs_root, sh, unique
from vpnoffload import routing
from vpnoffload.errors import ApplyError, BackendError
from vpnoffload.model import Config, Home, Service, Tunnel, Vps
from vpnoffload.plan import apply, summaries
from vpnoffload.routing import Address, Pyroute2Backend

pytestmark = [needs_root, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
A = IPv4Address


def make_config() -> Config:
    def svc(name: str, listen: str) -> Service:
        return Service(name=name, listen_address=A(listen), listen_port=80, home="home", target_port=8080)

    return Config(
        vps=Vps(address=A("203.0.113.1")),
        tunnel=Tunnel(subnet=IPv4Network("198.51.100.0/24")),
        homes={"home": Home("home", A("198.51.100.2"))},
        services={s.name: s for s in (svc("own", "203.0.113.1"), svc("a", "203.0.113.10"), svc("b", "203.0.113.11"))},
    )


@dataclass
class Lab:
    home: str
    peer: str
    uplink: str


def snapshot(ns: str) -> tuple[str, str]:
    return in_ns(ns, "ip", "rule").stdout, in_ns(ns, "ip", "route", "show", "table", "all").stdout


@pytest.fixture
def lab() -> Iterator[Lab]:
    home, peer = unique("home"), unique("peer")
    with namespaces(home, peer):
        link(home, "198.51.100.2/24", peer, "198.51.100.1/24", names=("vpnoffload0", "vpnpeer0"))
        uplink, _ = link(home, "203.0.113.2/24", peer, "203.0.113.1/24")
        in_ns(home, "ip", "route", "add", "default", "via", "203.0.113.1")
        # Someone else's policy routing, which must survive untouched.
        in_ns(home, "ip", "rule", "add", "from", "192.0.2.0/24", "lookup", "100", "priority", "100")
        in_ns(home, "ip", "route", "add", "192.0.2.0/24", "via", "203.0.113.1", "table", "100")
        in_ns(home, "ip", "rule", "add", "from", "192.0.2.77", "lookup", "200", "priority", "7701")
        yield Lab(home, peer, uplink)


def run_in_ns(ns: str, code: str) -> str:
    """Run Python inside ``ns`` the way the CLI runs: default namespace, no netns argument."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return in_ns(ns, sys.executable, "-c", code, env=env).stdout


def test_home_routing_up_is_idempotent_and_down_restores_everything(lab: Lab):
    before = snapshot(lab.home)
    desired = routing.home_routing(make_config(), "home")
    with Pyroute2Backend(netns=lab.home) as backend:
        plan = routing.plan_routing(backend, desired)
        assert summaries(plan) == [
            "add route default dev vpnoffload0 table 7701",
            "add rule from 198.51.100.2 lookup 7701 priority 7701",
            "add rule from all fwmark 0x20000000/0xe0000000 lookup 7701 priority 7701",
        ]
        apply(plan)
        assert routing.plan_routing(backend, desired) == []  # the mark rule reads back equal

        rules = in_ns(lab.home, "ip", "rule").stdout
        assert "7701:\tfrom 198.51.100.2 lookup 7701" in rules
        assert "7701:\tfrom all fwmark 0x20000000/0xe0000000 lookup 7701" in rules
        # ...and so do marked packets whatever their source (a container's replies)
        marked = in_ns(lab.home, "ip", "route", "get", "192.0.2.50", "mark", "0x20000000").stdout
        assert "dev vpnoffload0" in marked and "table 7701" in marked
        assert "7701:\tfrom 192.0.2.77 lookup 200" in rules
        assert in_ns(lab.home, "ip", "route", "show", "table", "7701").stdout.split("\n")[0].startswith(
            "default dev vpnoffload0"
        )
        # Replies from the tunnel address go back through the tunnel...
        via_tunnel = in_ns(lab.home, "ip", "route", "get", "192.0.2.50", "from", "198.51.100.2").stdout
        assert "dev vpnoffload0 table 7701" in via_tunnel
        # ...while the box's own traffic keeps the main default route.
        own = in_ns(lab.home, "ip", "route", "get", "192.0.2.50").stdout
        assert f"via 203.0.113.1 dev {lab.uplink}" in own

        down = routing.plan_routing_down(backend)
        assert summaries(down) == [
            "delete rule from 198.51.100.2 lookup 7701 priority 7701",
            "delete rule from all fwmark 0x20000000/0xe0000000 lookup 7701 priority 7701",
            "delete route default dev vpnoffload0 table 7701",
        ]
        apply(down)
        assert routing.plan_routing_down(backend) == []
    assert snapshot(lab.home) == before


def test_down_flushes_whatever_is_in_our_table(lab: Lab):
    in_ns(lab.home, "ip", "route", "add", "unreachable", "192.0.2.0/25", "table", "7701")
    in_ns(lab.home, "ip", "route", "add", "192.0.2.128/25", "via", "203.0.113.1", "table", "7701", "metric", "5")
    in_ns(lab.home, "ip", "rule", "add", "from", "198.51.100.9", "lookup", "7701", "priority", "7701")
    with Pyroute2Backend(netns=lab.home) as backend:
        assert summaries(routing.plan_routing_down(backend)) == [
            "delete rule from 198.51.100.9 lookup 7701 priority 7701",
            "delete route unreachable 192.0.2.0/25 table 7701",
            f"delete route 192.0.2.128/25 via 203.0.113.1 dev {lab.uplink} table 7701 metric 5",
        ]
        apply(routing.plan_routing_down(backend))
    assert in_ns(lab.home, "ip", "route", "show", "table", "7701").stdout == ""
    assert "lookup 7701" not in in_ns(lab.home, "ip", "rule").stdout


def test_missing_tunnel_is_a_readable_error_and_changes_nothing(lab: Lab):
    in_ns(lab.home, "ip", "link", "del", "vpnoffload0")
    before = snapshot(lab.home)
    with Pyroute2Backend(netns=lab.home) as backend:
        plan = routing.plan_routing(backend, routing.home_routing(make_config(), "home"))
        with pytest.raises(ApplyError) as info:
            apply(list(reversed(plan)))  # rule first, so there is something to roll back
    assert "cannot add route default dev vpnoffload0 table 7701: no such device vpnoffload0 (is the tunnel up?)" in str(
        info.value
    )
    assert "rolled back 2 earlier change(s)" in str(info.value)  # both rules
    assert snapshot(lab.home) == before


def test_wait_for_address_sees_the_tunnel_come_up(lab: Lab):
    in_ns(lab.home, "ip", "addr", "flush", "dev", "vpnoffload0")
    with Pyroute2Backend(netns=lab.home) as backend:
        with pytest.raises(BackendError, match="vpnoffload0 exists but did not get 198.51.100.2 within 0.3 s"):
            backend.wait_for_address("vpnoffload0", A("198.51.100.2"), timeout=0.3)
        later = threading.Timer(0.3, in_ns, (lab.home, "ip", "addr", "add", "198.51.100.2/24", "dev", "vpnoffload0"))
        later.start()
        try:
            backend.wait_for_address("vpnoffload0", A("198.51.100.2"), timeout=10)
        finally:
            later.join()
        with pytest.raises(BackendError, match="vpnoffload0x did not appear within 0.2 s"):
            backend.wait_for_address("vpnoffload0x", A("198.51.100.2"), timeout=0.2)


def test_reverse_path_filter_with_our_rule_and_loose_mode(lab: Lab):
    """A visitor's packet arriving on the tunnel passes rp_filter, inside the real CLI setting."""
    in_ns(lab.home, "sysctl", "-qw", "net.ipv4.conf.vpnoffload0.rp_filter=1")
    visitor = ("ip", "route", "get", "198.51.100.2", "from", "192.0.2.50", "iif", "vpnoffload0")
    assert in_ns(lab.home, *visitor, check=False).returncode != 0  # strict, no rule: dropped

    out = run_in_ns(
        lab.home,
        "from vpnoffload import routing, sysctl, plan\n"
        "from tests.integration.test_routing import make_config\n"
        "with routing.Pyroute2Backend() as b:\n"
        "    plan.apply(routing.plan_routing(b, routing.home_routing(make_config(), 'home')))\n"
        "actions, previous = sysctl.plan_sysctls(sysctl.home_sysctls())\n"
        "plan.apply(actions)\n"
        "print(previous)\n",
    )
    assert out.strip() == "{'net.ipv4.conf.vpnoffload0.rp_filter': '1'}"
    assert in_ns(lab.home, "sysctl", "-n", "net.ipv4.conf.vpnoffload0.rp_filter").stdout.strip() == "2"
    assert in_ns(lab.home, "sysctl", "-n", "net.ipv4.conf.all.rp_filter").stdout.strip() == "0"
    assert "local 198.51.100.2" in in_ns(lab.home, *visitor).stdout

    # Even strict mode passes once our rule is in place (the sysctl is belt and braces).
    in_ns(lab.home, "sysctl", "-qw", "net.ipv4.conf.vpnoffload0.rp_filter=1")
    assert in_ns(lab.home, *visitor).returncode == 0

    run_in_ns(
        lab.home,
        "from vpnoffload import routing, sysctl, plan\n"
        "with routing.Pyroute2Backend() as b:\n"
        "    plan.apply(routing.plan_routing_down(b))\n"
        "plan.apply(sysctl.restore_actions({'net.ipv4.conf.vpnoffload0.rp_filter': '0'}))\n",
    )
    assert in_ns(lab.home, "sysctl", "-n", "net.ipv4.conf.vpnoffload0.rp_filter").stdout.strip() == "0"
    assert "lookup 7701" not in in_ns(lab.home, "ip", "rule").stdout


def test_vps_addresses_added_and_only_ours_removed():
    vps, router = unique("vps"), unique("rtr")
    with namespaces(vps, router):
        eth, _ = link(vps, "203.0.113.1/24", router, "203.0.113.254/24")
        in_ns(vps, "ip", "route", "add", "default", "via", "203.0.113.254")
        in_ns(vps, "ip", "addr", "add", "203.0.113.11/32", "dev", eth)  # the admin's, not ours
        before = in_ns(vps, "ip", "-4", "addr").stdout
        with Pyroute2Backend(netns=vps) as backend:
            assert backend.find_interface(A("203.0.113.1")) == eth
            assert backend.find_interface(A("192.0.2.80")) == eth  # 1:1 NAT case: via the default route
            desired = routing.vps_addresses(make_config(), eth)
            actions, owned = routing.plan_addresses(backend, desired)
            assert summaries(actions) == [f"add address 203.0.113.10/32 dev {eth}"]
            apply(actions)
            assert "inet 203.0.113.10/32" in in_ns(vps, "ip", "-4", "addr", "show", "dev", eth).stdout
            record = [a.as_record() for a in owned]
            assert routing.plan_addresses(backend, desired, record) == ([], owned)

            apply(routing.plan_remove_addresses(backend, record))
            assert routing.plan_remove_addresses(backend, record) == []
        assert in_ns(vps, "ip", "-4", "addr").stdout == before

        in_ns(vps, "ip", "route", "del", "default")
        with Pyroute2Backend(netns=vps) as backend:
            with pytest.raises(BackendError, match="no interface holds or routes to 192.0.2.80"):
                backend.find_interface(A("192.0.2.80"))
            with pytest.raises(BackendError, match="cannot add address 203.0.113.12/32 dev nosuch0: no such device nosuch0"):
                backend.add_address(Address(A("203.0.113.12"), "nosuch0"))


def test_missing_namespace_is_an_error_and_is_not_created():
    name = unique("gone")
    with pytest.raises(BackendError, match=f"cannot open netlink in network namespace {name}"):
        Pyroute2Backend(netns=name).rules()
    assert name not in sh("ip", "netns", "list").stdout
