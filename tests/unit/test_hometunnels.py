"""Issue 25: one home box behind several VPSes. Each VPS config's tunnel slot (device,
table, priority, mark, chains), the clash checks, and up/down of two tunnels on fakes."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from tests.fakes import FakeBackend, FakeRoutingBackend, FakeTunnel, FakeUsers
from tests.helpers import home_box_config as config_text
from tests.helpers import write_home_box_config as write
from vpnoffload import config as cfg
from vpnoffload import deploy, firewall, hometunnels, plan, record
from vpnoffload.errors import ConfigError, ExitStatus
from vpnoffload.exits import error_line
from vpnoffload.hometunnels import Slot
from vpnoffload.model import HOME_MARK, ROUTE_TABLE, RULE_PRIORITY, TUNNEL_DEVICE
from vpnoffload.paths import Paths
from vpnoffload.routing import Address


# ------------------------------------------------------------------ slots


def test_the_first_tunnel_keeps_what_a_home_box_always_had() -> None:
    first = Slot(0)
    assert (first.device, first.table, first.priority, first.mark) == (TUNNEL_DEVICE, ROUTE_TABLE, RULE_PRIORITY, HOME_MARK)
    assert first.chain_prefix == "VPNOFFLOAD-" and first.tunnel_name("home") == "home-home"


def test_every_slot_has_its_own_device_table_priority_mark_and_chains() -> None:
    slots = [Slot(i) for i in range(hometunnels.MAX_SLOTS)]
    for attr in ("device", "table", "priority", "mark", "chain_prefix"):
        assert len({getattr(s, attr) for s in slots}) == len(slots), attr
    assert Slot(2).device == "vpnoffload2" and Slot(2).table == 7703 and Slot(2).chain_prefix == "VPNOFFLOAD-T2-"
    for s in slots:  # one mark field, one value each: no tunnel's mark matches another's
        assert s.mark & s.mask == s.mark and s.mask == 0xE0000000
        assert [o.index for o in slots if o.mark & s.mask == s.mark] == [s.index]
        # clear of the VPS's service marks and the health mark
        assert s.mark & (firewall.MARK_MASK | 0x10000000) == 0
    with pytest.raises(ValueError):
        Slot(hometunnels.MAX_SLOTS)


def test_a_slot_owns_only_its_chains() -> None:
    assert Slot(0).owns_chain("VPNOFFLOAD-IN") and Slot(0).owns_chain("VPNOFFLOAD-DNAT")
    assert not Slot(0).owns_chain("VPNOFFLOAD-T1-IN") and not Slot(0).owns_chain("DOCKER")
    assert Slot(1).owns_chain("VPNOFFLOAD-T1-MARK") and not Slot(1).owns_chain("VPNOFFLOAD-T12-IN")
    assert not Slot(1).owns_chain("VPNOFFLOAD-IN")


def test_slot_from_the_config_place_and_tunnel_subnet(tmp_path: Path) -> None:
    first = write(tmp_path / "vpnoffload.toml", config_text("203.0.113.10", "198.51.100.0/24"))
    second = write(tmp_path / "vps2" / "vpnoffload.toml", config_text("203.0.113.20", "10.89.0.0/24"))
    third = write(tmp_path / "vps3" / "vpnoffload.toml", config_text("203.0.113.30", "10.90.0.0/24"))
    assert hometunnels.slot_of(first, cfg.load(first)) == Slot(0)
    assert hometunnels.slot_of(second, cfg.load(second)) == Slot(1)  # the docs' second VPS
    assert hometunnels.slot_of(third, cfg.load(third)) == Slot(2)  # consecutive subnets, consecutive slots
    assert [hometunnels.further_slot(IPv4Network(f"10.{n}.0.0/24")).index for n in range(89, 95)] == [1, 2, 3, 4, 5, 6]
    assert hometunnels.further_slot(IPv4Network("10.89.1.0/24")) == Slot(2)
    assert hometunnels.box_configs(second) == [first, second, third]
    assert hometunnels.box_configs(first) == [first, second, third]
    # A config alone in its directory is the first, wherever it is.
    alone = write(tmp_path / "elsewhere" / "x" / "vpnoffload.toml", config_text("203.0.113.10", "10.89.0.0/24"))
    assert hometunnels.slot_of(alone, cfg.load(alone)) == Slot(0)


# ------------------------------------------------------------------ clashes


@pytest.mark.parametrize(("second", "says"), [
    (config_text("203.0.113.20", "198.51.100.0/24"), "have overlapping tunnel subnets (198.51.100.0/24, 198.51.100.0/24)"),
    (config_text("203.0.113.20", "198.51.100.128/25"), "have overlapping tunnel subnets"),
    (config_text("203.0.113.20", "10.95.0.0/24"), "would both use tunnel 1"),  # 10.89 and 10.95: same slot
    (config_text("203.0.113.10", "10.89.0.0/24"), "both dial the same VPS (203.0.113.10 port 1194/udp)"),
])
def test_clashes_are_refused_naming_both_configs_and_the_fix(tmp_path: Path, second: str, says: str) -> None:
    first = write(tmp_path / "vpnoffload.toml", config_text("203.0.113.10", "198.51.100.0/24"))
    write(tmp_path / "vps2" / "vpnoffload.toml", config_text("203.0.113.30", "10.89.0.0/24"))
    other = write(tmp_path / "vps3" / "vpnoffload.toml", second)
    with pytest.raises(ConfigError) as caught:
        hometunnels.check_box(other, cfg.load(other))
    message = str(caught.value)
    assert caught.value.exit_status == ExitStatus.BAD_INPUT and "\n" not in message
    assert says in message and str(other) in message
    assert str(first) in message or str(tmp_path / "vps2" / "vpnoffload.toml") in message
    if "same VPS" in says:
        assert "keep one of the two configs" in message
    else:  # the fix names a subnet that clashes with nothing here
        fix = IPv4Network(message.split("--tunnel-subnet ")[1].split()[0])
        assert fix == IPv4Network("10.90.0.0/24")
    # The one line a user reads (cut at exits.MAX_LINE) still holds the whole fix, with the
    # configs where the docs put them.
    shown = error_line(message.replace(str(tmp_path), "/etc/vpnoffload"))
    assert not shown.endswith("...") and shown.endswith(("here again", "on this home box"))


def test_same_target_port_and_same_openvpn_port_simply_work(tmp_path: Path) -> None:
    write(tmp_path / "vpnoffload.toml", config_text("203.0.113.10", "198.51.100.0/24"))
    second = write(tmp_path / "vps2" / "vpnoffload.toml", config_text("203.0.113.20", "10.89.0.0/24"))
    assert hometunnels.check_box(second, cfg.load(second)) == Slot(1)


def test_a_broken_neighbour_config_does_not_block_this_one(tmp_path: Path) -> None:
    write(tmp_path / "vpnoffload.toml", "[vps\n")
    second = write(tmp_path / "vps2" / "vpnoffload.toml", config_text("203.0.113.20", "10.89.0.0/24"))
    assert hometunnels.check_box(second, cfg.load(second)) == Slot(1)


# ------------------------------------------------------------------ up and down of two tunnels
@pytest.fixture
def box(tmp_path: Path):
    first = write(tmp_path / "vpnoffload.toml", config_text("203.0.113.10", "198.51.100.0/24"))
    second = write(tmp_path / "vps2" / "vpnoffload.toml", config_text("203.0.113.20", "10.89.0.0/24"))
    proc = tmp_path / "proc"
    for dev in ("vpnoffload0", "vpnoffload1"):
        (proc / f"net/ipv4/conf/{dev}").mkdir(parents=True)
        (proc / f"net/ipv4/conf/{dev}/rp_filter").write_text("1\n")
    tunnels: dict[tuple[str, Path], FakeTunnel] = {}

    def factory(**kw) -> FakeTunnel:
        return tunnels.setdefault((kw["name"], kw["run_dir"]), FakeTunnel(**kw))

    routing = FakeRoutingBackend(devices=("lo", "eth0", "vpnoffload0", "vpnoffload1"), addresses=[
        Address(IPv4Address("198.51.100.2"), "vpnoffload0", 24), Address(IPv4Address("10.89.0.2"), "vpnoffload1", 24)])
    backends = deploy.Backends(firewall=FakeBackend(), routing=routing, proc_root=proc, users=FakeUsers(),
                               tunnel_factory=factory)
    sites = [Paths(first, first.parent / "state"), Paths(second, second.parent / "state")]
    return sites, backends, tunnels, proc


def up(paths: Paths, b: deploy.Backends) -> list[str]:
    actions = deploy.plan_up_home(cfg.load(paths.config), paths, b, "home", paths.profile("home"))
    plan.apply(actions)
    return plan.summaries(actions)


def down(paths: Paths, b: deploy.Backends) -> None:
    plan.apply(deploy.plan_down_home(paths, b, "home", paths.profile("home")))


def test_two_tunnels_up_and_down_each_leaving_the_other_be(box) -> None:
    (one, two), b, tunnels, proc = box
    fw_before, rules_before = b.firewall.dump(), list(b.routing.rule_list)
    up(one, b)
    after_one = (b.firewall.dump(), list(b.routing.rule_list), list(b.routing.route_list))
    steps = "\n".join(up(two, b))
    # The second plan names only its own device, table, mark and chains.
    assert "vpnoffload1" in steps and "lookup 7702 priority 7702" in steps and "VPNOFFLOAD-T1-IN" in steps
    assert "fwmark 0x40000000/0xe0000000" in steps and "--set-xmark 0x40000000/0xe0000000" in steps
    assert "7701" not in steps and "VPNOFFLOAD-IN" not in steps and "vpnoffload0" not in steps
    assert (proc / "net/ipv4/conf/vpnoffload1/rp_filter").read_text().strip() == "2"
    assert tunnels[("home-home-t1", two.run)].up and tunnels[("home-home", one.run)].up
    assert record.load(two.record("home-home")).slot == 1 and record.load(one.record("home-home")).slot == 0
    # A second up of either finds nothing to do.
    for paths in (one, two):
        assert deploy.plan_up_home(cfg.load(paths.config), paths, b, "home", paths.profile("home")) == []

    down(two, b)
    assert (b.firewall.dump(), list(b.routing.rule_list), list(b.routing.route_list)) == after_one
    assert tunnels[("home-home", one.run)].up and not tunnels[("home-home-t1", two.run)].up
    assert (proc / "net/ipv4/conf/vpnoffload1/rp_filter").read_text().strip() == "1"
    down(one, b)
    assert b.firewall.dump() == fw_before and b.routing.rule_list == rules_before and not b.routing.route_list
    assert not b.users.names and not one.record("home-home").exists() and not two.record("home-home").exists()


def test_the_shared_system_user_outlives_the_first_down_while_another_tunnel_is_up(box) -> None:
    (one, two), b, tunnels, proc = box
    up(one, b)  # creates the user
    up(two, b)  # finds it
    assert b.users.names == {"vpnoffload"} and record.load(one.record("home-home")).created_user == "vpnoffload"
    down(one, b)
    assert b.users.names == {"vpnoffload"}  # the second tunnel's OpenVPN still runs as it
    assert record.load(two.record("home-home")).created_user == "vpnoffload"
    down(two, b)
    assert not b.users.names


def test_a_clash_changes_nothing(box, tmp_path: Path) -> None:
    (one, two), b, tunnels, proc = box
    clashing = write(tmp_path / "vps3" / "vpnoffload.toml", config_text("203.0.113.30", "10.89.0.0/24"))
    paths = Paths(clashing, clashing.parent / "state")
    before = b.firewall.dump()
    with pytest.raises(ConfigError, match="overlapping tunnel subnets"):
        deploy.plan_up_home(cfg.load(clashing), paths, b, "home", paths.profile("home"))
    assert b.firewall.dump() == before and not b.routing.calls and not tunnels


def test_down_uses_the_recorded_slot_even_when_the_config_broke(box) -> None:
    (one, two), b, tunnels, proc = box
    up(one, b)
    up(two, b)
    two.config.write_text("[vps\n")
    down(two, b)
    assert all(r.table == 7701 for r in b.routing.rule_list) and b.routing.rule_list
    assert "T1" not in str(b.firewall.dump())


def test_each_tunnel_has_its_own_systemd_units(tmp_path: Path) -> None:
    from vpnoffload import tunnel
    from vpnoffload.deploy import units

    first = write(tmp_path / "vpnoffload.toml", config_text("203.0.113.10", "198.51.100.0/24"))
    second = write(tmp_path / "vps2" / "vpnoffload.toml", config_text("203.0.113.20", "10.89.0.0/24"))
    one = units.units(Paths(first, first.parent / "state"), "home", "home")
    two = units.units(Paths(second, second.parent / "state"), "home", "home")
    assert list(one) == ["vpnoffload-home.service", "vpnoffload-home-keeper.service"]
    assert list(two) == ["vpnoffload-home-t1.service", "vpnoffload-home-keeper-t1.service"]
    assert "openvpn-client@vpnoffload-home.service" in one["vpnoffload-home.service"]
    assert "openvpn-client@vpnoffload-home-t1.service" in two["vpnoffload-home-t1.service"]
    assert str(second) in two["vpnoffload-home-t1.service"]
    # Under systemd the client's wrapper config gives the tunnel its own device after the profile.
    wrapper = tunnel.wrapper_text(second.parent / "state", "home.ovpn", ("user vpnoffload", "dev vpnoffload1"))
    assert wrapper.index("config home.ovpn") < wrapper.index("dev vpnoffload1")


def test_a_further_tunnels_client_gets_its_own_device(tmp_path: Path, monkeypatch) -> None:
    from vpnoffload import tunnel
    from vpnoffload.deploy.home import home_tunnel

    monkeypatch.setattr(tunnel, "systemd_manages_this_netns", lambda: False)
    b = deploy.Backends(firewall=FakeBackend(), routing=FakeRoutingBackend())
    paths = Paths(tmp_path / "vpnoffload.toml", tmp_path / "state")
    further = home_tunnel(paths, b, "home", tmp_path / "home.ovpn", Slot(1))
    assert further.name == "home-home-t1" and further.extra_args[-2:] == ("--dev", "vpnoffload1")
    first = home_tunnel(paths, b, "home", tmp_path / "home.ovpn")
    assert first.name == "home-home" and "--dev" not in first.extra_args  # the profile's own dev vpnoffload0
