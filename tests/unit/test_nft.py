"""The nftables backend without root: translation both ways for every rule vpnoffload
writes, the transaction it sends, and the backend choice (issue 12, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes import FakeNft, _as_printed
from tests.unit import test_firewall
from vpnoffload import firewall as fw
from vpnoffload.config import parse_text
from vpnoffload.deploy import doctor
from vpnoffload.errors import BackendError, ConfigError
from vpnoffload.firewall import choose, nft
from vpnoffload.firewall.nftexpr import to_nft
from vpnoffload.firewall.nftread import from_nft
from vpnoffload.firewall.rules import Rule, Ruleset
from vpnoffload.plan import apply

IPV6_CONFIG = """
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
PROXY_CONFIG = """
[vps]
address = "203.0.113.10"
[tunnel]
subnet = "198.51.100.0/24"
[homes.home]
address = "198.51.100.2"
[homes.attic]
address = "198.51.100.3"
[services.shop]
listen = "80"
target = "8081"
hostname = "shop.example.org"
via = "proxy"
homes = ["home", "attic"]
[services.git]
listen = "22"
target = "22"
"""


def policy_rulesets() -> dict[str, Ruleset]:
    """Every shape of ruleset the policy makes: IPv4, IPv6, proxy services, fallback, homes."""
    four, six, proxy = test_firewall.config(), parse_text(IPV6_CONFIG), parse_text(PROXY_CONFIG)
    return {
        "vps": fw.vps_ruleset(four),
        "vps-fallback": fw.vps_ruleset(four, frozenset(four.services)),
        "home": fw.home_ruleset(four, "home"),
        "vps6": fw.vps_ruleset(six),
        "vps6-fallback": fw.vps_ruleset(six, frozenset(six.services)),
        "vps6-backup": fw.vps_ruleset(six, active={"blog": "attic"}),
        "home6": fw.home_ruleset(six, "attic"),
        "proxy": fw.vps_ruleset(proxy),
        "proxy-backup": fw.vps_ruleset(proxy, active={"shop": "attic"}),
        "proxy-fallback": fw.vps_ruleset(proxy, frozenset(proxy.services)),
    }


RULESETS = policy_rulesets()
ALL_RULES = sorted({r for rs in RULESETS.values() for r in rs.rules})


def test_the_policy_shapes_cover_every_kind_of_rule() -> None:
    text = " ".join(r.text for r in ALL_RULES)
    for word in ("CONNMARK", "DNAT --to-destination [", "tcp-reset", "icmp-port-unreachable",
                 "icmp6-port-unreachable", "--icmpv6-type 128", "--icmp-type 8", "! -i", "! --mark", "-m mark",
                 "--ctstate DNAT", "RETURN"):
        assert word in text, word
    assert {r.table for r in ALL_RULES} >= {"filter", "nat", "filter6", "nat6"}
    assert "OUTPUT" in {r.chain for r in ALL_RULES}


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: f"{r.table}:{r.chain}:{r.text}"[:90])
def test_every_policy_rule_round_trips(rule: Rule) -> None:
    exprs = to_nft(rule)
    assert from_nft(rule.table, rule.chain, exprs) == rule
    # ...also in the form nft prints back, and through JSON text
    printed = json.loads(json.dumps([_as_printed(e) for e in exprs]))
    assert from_nft(rule.table, rule.chain, printed) == rule


def test_translations_are_these() -> None:
    def one(table: str, text: str) -> list[dict]:
        return to_nft(Rule(table, "VPNOFFLOAD-X", tuple(text.split())))

    ct_mark = {"ct": {"key": "mark"}}
    assert one("nat", "-d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j CONNMARK --set-xmark 0x100000/0xff00000") == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "203.0.113.10"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
        {"mangle": {"key": ct_mark, "value": {"^": [{"&": [ct_mark, 0xF00FFFFF]}, 0x100000]}}},
    ]
    assert one("nat6", "-j DNAT --to-destination [fd00:88::2]:8080") == [{"dnat": {"addr": "fd00:88::2", "port": 8080}}]
    assert one("filter", "! -i vpnoffload0 -m conntrack --ctstate RELATED,ESTABLISHED -m connmark ! --mark "
                         "0x0/0xff00000 -j ACCEPT") == [
        {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "vpnoffload0"}},
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["related", "established"]}},
        {"match": {"op": "!=", "left": {"&": [ct_mark, 0xFF00000]}, "right": 0}},
        {"accept": None},
    ]
    assert one("filter", "-m conntrack --ctstate DNAT -j REJECT --reject-with icmp-port-unreachable") == [
        {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
        {"reject": {"type": "icmp", "expr": "port-unreachable"}},
    ]
    assert one("filter6", "-s 2001:db8::/32 -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j VPNOFFLOAD-IN") == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                   "right": {"prefix": {"addr": "2001:db8::", "len": 32}}}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "echo-request"}},
        {"jump": {"target": "VPNOFFLOAD-IN"}},
    ]
    assert one("filter", "-o eth+ -p udp -j DROP") == [
        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth*"}},
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
        {"drop": None},
    ]


#: Expressions exactly as `nft -j list table` (1.0.6) printed rules we wrote.
PRINTED = [
    # A home tunnel's mark field (0xe0000000, contiguous high bits): nft prints the masked
    # compare as a prefix, "ct mark 0x40000000/3" (issue 25, found in the namespace test).
    ("mangle", [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "vpnoffload1"}},
                {"match": {"op": "==", "left": {"ct": {"key": "mark"}}, "right": {"prefix": {"addr": 0x40000000, "len": 3}}}}],
     "! -i vpnoffload1 -m connmark --mark 0x40000000/0xe0000000"),
    ("nat", [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "203.0.113.10"}},
             {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
             {"mangle": {"key": {"ct": {"key": "mark"}}, "value": {"|": [{"&": [{"ct": {"key": "mark"}}, 4028628991]},
                                                                         1048576]}}}],
     "-d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j CONNMARK --set-xmark 0x100000/0xff00000"),
    ("filter", [{"match": {"op": "!=", "left": {"ct": {"key": "state"}}, "right": {"|": ["established", "related"]}}},
                {"match": {"op": "==", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                {"reject": {"type": "tcp reset"}}],
     "-m conntrack ! --ctstate RELATED,ESTABLISHED -m conntrack --ctstate DNAT -j REJECT --reject-with tcp-reset"),
    ("filter", [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                {"match": {"op": "==", "left": {"ct": {"key": "ip daddr", "dir": "original"}}, "right": "198.51.100.2"}},
                {"match": {"op": "==", "left": {"ct": {"key": "proto-dst", "dir": "original"}}, "right": 8080}},
                {"accept": None}],
     "-p tcp -m conntrack --ctstate DNAT --ctorigdst 198.51.100.2 --ctorigdstport 8080 -j ACCEPT"),
    ("mangle", [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "x"}},
                {"match": {"op": "==", "left": {"&": [{"ct": {"key": "mark"}}, 1]}, "right": 1}},
                {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 1]}}}],
     "! -i x -m connmark --mark 0x1/0x1 -j MARK --set-xmark 0x1/0x1"),
    ("filter6", [{"match": {"op": "==", "left": {"ct": {"key": "ip6 daddr", "dir": "original"}},
                            "right": {"prefix": {"addr": "fd00::", "len": 8}}}},
                 {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
                 {"accept": None}],
     "-m conntrack --ctorigdst fd00::/8 -m conntrack --ctstate NEW -j ACCEPT"),
    ("filter", [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": 17}}, {"reject": None}],
     "-p udp -j REJECT --reject-with icmp-port-unreachable"),
    ("filter", [{"counter": {"packets": 3, "bytes": 180}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "tcp", "field": "sport"}}, "right": 1}},
                {"match": {"op": "==", "left": {"ct": {"key": "mark"}}, "right": 7}}, {"return": None}],
     "-p tcp -m tcp --dport 80 ! --sport 1 -m connmark --mark 0x7 -j RETURN"),
]


EXTRA_RULES = [
    Rule("filter", "VPNOFFLOAD-FWD", tuple(t.split())) for t in (
        "-p tcp -m conntrack --ctstate DNAT --ctorigdst 198.51.100.2 --ctorigdstport 8080 -j ACCEPT",
        "-m conntrack ! --ctorigsrc 192.0.2.0/24 --ctorigsrcport 53 -m conntrack --ctstate NEW -j DROP",
        "-s 192.0.2.0/24 ! -d 198.51.100.7/32 -i eth+ -p tcp -m tcp ! --dport 22 --sport 1024 -j RETURN",
        "-p udp -j REJECT --reject-with icmp-port-unreachable",
    )
] + [
    Rule("mangle6", "VPNOFFLOAD-MARK", tuple(t.split())) for t in (
        "-i vpnoffload0 -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x1/0x1",
        "! -i vpnoffload0 -m connmark --mark 0x1/0x1 -j MARK --set-xmark 0x1/0x1",
        "-m mark --mark 0x5 -j MARK --set-xmark 0x3/0xffffffff",
    )
]


@pytest.mark.parametrize("rule", EXTRA_RULES, ids=lambda r: r.text[:60])
def test_other_forms_round_trip(rule: Rule) -> None:
    exprs = to_nft(rule)
    assert from_nft(rule.table, rule.chain, [_as_printed(e) for e in exprs]) == rule


@pytest.mark.parametrize("table,exprs,text", PRINTED)
def test_reads_what_nft_prints(table: str, exprs: list[dict], text: str) -> None:
    assert from_nft(table, "VPNOFFLOAD-X", exprs).text == text


@pytest.mark.parametrize("text", [
    "-p tcp -m multiport --dports 80,443 -j ACCEPT",
    "-m conntrack --ctstate NEW,DNAT -j ACCEPT",  # iptables ORs a state and a status
    "-p tcp -m tcp --dport 80:90 -j ACCEPT",
    "-j MASQUERADE",
    "-j FOREIGN",  # a jump out of our table
    "-d 2001:db8::1/128 -j ACCEPT",  # wrong family
    "-p tcp -m tcp --dport 80 -j DNAT --to-destination 198.51.100.2:8080-8090",
    "-m comment --comment hi -j ACCEPT",
])
def test_an_untranslatable_rule_is_refused_by_name(text: str) -> None:
    with pytest.raises(BackendError, match="cannot write `VPNOFFLOAD-X: " + text.split()[0]):
        to_nft(Rule("filter", "VPNOFFLOAD-X", tuple(text.split())))


def test_an_unknown_expression_in_our_table_is_an_error_naming_it() -> None:
    with pytest.raises(BackendError, match="chain VPNOFFLOAD-FWD: cannot read .*queue"):
        from_nft("filter", "VPNOFFLOAD-FWD", [{"queue": {"num": 1}}])


# --------------------------------------------------------------------------
# The backend against an in-memory nft


def foreign_nft() -> FakeNft:
    fake = FakeNft()
    fake.tables[("inet", "filter")] = {
        "chains": {"input": {"family": "inet", "table": "filter", "name": "input", "type": "filter",
                             "hook": "input", "prio": 0, "policy": "drop"}},
        "rules": {"input": [[{"accept": None}]]},
    }
    return fake


@pytest.mark.parametrize("name", sorted(RULESETS))
def test_plan_apply_read_back_replan_nothing_and_down_removes_our_tables(name: str) -> None:
    fake = foreign_nft()
    before = repr(fake.tables)
    backend = nft.NftBackend(run=fake)
    desired = RULESETS[name]
    apply(fw.plan(backend, desired))
    assert backend.read() == desired
    assert fw.plan(backend, desired) == []
    families = {nft.family_of(t) for t in desired.tables()}
    assert {f for f, n in fake.tables if n == "vpnoffload"} == families
    apply(fw.plan(backend, fw.empty_ruleset()))
    assert backend.read() == fw.empty_ruleset()
    assert repr(fake.tables) == before


def test_switching_rulesets_rewrites_only_the_changed_tables_one_transaction_each() -> None:
    fake = FakeNft()
    backend = nft.NftBackend(run=fake)
    apply(fw.plan(backend, RULESETS["vps"]))
    fake.batches.clear()
    apply(fw.plan(backend, RULESETS["vps-fallback"]))
    assert backend.read() == RULESETS["vps-fallback"]
    assert len(fake.batches) == 2  # filter and nat changed: two atomic commits
    nat = fake.batches[1]
    # nat keeps its chains (no hook re-registered): flush and refill
    assert {next(iter(c)) for c in nat} == {"add", "flush"}
    assert [c["add"]["chain"]["name"] for c in nat if "chain" in c.get("add", {})] == []


def test_the_transaction_is_exactly_this() -> None:
    fake = FakeNft()
    content = Ruleset(frozenset({("nat", "VPNOFFLOAD-DNAT")}), (
        Rule("nat", "PREROUTING", ("!", "-i", "tun0", "-j", "VPNOFFLOAD-DNAT")),
        Rule("nat", "VPNOFFLOAD-DNAT", ("-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination",
                                        "198.51.100.2:8080")),
    ))
    nft.NftBackend(run=fake).write("nat", content)
    ref = {"family": "ip", "table": "vpnoffload"}
    assert fake.batches == [[
        {"add": {"table": {"family": "ip", "name": "vpnoffload"}}},
        {"add": {"chain": {**ref, "name": "nat-PREROUTING", "type": "nat", "hook": "prerouting", "prio": -100,
                           "policy": "accept"}}},
        {"add": {"chain": {**ref, "name": "VPNOFFLOAD-DNAT"}}},
        {"add": {"rule": {**ref, "chain": "nat-PREROUTING", "expr": [
            {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "tun0"}},
            {"jump": {"target": "VPNOFFLOAD-DNAT"}}]}}},
        {"add": {"rule": {**ref, "chain": "VPNOFFLOAD-DNAT", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
            {"dnat": {"addr": "198.51.100.2", "port": 8080}}]}}},
    ]]
    nft.NftBackend(run=fake).write("nat", Ruleset())
    assert fake.batches[-1] == [{"delete": {"table": {"family": "ip", "name": "vpnoffload"}}}]
    nft.NftBackend(run=fake).write("nat", Ruleset())  # nothing there: no transaction at all
    assert len(fake.batches) == 2 and fake.tables == {}


def test_emptying_one_table_keeps_the_other_and_the_nft_table() -> None:
    fake = FakeNft()
    backend = nft.NftBackend(run=fake)
    vps = RULESETS["vps"]
    apply(fw.plan(backend, vps))
    backend.write("nat", Ruleset())
    assert backend.read() == Ruleset(frozenset(c for c in vps.chains if c[0] != "nat"),
                                     tuple(r for r in vps.rules if r.table != "nat"))
    assert ("ip", "vpnoffload") in fake.tables


def test_an_untranslatable_rule_changes_nothing() -> None:
    fake = FakeNft()
    backend = nft.NftBackend(run=fake)
    apply(fw.plan(backend, RULESETS["vps"]))
    bad = Ruleset(frozenset({("filter", "VPNOFFLOAD-FWD")}), (
        Rule("filter", "FORWARD", ("-j", "VPNOFFLOAD-FWD")),
        Rule("filter", "VPNOFFLOAD-FWD", ("-m", "multiport", "--dports", "1,2", "-j", "ACCEPT")),
    ))
    with pytest.raises(BackendError, match="multiport"):
        backend.write("filter", bad)
    assert backend.read() == RULESETS["vps"]


def test_chains_the_layout_cannot_tell_apart_are_refused() -> None:
    backend = nft.NftBackend(run=FakeNft())
    orphan = Ruleset(frozenset({("nat", "VPNOFFLOAD-X")}))
    with pytest.raises(BackendError, match="VPNOFFLOAD-X has no jump"):
        backend.write("nat", orphan)
    backend.write("filter", Ruleset(frozenset({("filter", "VPNOFFLOAD-X")})))  # read back as filter's: fine
    assert backend.read() == Ruleset(frozenset({("filter", "VPNOFFLOAD-X")}))
    both = Ruleset(frozenset({("nat", "VPNOFFLOAD-X")}), (Rule("nat", "PREROUTING", ("-j", "VPNOFFLOAD-X")),))
    with pytest.raises(BackendError, match="already belongs to iptables filter"):
        backend.write("nat", both)


def test_a_chain_someone_else_put_in_our_table_is_an_error() -> None:
    listing = {"nftables": [{"chain": {"family": "ip", "table": "vpnoffload", "name": "theirs"}}]}
    with pytest.raises(BackendError, match="chain theirs is not vpnoffload's"):
        nft.parse_table("ip", listing)


# --------------------------------------------------------------------------
# Which backend


def test_choice_env_var_forces_and_detection_follows_the_legacy_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose.chosen({"VPNOFFLOAD_FIREWALL": "nft"})[0] == "nft"
    assert choose.chosen({"VPNOFFLOAD_FIREWALL": "iptc"}, legacy=False)[0] == "iptc"
    assert choose.chosen({}, legacy=True)[0] == "iptc"
    assert choose.chosen({}, legacy=False)[0] == "nft"
    with pytest.raises(ConfigError, match="VPNOFFLOAD_FIREWALL"):
        choose.chosen({"VPNOFFLOAD_FIREWALL": "pf"})
    monkeypatch.setenv("VPNOFFLOAD_FIREWALL", "nft")
    assert isinstance(fw.default_backend(), nft.NftBackend)
    monkeypatch.setenv("VPNOFFLOAD_FIREWALL", "iptc")
    assert type(fw.default_backend()).__name__ == "IptcBackend"


def test_legacy_tables_exist_if_loaded_or_loadable(tmp_path: Path) -> None:
    proc_net, modules = tmp_path / "net", tmp_path / "modules"
    proc_net.mkdir()
    assert not choose.legacy_tables_available(proc_net, modules, "6.1.0")
    (modules / "6.1.0").mkdir(parents=True)
    (modules / "6.1.0" / "modules.dep").write_text(
        "kernel/net/netfilter/nf_tables.ko.xz:\nkernel/net/ipv4/netfilter/iptable_nat.ko.xz: x\n")
    assert not choose.legacy_tables_available(proc_net, modules, "6.1.0")  # iptable_nat is not ip_tables
    with (modules / "6.1.0" / "modules.dep").open("a") as f:
        f.write("kernel/net/ipv4/netfilter/ip_tables.ko.xz: kernel/net/netfilter/x_tables.ko.xz\n")
    assert choose.legacy_tables_available(proc_net, modules, "6.1.0")
    (proc_net / "ip_tables_names").write_text("")
    assert choose.legacy_tables_available(proc_net, tmp_path / "none", "6.1.0")


def test_doctor_names_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPNOFFLOAD_FIREWALL", "nft")
    (finding,) = doctor.check_firewall_backend(root=False)
    assert finding.level == "ok" and "nftables tables ip vpnoffload" in finding.detail
    monkeypatch.setenv("VPNOFFLOAD_FIREWALL", "iptc")
    findings = doctor.check_firewall_backend(root=False)
    assert findings[0].check == "firewall backend" and "python-iptables" in findings[0].detail
    monkeypatch.setenv("VPNOFFLOAD_FIREWALL", "bogus")
    assert doctor.check_firewall_backend(root=False)[0].level == "fail"
