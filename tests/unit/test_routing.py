"""Routing plans on the fake backend: exact summaries, idempotency, only ours removed."""

from __future__ import annotations

import os
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from vpnoffload import routing
from vpnoffload.errors import ApplyError, BackendError, ConfigError
from vpnoffload.model import Config, Home, Service, Tunnel, Vps
from vpnoffload.plan import apply, summaries
from tests.fakes import FakeRoutingBackend
from vpnoffload.routing import Address, Route, Rule

A = IPv4Address
N = IPv4Network


def make_config() -> Config:
    def svc(name: str, listen: str, port: int) -> Service:
        return Service(name=name, listen_address=A(listen), listen_port=port, home="home", target_port=8080)

    return Config(
        vps=Vps(address=A("203.0.113.1")),
        tunnel=Tunnel(subnet=N("198.51.100.0/24")),
        homes={"home": Home("home", A("198.51.100.2")), "attic": Home("attic", A("198.51.100.3"))},
        services={
            "web": svc("web", "203.0.113.1", 80),
            "blog": svc("blog", "203.0.113.10", 80),
            "git": svc("git", "203.0.113.11", 22),
            "blog-tls": svc("blog-tls", "203.0.113.10", 443),
        },
    )


FOREIGN_RULES = [
    Rule(N("0.0.0.0/0"), table=255, priority=0),
    Rule(N("192.0.2.0/24"), table=100, priority=100),
    Rule(N("192.0.2.77/32"), table=200, priority=7701),  # our priority, not our table
    Rule(N("192.0.2.78/32"), table=7701, priority=9000),  # our table, not our priority
    Rule(N("0.0.0.0/0"), table=254, priority=32766),
]
FOREIGN_ROUTES = [
    Route(N("0.0.0.0/0"), "eth0", table=254, gateway=A("203.0.113.254")),
    Route(N("192.0.2.0/24"), "eth0", table=100, gateway=A("203.0.113.254")),
]


def home_fake() -> FakeRoutingBackend:
    return FakeRoutingBackend(
        devices=["lo", "eth0", "vpnoffload0"],
        rules=FOREIGN_RULES,
        routes=FOREIGN_ROUTES,
        addresses=[Address(A("198.51.100.2"), "vpnoffload0", 24)],
    )


def test_home_routing_is_a_source_rule_a_mark_rule_and_one_default_route():
    state = routing.home_routing(make_config(), "attic")
    assert state.rules == (Rule(N("198.51.100.3/32"), 7701, 7701),
                           Rule(N("0.0.0.0/0"), 7701, 7701, fwmark=0x20000000, fwmask=0xE0000000))
    assert state.routes == (Route(N("0.0.0.0/0"), "vpnoffload0", 7701),)
    assert routing.describe(state) == (
        "rule from 198.51.100.3 lookup 7701 priority 7701; "
        "rule from all fwmark 0x20000000/0xe0000000 lookup 7701 priority 7701; route default dev vpnoffload0 table 7701"
    )


def test_home_routing_unknown_home():
    with pytest.raises(ConfigError, match="no home named 'cellar'"):
        routing.home_routing(make_config(), "cellar")


def test_plan_up_from_scratch_then_nothing_to_do():
    fake = home_fake()
    desired = routing.home_routing(make_config(), "home")
    plan = routing.plan_routing(fake, desired)
    assert summaries(plan) == [
        "add route default dev vpnoffload0 table 7701",
        "add rule from 198.51.100.2 lookup 7701 priority 7701",
        "add rule from all fwmark 0x20000000/0xe0000000 lookup 7701 priority 7701",
    ]
    apply(plan)
    assert routing.plan_routing(fake, desired) == []
    assert fake.rule_list == FOREIGN_RULES + [Rule(N("198.51.100.2/32")),
                                              Rule(N("0.0.0.0/0"), fwmark=0x20000000, fwmask=0xE0000000)]


def test_plan_replaces_stale_state_of_ours():
    fake = home_fake()
    fake.rule_list.append(Rule(N("198.51.100.9/32")))
    fake.route_list += [Route(N("0.0.0.0/0"), "eth0"), Route(N("192.0.2.0/24"), None, kind="blackhole")]
    plan = routing.plan_routing(fake, routing.home_routing(make_config(), "home"))
    assert summaries(plan) == [
        "delete rule from 198.51.100.9 lookup 7701 priority 7701",
        "delete route default dev eth0 table 7701",
        "delete route blackhole 192.0.2.0/24 table 7701",
        "add route default dev vpnoffload0 table 7701",
        "add rule from 198.51.100.2 lookup 7701 priority 7701",
        "add rule from all fwmark 0x20000000/0xe0000000 lookup 7701 priority 7701",
    ]


def test_down_removes_only_ours_and_is_then_empty():
    fake = home_fake()
    apply(routing.plan_routing(fake, routing.home_routing(make_config(), "home")))
    fake.route_list.append(Route(N("192.0.2.0/25"), "eth0", gateway=A("203.0.113.254"), metric=5))
    down = routing.plan_routing_down(fake)
    assert summaries(down) == [
        "delete rule from 198.51.100.2 lookup 7701 priority 7701",
        "delete rule from all fwmark 0x20000000/0xe0000000 lookup 7701 priority 7701",
        "delete route default dev vpnoffload0 table 7701",
        "delete route 192.0.2.0/25 via 203.0.113.254 dev eth0 table 7701 metric 5",
    ]
    apply(down)
    assert fake.rule_list == FOREIGN_RULES
    assert fake.route_list == FOREIGN_ROUTES
    assert routing.plan_routing_down(fake) == []


def test_missing_tunnel_device_fails_with_one_readable_line_and_rolls_back():
    fake = home_fake()
    fake.device_list.remove("vpnoffload0")
    # Put the rule first so a rollback has something to undo.
    plan = list(reversed(routing.plan_routing(fake, routing.home_routing(make_config(), "home"))))
    with pytest.raises(ApplyError) as info:
        apply(plan)
    assert "cannot add route default dev vpnoffload0 table 7701: no such device vpnoffload0 (is the tunnel up?)" in str(info.value)
    assert fake.rule_list == FOREIGN_RULES
    assert fake.calls[-2:] == ["delete rule from 198.51.100.2 lookup 7701 priority 7701",
                               "delete rule from all fwmark 0x20000000/0xe0000000 lookup 7701 priority 7701"]


def test_plan_refuses_state_outside_what_we_own():
    with pytest.raises(ValueError, match="is outside what vpnoffload owns"):
        routing.plan_routing(home_fake(), routing.RoutingState(rules=(Rule(N("192.0.2.1/32"), table=5),)))


# ------------------------------------------------------------------ VPS addresses


def vps_fake(*extra: Address) -> FakeRoutingBackend:
    return FakeRoutingBackend(
        devices=["lo", "eth0", "eth1"],
        addresses=[Address(A("127.0.0.1"), "lo", 8), Address(A("203.0.113.1"), "eth0", 24), *extra],
        default_device="eth0",
    )


def test_vps_addresses_are_the_dedicated_ones_as_slash_32():
    assert routing.vps_addresses(make_config(), "eth0") == [
        Address(A("203.0.113.10"), "eth0"),
        Address(A("203.0.113.11"), "eth0"),
    ]


def test_plan_addresses_adds_missing_and_reports_what_it_owns():
    # .11 was configured by the admin (on another interface): not ours, not added.
    fake = vps_fake(Address(A("203.0.113.11"), "eth1", 24))
    desired = routing.vps_addresses(make_config(), "eth0")
    actions, owned = routing.plan_addresses(fake, desired)
    assert summaries(actions) == ["add address 203.0.113.10/32 dev eth0"]
    assert owned == [Address(A("203.0.113.10"), "eth0")]
    apply(actions)
    record = [a.as_record() for a in owned]
    assert record == [["eth0", "203.0.113.10/32"]]

    # Second up: nothing to do, and we still own what we added.
    actions, owned_again = routing.plan_addresses(fake, desired, record)
    assert actions == []
    assert owned_again == owned

    # Down removes only the recorded address.
    down = routing.plan_remove_addresses(fake, record)
    assert summaries(down) == ["remove address 203.0.113.10/32 dev eth0"]
    apply(down)
    assert Address(A("203.0.113.11"), "eth1", 24) in fake.address_list
    assert A("203.0.113.10") not in {a.address for a in fake.address_list}
    assert routing.plan_remove_addresses(fake, record) == []


def test_plan_addresses_drops_owned_addresses_no_longer_wanted():
    fake = vps_fake(Address(A("203.0.113.10"), "eth0"), Address(A("203.0.113.99"), "eth0"))
    owned = [["eth0", "203.0.113.10/32"], ["eth0", "203.0.113.99/32"], ["eth0", "203.0.113.98/32"]]
    actions, owned_after = routing.plan_addresses(fake, routing.vps_addresses(make_config(), "eth0"), owned)
    assert summaries(actions) == [
        "remove address 203.0.113.99/32 dev eth0",
        "add address 203.0.113.11/32 dev eth0",
    ]
    assert [a.as_record() for a in owned_after] == [["eth0", "203.0.113.10/32"], ["eth0", "203.0.113.11/32"]]


def test_bad_address_record_is_a_clear_error():
    with pytest.raises(ConfigError, match="bad address entry"):
        routing.plan_remove_addresses(vps_fake(), [["eth0", "not-an-address"]])


def test_find_interface_prefers_the_holder_then_the_route():
    fake = vps_fake(Address(A("203.0.113.20"), "eth1"))
    assert fake.find_interface(A("203.0.113.20")) == "eth1"
    assert routing.find_interface(A("203.0.113.1"), fake) == "eth0"
    assert fake.find_interface(A("192.0.2.80")) == "eth0"  # 1:1 NAT: reached by the default route
    fake.default_device = None
    with pytest.raises(BackendError, match=r"vps.interface: no interface holds or routes to 192.0.2.80"):
        fake.find_interface(A("192.0.2.80"))


# ------------------------------------------------------------------ waiting


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1


def test_wait_returns_at_once_when_the_address_is_there():
    clock = Clock()
    routing.wait_for_address(home_fake(), "vpnoffload0", A("198.51.100.2"), clock=clock, sleep=clock.sleep)
    assert clock.sleeps == 0


def test_wait_polls_until_the_device_comes_up():
    fake = FakeRoutingBackend()
    clock = Clock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.sleeps == 3:
            fake.device_list.append("vpnoffload0")
            fake.address_list.append(Address(A("198.51.100.2"), "vpnoffload0", 24))

    routing.wait_for_address(fake, "vpnoffload0", A("198.51.100.2"), clock=clock, sleep=sleep)
    assert clock.sleeps == 3


def test_wait_times_out_with_a_reason():
    clock = Clock()
    with pytest.raises(BackendError, match=r"vpnoffload0 did not appear within 1 s \(is OpenVPN connected\?\)"):
        routing.wait_for_address(FakeRoutingBackend(), "vpnoffload0", A("198.51.100.2"), 1, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == 5
    with pytest.raises(BackendError, match="vpnoffload0 exists but did not get 198.51.100.3 within 1 s"):
        routing.wait_for_address(home_fake(), "vpnoffload0", A("198.51.100.3"), 1, clock=clock, sleep=clock.sleep)


# ------------------------------------------------------------------ import cost


def test_importing_routing_does_not_import_pyroute2():
    code = "import sys, vpnoffload.routing, vpnoffload.sysctl; print('pyroute2' in sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30, env=env)
    assert out.stdout.strip() == "False"
