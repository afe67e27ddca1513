"""IPv6 dedicated addresses (issue 7, part 1), without root: config validation,
ip6tables rules as data and their plans, routing and sysctl plans, the rendered
OpenVPN files, the lab's plan and doctor's hint."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.fakes import FakeBackend, FakePki, FakeRoutingBackend
from tests.helpers import golden
from vpnoffload import config as cfg
from vpnoffload import deploy, plan, sysctl
from vpnoffload import firewall as fw
from vpnoffload import routing as rt
from vpnoffload.deploy import doctor
from vpnoffload.errors import ApplyError, ConfigError
from vpnoffload.firewall import iptc as iptc_backend
from vpnoffload.firewall import xtables
from vpnoffload.lab.netns import Lab
from vpnoffload.paths import Paths
from vpnoffload.pki import Pki
from vpnoffload.render.openvpn import ccd_entry, server_config

BASE = """
[vps]
address = "203.0.113.10"
[tunnel]
subnet = "198.51.100.0/24"
subnet6 = "fd00:88::/64"
[homes.home]
address = "198.51.100.2"
[homes.attic]
address = "198.51.100.3"
address6 = "fd00:88::33"
"""

SERVICES = """
[services.blog]
listen = "[2001:db8:1::80]:80"
homes = ["home", "attic"]
target = "8080"
[services.dns6]
listen = "[2001:db8:1::53]:53"
target = "home:5353"
proto = "udp"
[services.web]
listen = "80"
target = "8081"
"""


def parse(text: str = BASE + SERVICES):
    return cfg.parse_text(text)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        cfg.parse_text(text)
    return info.value


# --------------------------------------------------------------------------- config


def test_ipv6_listen_and_home_addresses() -> None:
    config = parse()
    blog = config.services["blog"]
    assert blog.listen_address == IPv6Address("2001:db8:1::80") and blog.listen_port == 80
    assert blog.ipv6 and blog.listen == "[2001:db8:1::80]:80"
    assert not config.services["web"].ipv6
    assert config.tunnel.subnet6 == IPv6Network("fd00:88::/64")
    assert config.tunnel.server_address6 == IPv6Address("fd00:88::1")
    # address6 defaults to the IPv4 address's host number in subnet6; an explicit one wins.
    assert config.homes["home"].address6 == IPv6Address("fd00:88::2")
    assert config.homes["attic"].address6 == IPv6Address("fd00:88::33")
    assert config.dedicated_addresses() == [IPv6Address("2001:db8:1::80"), IPv6Address("2001:db8:1::53")]
    assert [s.name for s in config.ipv6_services] == ["blog", "dns6"]


def test_without_subnet6_homes_have_no_ipv6_address() -> None:
    config = parse(BASE.replace('subnet6 = "fd00:88::/64"\n', "").replace('address6 = "fd00:88::33"\n', ""))
    assert config.tunnel.subnet6 is None and config.tunnel.server_address6 is None
    assert config.homes["home"].address6 is None


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("[fe80::1]:80", "not a global unicast IPv6 address"),
        ("[fd12::80]:80", "not a global unicast IPv6 address"),
        ("[::1]:80", "not a global unicast IPv6 address"),
        ("[ff02::1]:80", "not a global unicast IPv6 address"),
        ("[::ffff:203.0.113.9]:80", "not a global unicast IPv6 address"),
        ("[fe80::1%eth0]:80", "zone"),
        ("[2001:db8:1::80]", "not \\[IPV6-ADDRESS\\]:PORT"),
        ("[2001:db8:1::80]:0", "not a port number"),
        ("[203.0.113.9]:80", "not an IPv6 address"),
        ("2001:db8:1::80:80", "put an IPv6 address in brackets"),
    ],
)
def test_bad_ipv6_listen_is_refused(listen: str, message: str) -> None:
    exc = error(BASE + f'[services.blog]\nlisten = "{listen}"\ntarget = "8080"\n')
    assert exc.field == "services.blog.listen"
    assert re.search(message, str(exc)), str(exc)


def test_ipv6_service_needs_subnet6_and_names_the_field() -> None:
    text = BASE.replace('subnet6 = "fd00:88::/64"\n', "").replace('address6 = "fd00:88::33"\n', "")
    exc = error(text + '[services.blog]\nlisten = "[2001:db8:1::80]:80"\ntarget = "8080"\n')
    assert exc.field == "services.blog.listen" and "[tunnel] subnet6" in str(exc)


def test_listen_inside_subnet6_is_refused() -> None:
    text = BASE.replace("fd00:88::/64", "2001:db8:ff::/64").replace("fd00:88::33", "2001:db8:ff::33")
    exc = error(text + '[services.blog]\nlisten = "[2001:db8:ff::80]:80"\ntarget = "8080"\n')
    assert exc.field == "services.blog.listen" and "inside the tunnel subnet6" in str(exc)


@pytest.mark.parametrize(
    ("subnet6", "message"),
    [
        ("fd00:88::/48", "between /64 and /112"),
        ("fd00:88::/120", "between /64 and /112"),
        ("fd00:88::1/64", "did you mean fd00:88::/64"),
        ("198.51.101.0/24", "not an IPv6 subnet"),
        ("fe80::/64", "cannot be a tunnel subnet"),
        ("nonsense", "not an IPv6 subnet"),
    ],
)
def test_bad_subnet6(subnet6: str, message: str) -> None:
    exc = error(BASE.replace("fd00:88::/64", subnet6).replace('address6 = "fd00:88::33"\n', ""))
    assert exc.field == "tunnel.subnet6" and message in str(exc), str(exc)


@pytest.mark.parametrize(
    ("address6", "message"),
    [
        ("fd00:99::3", "not a host address in the tunnel subnet6"),
        ("fd00:88::", "not a host address in the tunnel subnet6"),
        ("fd00:88::1", "the VPS's own IPv6 tunnel address"),
        ("fd00:88::2", "already used by home 'home'"),
        ("198.51.100.3", "not an IPv6 address"),
    ],
)
def test_bad_address6(address6: str, message: str) -> None:
    exc = error(BASE.replace('address6 = "fd00:88::33"', f'address6 = "{address6}"'))
    assert exc.field == "homes.attic.address6" and message in str(exc), str(exc)


def test_address6_without_subnet6_is_refused() -> None:
    exc = error(BASE.replace('subnet6 = "fd00:88::/64"\n', ""))
    assert exc.field == "homes.attic.address6" and "needs [tunnel] subnet6" in str(exc)


def test_init_text_with_subnet6() -> None:
    text = cfg.initial_text("203.0.113.10", "198.51.100.0/24", 1194, "udp", "home", subnet6="fd00:88::/64")
    config = cfg.parse_text(text)
    assert config.tunnel.subnet6 == IPv6Network("fd00:88::/64")
    assert config.homes["home"].address6 == IPv6Address("fd00:88::2")
    with pytest.raises(ConfigError, match="--tunnel-subnet6"):
        cfg.initial_text("203.0.113.10", "198.51.100.0/24", 1194, "udp", "home", subnet6="fd00:88::/40")


# --------------------------------------------------------------------------- firewall

FILTER6 = [
    "*filter6",
    ":VPNOFFLOAD-FWD",
    ":VPNOFFLOAD-IN",
    "-A FORWARD -j VPNOFFLOAD-FWD",
    "-A INPUT -j VPNOFFLOAD-IN",
    "-A VPNOFFLOAD-FWD -m conntrack --ctstate RELATED,ESTABLISHED -m connmark ! --mark 0x0/0xff00000 -j ACCEPT",
    "-A VPNOFFLOAD-FWD -d fd00:88::2/128 -o vpnoffload0 -p tcp -m tcp --dport 8080"
    " -m conntrack --ctstate DNAT -m connmark --mark 0x100000/0xff00000 -j ACCEPT",
    "-A VPNOFFLOAD-FWD -d fd00:88::33/128 -o vpnoffload0 -p tcp -m tcp --dport 8080"
    " -m conntrack --ctstate DNAT -m connmark --mark 0x100000/0xff00000 -j ACCEPT",
    "-A VPNOFFLOAD-FWD -d fd00:88::2/128 -o vpnoffload0 -p udp -m udp --dport 5353"
    " -m conntrack --ctstate DNAT -m connmark --mark 0x200000/0xff00000 -j ACCEPT",
    "-A VPNOFFLOAD-FWD -o vpnoffload0 -j DROP",
    "-A VPNOFFLOAD-FWD -i vpnoffload0 -j DROP",
    "-A VPNOFFLOAD-FWD -j RETURN",
    "-A VPNOFFLOAD-IN -p tcp -m tcp --dport 503 -m conntrack --ctstate DNAT -j ACCEPT",
    "-A VPNOFFLOAD-IN -p tcp -m tcp --dport 504 -m conntrack --ctstate DNAT -j ACCEPT",
    "-A VPNOFFLOAD-IN -p tcp -m tcp --dport 503 -j DROP",
    "-A VPNOFFLOAD-IN -p tcp -m tcp --dport 504 -j DROP",
    "-A VPNOFFLOAD-IN -i vpnoffload0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A VPNOFFLOAD-IN -i vpnoffload0 -j DROP",
    "-A VPNOFFLOAD-IN -j RETURN",
]
NAT6 = [
    "*nat6",
    ":VPNOFFLOAD-DNAT",
    "-A PREROUTING ! -i vpnoffload0 -j VPNOFFLOAD-DNAT",
    "-A VPNOFFLOAD-DNAT -d 2001:db8:1::80/128 -p tcp -m tcp --dport 80 -j CONNMARK --set-xmark 0x100000/0xff00000",
    "-A VPNOFFLOAD-DNAT -d 2001:db8:1::80/128 -p tcp -m tcp --dport 80 -j DNAT --to-destination [fd00:88::2]:8080",
    "-A VPNOFFLOAD-DNAT -d 2001:db8:1::53/128 -p udp -m udp --dport 53 -j CONNMARK --set-xmark 0x200000/0xff00000",
    "-A VPNOFFLOAD-DNAT -d 2001:db8:1::53/128 -p udp -m udp --dport 53 -j DNAT --to-destination [fd00:88::2]:5353",
]


def v6_part(ruleset: fw.Ruleset) -> list[str]:
    lines = ruleset.lines()
    return lines[lines.index("*filter6"):lines.index("*mangle")] + lines[lines.index("*nat6"):]


def test_vps_ipv6_rules_are_exactly_these() -> None:
    assert v6_part(fw.vps_ruleset(parse())) == FILTER6 + NAT6


def test_ipv4_part_only_has_the_ipv4_service() -> None:
    ruleset = fw.vps_ruleset(parse())
    nat = ruleset.table("nat").lines()
    assert nat[2:] == [
        "-A PREROUTING ! -i vpnoffload0 -j VPNOFFLOAD-DNAT",
        "-A VPNOFFLOAD-DNAT -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j CONNMARK --set-xmark 0x300000/0xff00000",
        "-A VPNOFFLOAD-DNAT -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.51.100.2:8081",
    ]
    assert not any("2001:db8" in line or "fd00" in line for line in ruleset.table("filter").lines())


def test_no_subnet6_no_ip6tables_at_all() -> None:
    text = BASE.replace('subnet6 = "fd00:88::/64"\n', "").replace('address6 = "fd00:88::33"\n', "")
    config = parse(text + '[services.web]\nlisten = "80"\ntarget = "8081"\n')
    assert fw.vps_ruleset(config).tables() == {"filter", "mangle", "nat"}
    assert fw.home_ruleset(config, "home").tables() == {"filter", "mangle"}


def test_subnet6_without_ipv6_services_still_guards_the_tunnel() -> None:
    config = parse(BASE + '[services.web]\nlisten = "80"\ntarget = "8081"\n')
    ruleset = fw.vps_ruleset(config)
    assert ruleset.table("nat6").lines() == ["*nat6", ":VPNOFFLOAD-DNAT", "-A PREROUTING ! -i vpnoffload0 -j VPNOFFLOAD-DNAT"]
    assert "-A VPNOFFLOAD-FWD -i vpnoffload0 -j DROP" in ruleset.table("filter6").lines()


def test_ipv6_fallback_page_goes_to_the_listen_address_udp_is_refused() -> None:
    lines = fw.vps_ruleset(parse(), fallback=frozenset({"blog", "dns6"})).lines()
    assert ("-A VPNOFFLOAD-DNAT -d 2001:db8:1::80/128 -p tcp -m tcp --dport 80 -j DNAT"
            " --to-destination [2001:db8:1::80]:503") in lines
    assert FILTER6[8] not in lines
    assert FILTER6[8].replace("-j ACCEPT", "-j REJECT --reject-with icmp6-port-unreachable") in lines


def test_ipv6_backup_home_gets_new_connections() -> None:
    lines = fw.vps_ruleset(parse(), active={"blog": "attic"}).lines()
    assert ("-A VPNOFFLOAD-DNAT -d 2001:db8:1::80/128 -p tcp -m tcp --dport 80 -j DNAT"
            " --to-destination [fd00:88::33]:8080") in lines


def test_home_ipv6_rules() -> None:
    ruleset = fw.home_ruleset(parse(), "home")
    assert ruleset.table("filter6").lines() == [
        "*filter6",
        ":VPNOFFLOAD-FWD",
        ":VPNOFFLOAD-IN",
        "-A FORWARD -i vpnoffload0 -j VPNOFFLOAD-FWD",
        "-A INPUT -i vpnoffload0 -j VPNOFFLOAD-IN",
        "-A VPNOFFLOAD-FWD -p tcp -m conntrack --ctstate DNAT --ctorigdst fd00:88::2 --ctorigdstport 8080 -j ACCEPT",
        "-A VPNOFFLOAD-FWD -p udp -m conntrack --ctstate DNAT --ctorigdst fd00:88::2 --ctorigdstport 5353 -j ACCEPT",
        "-A VPNOFFLOAD-FWD -j DROP",
        "-A VPNOFFLOAD-IN -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A VPNOFFLOAD-IN -d fd00:88::2/128 -p tcp -m tcp --dport 8080 -j ACCEPT",
        "-A VPNOFFLOAD-IN -d fd00:88::2/128 -p udp -m udp --dport 5353 -j ACCEPT",
        "-A VPNOFFLOAD-IN -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT",
        "-A VPNOFFLOAD-IN -j DROP",
    ]
    assert "-A PREROUTING -j VPNOFFLOAD-MARK" in ruleset.table("mangle6").lines()
    # The watchdog checks every service over IPv4, so IPv4 opens the IPv6 services' ports too.
    ipv4 = ruleset.table("filter").lines()
    assert "-A VPNOFFLOAD-IN -d 198.51.100.2/32 -p tcp -m tcp --dport 8080 -j ACCEPT" in ipv4
    assert "-A VPNOFFLOAD-IN -d 198.51.100.2/32 -p tcp -m tcp --dport 8081 -j ACCEPT" in ipv4


def test_plan_writes_both_families_in_order_then_nothing_then_down() -> None:
    backend = FakeBackend()
    desired = fw.vps_ruleset(parse())
    actions = fw.plan(backend, desired)
    commits = [a.summary for a in actions if "commit" in a.summary]
    assert [c.split(":")[0] for c in commits] == ["iptables filter", "iptables nat", "iptables mangle",
                                                  "ip6tables filter", "ip6tables nat"]
    assert any(a.summary.startswith("ip6tables nat VPNOFFLOAD-DNAT: -d 2001:db8:1::80/128") for a in actions)
    plan.apply(actions)
    assert backend.read() == desired
    assert backend.writes == ["filter", "nat", "mangle", "filter6", "nat6"]
    assert fw.plan(backend, desired) == []
    plan.apply(fw.plan(backend, fw.empty_ruleset()))
    assert backend.writes[5:] == ["nat6", "filter6", "mangle", "nat", "filter"]  # DNAT out before its guard
    assert backend.read().is_empty()


def test_failed_ip6tables_commit_rolls_back_ipv4_too() -> None:
    backend = FakeBackend(fail_tables={"nat6"})
    before = backend.dump()
    with pytest.raises(ApplyError, match="ip6tables nat: cannot commit"):
        plan.apply(fw.plan(backend, fw.vps_ruleset(parse())))
    assert backend.dump() == before


def test_table_labels() -> None:
    assert fw.table_label("nat") == "iptables nat" and fw.table_label("filter6") == "ip6tables filter"
    assert str(fw.Rule("nat6", "PREROUTING", ("-j", "X"))) == "ip6tables nat PREROUTING: -j X"


# --------------------------------------------------------------------------- iptc backend (pure parts)


def test_registered_v6_tables(tmp_path: Path) -> None:
    names = tmp_path / "ip6_tables_names"
    names.write_text("nat\nfilter\n")
    assert xtables.registered_v6_tables(names) == {"nat6", "filter6"}
    assert xtables.registered_v6_tables(tmp_path / "missing") == set()


def test_ipv6_entry_read_back_like_ip6tables_save() -> None:
    entry = SimpleNamespace(src="::/0", dst="2001:db8:1::80/128", in_interface=None, out_interface="vpnoffload0",
                            protocol="icmpv6")
    assert iptc_backend._entry_args(entry, v6=True) == ["-d", "2001:db8:1::80/128", "-o", "vpnoffload0", "-p", "ipv6-icmp"]
    assert iptc_backend._address("!2001:db8::80/128") == (True, "2001:db8::80/128")


# --------------------------------------------------------------------------- routing


def test_home_routing_has_an_ipv6_rule_and_route() -> None:
    state = rt.home_routing(parse(), "home")
    mark = {"fwmark": 0x20000000, "fwmask": 0xE0000000}
    assert state.rules == (rt.Rule(IPv4Network("198.51.100.2/32")), rt.Rule(rt.ANY, **mark),
                           rt.Rule(IPv6Network("fd00:88::2/128")), rt.Rule(rt.ANY6, **mark))
    assert state.routes == (rt.Route(rt.ANY, "vpnoffload0"), rt.Route(rt.ANY6, "vpnoffload0"))
    assert "rule from fd00:88::2 lookup 7701 priority 7701" in str(state)
    assert "route default (IPv6) dev vpnoffload0 table 7701" in str(state)


def test_home_routing_plan_is_idempotent_and_down_removes_both() -> None:
    backend = FakeRoutingBackend(devices=("lo", "vpnoffload0"))
    desired = rt.home_routing(parse(), "home")
    plan.apply(rt.plan_routing(backend, desired))
    assert rt.plan_routing(backend, desired) == []
    plan.apply(rt.plan_routing_down(backend))
    assert backend.rules() == [] and backend.routes(7701) == []


def test_vps_ipv6_addresses_are_slash_128_and_recorded() -> None:
    wanted = rt.vps_addresses(parse(), "eth0")
    assert [str(a) for a in wanted] == ["2001:db8:1::80/128 dev eth0", "2001:db8:1::53/128 dev eth0"]
    backend = FakeRoutingBackend(devices=("lo", "eth0"), addresses=[rt.Address(IPv6Address("2001:db8:1::53"), "eth0", 64)])
    actions, owned = rt.plan_addresses(backend, wanted)
    assert [a.summary for a in actions] == ["add address 2001:db8:1::80/128 dev eth0"]  # ::53 is already there
    assert [a.as_record() for a in owned] == [["eth0", "2001:db8:1::80/128"]]
    assert rt.Address.from_record(["eth0", "2001:db8:1::80/128"]) == owned[0]


def test_ipv6_route_read_back_without_the_default_metric() -> None:
    names = {3: "vpnoffload0"}
    msg = {"dst_len": 0, "oif": 3, "table": 7701, "priority": 1024, "type": 1}
    assert rt._route_from(msg, names, "::") == rt.Route(rt.ANY6, "vpnoffload0")
    assert rt._route_from(msg, names, "0.0.0.0").metric == 1024  # IPv4 has no such default


# --------------------------------------------------------------------------- sysctl


def proc_tree(tmp_path: Path, accept_ra: str) -> Path:
    proc = tmp_path / "proc"
    for key, value in (("net.ipv4.ip_forward", "0"), ("net.ipv6.conf.all.forwarding", "0"),
                       ("net.ipv6.conf.eth0/1.accept_ra", accept_ra)):
        path = sysctl.key_path(key, proc)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return proc


def test_ipv6_forwarding_keeps_router_advertisements(tmp_path: Path) -> None:
    proc = proc_tree(tmp_path, "1")
    desired = sysctl.vps_sysctls() | sysctl.vps_ipv6_sysctls("eth0.1", proc)
    actions, previous = sysctl.plan_sysctls(desired, proc)
    # accept_ra = 2 before forwarding: switching forwarding on drops RA-learned routes otherwise.
    assert [a.summary for a in actions] == [
        "set net.ipv4.ip_forward = 1 (was 0)",
        "set net.ipv6.conf.eth0/1.accept_ra = 2 (was 1)",
        "set net.ipv6.conf.all.forwarding = 1 (was 0)",
    ]
    plan.apply(actions)
    plan.apply(sysctl.restore_actions(previous, proc))
    assert sysctl.read_sysctl("net.ipv6.conf.eth0/1.accept_ra", proc) == "1"
    assert sysctl.read_sysctl("net.ipv6.conf.all.forwarding", proc) == "0"


def test_static_ipv6_setup_keeps_accept_ra(tmp_path: Path) -> None:
    proc = proc_tree(tmp_path, "0")
    assert sysctl.vps_ipv6_sysctls("eth0.1", proc) == {"net.ipv6.conf.all.forwarding": "1"}
    assert sysctl.conf6_key("eth0.1", "accept_ra") == "net.ipv6.conf.eth0/1.accept_ra"


# --------------------------------------------------------------------------- render


def test_golden_server_ipv6() -> None:
    config = parse()
    golden("server-ipv6.conf", server_config(config, run_as="vpnoffload"))
    golden("ccd-home-ipv6", ccd_entry(config, config.homes["home"]))
    assert "ifconfig-ipv6-push fd00:88::33/64 fd00:88::1" in ccd_entry(config, config.homes["attic"])


def test_no_subnet6_no_ipv6_in_openvpn_files() -> None:
    config = parse(BASE.replace('subnet6 = "fd00:88::/64"\n', "").replace('address6 = "fd00:88::33"\n', ""))
    assert "ipv6" not in server_config(config) and "ipv6" not in ccd_entry(config, config.homes["home"])


def test_client_profile_takes_the_pushed_ipv6_address() -> None:
    # route-nopull and the pull-filters drop routes only; ifconfig-ipv6 still applies.
    from vpnoffload.render.openvpn import client_profile

    text = client_profile(parse(), FakePki(), "home")
    assert 'pull-filter ignore "ifconfig' not in text


# --------------------------------------------------------------------------- deploy


@pytest.fixture
def env6(tmp_path: Path):
    from tests.fakes import FakeTunnel, FakeUsers

    paths = Paths(config=tmp_path / "vpnoffload.toml", state=tmp_path / "state")
    paths.config.write_text(BASE + SERVICES)
    Pki.create(paths.pki).issue("home")
    Pki.open(paths.pki).issue("attic")
    proc = proc_tree(tmp_path, "1")
    tunnels: dict[str, FakeTunnel] = {}
    backends = deploy.Backends(
        page_factory=lambda paths: tunnels.setdefault("pages", FakeTunnel("pages", Path(), Path(), Path())),
        firewall=FakeBackend(),
        routing=FakeRoutingBackend(devices=("lo", "eth0.1"),
                                      addresses=[rt.Address(IPv4Address("203.0.113.10"), "eth0.1", 24)]),
        proc_root=proc, users=FakeUsers(), tunnel_factory=lambda **kw: tunnels.setdefault(kw["name"], FakeTunnel(**kw)),
    )
    return cfg.load(paths.config), paths, backends, proc


def test_up_vps_with_ipv6_service_then_nothing_then_down(env6) -> None:
    config, paths, b, proc = env6
    actions = deploy.plan_up_vps(config, paths, b)
    text = "\n".join(plan.summaries(actions))
    for words in ("ip6tables nat: commit", "--to-destination [fd00:88::2]:8080", "add address 2001:db8:1::80/128 dev eth0.1",
                  "net.ipv6.conf.eth0/1.accept_ra = 2", "net.ipv6.conf.all.forwarding = 1"):
        assert words in text, text
    fw_before = b.firewall.dump()
    plan.apply(actions)
    assert "server-ipv6 fd00:88::/64" in (paths.server_dir / "server.conf").read_text()
    assert "ifconfig-ipv6-push fd00:88::2/64 fd00:88::1" in (paths.server_dir / "ccd" / "home").read_text()
    assert "[::]:503" in (paths.pages / "listen.txt").read_text()
    assert deploy.plan_up_vps(config, paths, b) == []
    plan.apply(deploy.plan_down_vps(paths, b))
    assert b.firewall.dump() == fw_before
    assert [str(a.address) for a in b.routing.address_list] == ["203.0.113.10"]
    assert sysctl.read_sysctl("net.ipv6.conf.eth0/1.accept_ra", proc) == "1"
    assert sysctl.read_sysctl("net.ipv6.conf.all.forwarding", proc) == "0"


def test_up_vps_without_ipv6_services_leaves_ipv6_sysctls_alone(env6) -> None:
    config, paths, b, proc = env6
    paths.config.write_text(BASE + '[services.web]\nlisten = "80"\ntarget = "8081"\n')
    text = "\n".join(plan.summaries(deploy.plan_up_vps(cfg.load(paths.config), paths, b)))
    assert "net.ipv6" not in text and "ip6tables filter: commit" in text
    deploy.cleanup_scratch(paths)


# --------------------------------------------------------------------------- lab and doctor


def test_lab_ipv6_plan_uses_documentation_addresses_only() -> None:
    cmds = [" ".join(c) for c in Lab("vt6", ipv6=True).build_commands()]
    assert any("net.ipv6.conf.all.disable_ipv6=0" in c for c in cmds)
    assert any(c.endswith("addr add 2001:db8:1::10/64 dev eth0") for c in cmds)
    assert any("net.ipv6.conf.all.forwarding=1" in c for c in cmds)
    for c in cmds:
        for word in c.split():
            if word.count(":") >= 2 and "/" in word:
                assert IPv6Network(word, strict=False).subnet_of(IPv6Network("2001:db8::/32")), c
    plain = [" ".join(c) for c in Lab("vt6").build_commands()]
    assert any("net.ipv6.conf.all.disable_ipv6=1" in c for c in plain) and not any("2001:db8" in c for c in plain)


def test_doctor_names_the_vps_ipv6_prefix(tmp_path: Path) -> None:
    if_inet6 = tmp_path / "if_inet6"
    if_inet6.write_text(
        "20010db8000100000000000000000010 02 40 00 80     eth0\n"
        "fe80000000000000501bf8fffece7909 02 40 20 80     eth0\n"
        "fd000088000000000000000000000001 05 40 00 80 vpnoffload0\n"
        "00000000000000000000000000000001 01 80 10 80       lo\n"
    )
    assert doctor.global_ipv6_networks(if_inet6) == [("2001:db8:1::/64", "eth0")]
    finding = doctor.check_ipv6(parse(BASE), if_inet6)
    assert finding.level == "ok" and "2001:db8:1::/64 on eth0" in finding.detail and "[2001:db8:1::80]" in finding.detail
    empty = tmp_path / "none"
    assert doctor.check_ipv6(parse(), empty).level == "warn"  # IPv6 services, no IPv6 here
    assert doctor.check_ipv6(None, empty).level == "ok"
