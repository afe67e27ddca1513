"""The host's own firewall without root: openings derived from a config, detection and the
chooser on recorded rulesets (tests/unit/hostfw/*.json, ``nft -j list ruleset`` of each
shape in tests/hostshapes.py), each mechanism's exact rules, and the plan with its record."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest

from vpnoffload import config as cfg
from vpnoffload import plan
from vpnoffload.errors import ApplyError
from vpnoffload.firewall.host import docker as host_docker, nft as host_nft, plan as host_plan, ufw as host_ufw
from vpnoffload.firewall.host.openings import Opening, choose, detect, home_openings, vps_openings
from tests.unit.hostfwkit import CONFIG, sample

SAMPLES = Path(__file__).parent / "hostfw"


@pytest.fixture
def config():
    return cfg.parse_text(CONFIG, "test")


def host_of(name: str):
    return detect(sample(name), ufw=name == "ufw")


def test_vps_openings_are_exactly_what_the_vps_needs(config) -> None:
    got = [(o.hook, o.match_text(), o.why) for o in vps_openings(config, "eth0")]
    assert got == [
        ("input", 'iifname "eth0" ip daddr 203.0.113.10 udp dport 1194 accept', "OpenVPN server"),
        ("forward", 'iifname "eth0" oifname "vpnoffload0" ip daddr 198.51.100.2 tcp dport 8080 ct status dnat accept',
         "service web to home"),
        ("forward", 'iifname "vpnoffload0" oifname "eth0" ip saddr 198.51.100.2 tcp sport 8080 '
         "ct state established,related accept", "replies of service web from home"),
        ("output", 'oifname "vpnoffload0" ip daddr 198.51.100.2 tcp dport 8080 accept',
         "health checks of service web at home"),
        ("forward", 'iifname "eth0" oifname "vpnoffload0" ip daddr 198.51.100.2 tcp dport 2222 ct status dnat accept',
         "service git to home"),
        ("forward", 'iifname "vpnoffload0" oifname "eth0" ip saddr 198.51.100.2 tcp sport 2222 '
         "ct state established,related accept", "replies of service git from home"),
        ("output", 'oifname "vpnoffload0" ip daddr 198.51.100.2 tcp dport 2222 accept',
         "health checks of service git at home"),
        # The watchdog's probe namespace (watch/probe.py) enters FORWARD like a visitor: let it and its replies by.
        ("forward", 'iifname "vpnoffload-pb" oifname "vpnoffload0" ip saddr 198.18.255.254 accept',
         "the watchdog's visitor-path check"),
        ("forward", 'iifname "vpnoffload0" oifname "vpnoffload-pb" ip daddr 198.18.255.254 '
         "ct state established,related accept", "replies to the watchdog's visitor-path check"),
        ("input", 'iifname "eth0" ip daddr 203.0.113.10 tcp dport 503 ct status dnat accept',
         "friendly-page server (only DNATed connections)"),
        ("input", 'iifname "vpnoffload0" ct state established,related accept', "replies to the health checks"),
        ("output", "ct state established,related accept", "replies of the OpenVPN and page servers"),
    ]


def test_home_openings_are_the_services_ports_from_the_tunnel_and_the_client(config) -> None:
    got = [(o.hook, o.match_text()) for o in home_openings(config, "home")]
    assert got == [
        ("input", 'iifname "vpnoffload0" ip daddr 198.51.100.2 tcp dport 8080 accept'),
        ("input", 'iifname "vpnoffload0" ip daddr 198.51.100.2 tcp dport 2222 accept'),
        ("input", "ip saddr 203.0.113.10 udp sport 1194 ct state established,related accept"),
        ("output", "ip daddr 203.0.113.10 udp dport 1194 accept"),
        ("output", 'oifname "vpnoffload0" ct state established,related accept'),
    ]


@pytest.mark.parametrize(("shape", "found", "dropping"), [
    ("docker", "Docker (DOCKER-USER, DOCKER chains)", ["ip filter FORWARD"]),
    ("nftables", "nftables (tables inet filter)", ["inet filter input", "inet filter forward"]),
    ("ufw", "ufw (enabled)", ["ip filter INPUT", "ip filter FORWARD", "ip6 filter INPUT", "ip6 filter FORWARD"]),
    ("firewalld", "firewalld-shaped nftables table inet firewalld (no firewalld daemon running)",
     ["inet firewalld filter_INPUT", "inet firewalld filter_FORWARD"]),
])
def test_detect_names_the_firewall_and_its_dropping_chains(shape: str, found: str, dropping: list[str]) -> None:
    host = host_of(shape)
    assert found in host.found()
    assert [c.label for c in host.chains if c.drops] == dropping


def test_docker_forward_goes_to_docker_user_with_iptables_nft(config) -> None:
    places = choose(vps_openings(config, "eth0"), host_of("docker"))
    assert {(p.mechanism, p.family, p.chain, p.opening.hook) for p in places} == {
        ("iptables-nft", "ip", "DOCKER-USER", "forward")}
    lines = [host_docker.save_line(p.chain, p.opening) for p in places]
    # Exactly as iptables-nft-save prints them (seen on this machine's iptables 1.8.9).
    assert lines[0] == ("-A DOCKER-USER -d 198.51.100.2/32 -i eth0 -o vpnoffload0 -p tcp -m tcp --dport 8080 "
                        "-m conntrack --ctstate DNAT -m comment --comment vpnoffload -j ACCEPT")
    assert lines[1] == ("-A DOCKER-USER -s 198.51.100.2/32 -i vpnoffload0 -o eth0 -p tcp -m tcp --sport 8080 "
                        "-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment vpnoffload -j ACCEPT")
    assert lines[4:] == [
        "-A DOCKER-USER -s 198.18.255.254/32 -i vpnoffload-pb -o vpnoffload0 -m comment --comment vpnoffload -j ACCEPT",
        "-A DOCKER-USER -d 198.18.255.254/32 -i vpnoffload0 -o vpnoffload-pb -m conntrack --ctstate RELATED,ESTABLISHED "
        "-m comment --comment vpnoffload -j ACCEPT"]


def test_nftables_openings_go_into_the_dropping_chains_only(config) -> None:
    places = choose(vps_openings(config, "eth0"), host_of("nftables"))
    where = [(p.chain, p.opening.why) for p in places]
    assert ("input", "OpenVPN server") in where and ("input", "friendly-page server (only DNATed connections)") in where
    assert ("forward", "service web to home") in where and ("forward", "replies of service git from home") in where
    assert ("forward", "the watchdog's visitor-path check") in where
    assert ("forward", "replies to the watchdog's visitor-path check") in where  # its forward chain has no ct accept
    # The input chain accepts established traffic first; output drops nothing.
    assert not [p for p in places if p.chain == "input" and p.opening.ct == "established"]
    assert not [p for p in places if p.opening.hook == "output"]
    assert all(p.mechanism == "nft" and p.table == "filter" and p.family == "inet" for p in places)


def test_firewalld_shaped_table_is_handled_as_native_nftables(config) -> None:
    places = choose(vps_openings(config, "eth0"), host_of("firewalld"))
    assert {(p.mechanism, p.table, p.chain) for p in places} == {
        ("nft", "firewalld", "filter_INPUT"), ("nft", "firewalld", "filter_FORWARD")}
    # filter_FORWARD accepts established traffic first, so replies need nothing.
    assert not [p for p in places if p.opening.ct == "established"]


def test_ufw_gets_its_own_rules_once_for_both_families(config) -> None:
    places = choose(vps_openings(config, "eth0"), host_of("ufw"))
    assert {p.mechanism for p in places} == {"ufw"}
    assert [host_ufw.shown(p.opening) for p in places] == [
        "ufw allow in on eth0 to 203.0.113.10 port 1194 proto udp comment 'vpnoffload'",
        "ufw route allow in on eth0 out on vpnoffload0 to 198.51.100.2 port 8080 proto tcp comment 'vpnoffload'",
        "ufw route allow in on eth0 out on vpnoffload0 to 198.51.100.2 port 2222 proto tcp comment 'vpnoffload'",
        "ufw route allow in on vpnoffload-pb out on vpnoffload0 from 198.18.255.254 comment 'vpnoffload'",
        "ufw allow in on eth0 to 203.0.113.10 port 503 proto tcp comment 'vpnoffload'",
    ]


def test_nothing_to_open_where_nothing_drops(config) -> None:
    assert choose(vps_openings(config, "eth0"), detect({"nftables": []})) == []


def _with_rule(ruleset: dict, family: str, table: str, chain: str, opening: Opening, handle: int,
               comment: str = "vpnoffload") -> dict:
    out = copy.deepcopy(ruleset)
    statements = host_nft.expr(opening)
    statements.insert(-1, {"counter": {"packets": 3, "bytes": 180}})
    out["nftables"].append({"rule": {"family": family, "table": table, "chain": chain, "handle": handle,
                                     "comment": comment, "expr": statements}})
    return out


def test_nft_rule_is_found_only_if_ours_counters_aside() -> None:
    opening = Opening("input", 4, "udp", dport=1194, iif="eth0", daddr="203.0.113.10")
    ruleset = _with_rule(sample("nftables"), "inet", "filter", "input", opening, 40)
    assert host_nft.find(ruleset, "inet", "filter", "input", opening) == 40
    assert host_nft.find(ruleset, "inet", "filter", "forward", opening) is None
    theirs = _with_rule(sample("nftables"), "inet", "filter", "input", opening, 41, comment="the admin's")
    assert host_nft.find(theirs, "inet", "filter", "input", opening) is None


class FakeNft:
    """Stands in for host_nft's two writing calls; keeps the 'kernel' ruleset."""

    def __init__(self, ruleset: dict) -> None:
        self.ruleset = ruleset
        self.next_handle = 100
        self.calls: list[tuple[str, object]] = []

    def insert(self, places) -> list[int]:
        handles = []
        for p in places:
            self.ruleset = _with_rule(self.ruleset, p.family, p.table, p.chain, p.opening, self.next_handle)
            handles.append(self.next_handle)
            self.next_handle += 1
        self.calls.append(("insert", [p.opening.why for p in places]))
        return handles

    def delete(self, targets) -> None:
        gone = {t[3] for t in targets}
        self.ruleset["nftables"] = [i for i in self.ruleset["nftables"]
                                    if "rule" not in i or i["rule"]["handle"] not in gone]
        self.calls.append(("delete", sorted(gone)))


def test_plan_records_openings_second_plan_is_empty_and_close_removes_exactly_those(config, monkeypatch) -> None:
    fake = FakeNft(sample("nftables"))
    monkeypatch.setattr(host_nft, "insert", fake.insert)
    monkeypatch.setattr(host_nft, "delete", fake.delete)
    monkeypatch.setattr(host_nft, "list_ruleset", lambda: fake.ruleset)
    host = host_plan.HostFirewall(reader=lambda: (detect(fake.ruleset), fake.ruleset))
    rec = SimpleNamespace(host_openings=[], host_found=[])
    openings = vps_openings(config, "eth0")

    actions = host.plan_open(openings, rec)
    assert actions[0].summary == ('open in nftables inet filter input: iifname "eth0" ip daddr 203.0.113.10 '
                                  'udp dport 1194 accept (OpenVPN server)')
    plan.apply(actions)
    assert [e["handle"] for e in rec.host_openings] == list(range(100, 100 + len(actions)))
    assert "nftables (tables inet filter)" in rec.host_found
    assert host.plan_open(openings, rec) == []

    # A host reload reuses handle 100 for a rule of its own: close must not touch it.
    reloaded = sample("nftables")
    admin = Opening("input", 4, "tcp", dport=443)
    reloaded = _with_rule(reloaded, "inet", "filter", "input", admin, 100, comment="admin")
    for entry in rec.host_openings[1:]:
        p = host_plan.placement_of(entry)
        reloaded = _with_rule(reloaded, p.family, p.table, p.chain, p.opening, entry["handle"] + 50)
    fake.ruleset = reloaded
    gone = host_plan.missing(rec.host_openings, fake.ruleset)
    assert [e["opening"]["why"] for e in gone] == ["OpenVPN server"]
    plan.apply(host.plan_close(rec))
    assert rec.host_openings == []
    left = [i["rule"] for i in fake.ruleset["nftables"] if "rule" in i and i["rule"].get("comment")]
    assert [r["comment"] for r in left] == ["admin"]


def test_failed_step_rolls_back_the_openings_made(config, monkeypatch) -> None:
    fake = FakeNft(sample("nftables"))
    monkeypatch.setattr(host_nft, "insert", fake.insert)
    monkeypatch.setattr(host_nft, "delete", fake.delete)
    monkeypatch.setattr(host_nft, "list_ruleset", lambda: fake.ruleset)
    host = host_plan.HostFirewall(reader=lambda: (detect(fake.ruleset), fake.ruleset))
    rec = SimpleNamespace(host_openings=[], host_found=[])
    before = copy.deepcopy(fake.ruleset)

    from vpnoffload.errors import BackendError

    def boom() -> None:
        raise BackendError("simulated")

    with pytest.raises(ApplyError, match=r"fail failed: simulated; rolled back \d+ earlier change"):
        plan.apply(host.plan_open(vps_openings(config, "eth0"), rec) + [plan.Action("fail", boom)])
    assert fake.ruleset == before and rec.host_openings == []


def test_reconcile_child_says_when_nothing_is_recorded(tmp_path: Path) -> None:
    assert host_plan.main(["--run", str(tmp_path)]) == 3
    assert host_plan.main([]) == 2


def test_vpnoffloads_own_nft_tables_are_not_the_hosts_firewall() -> None:
    """With the nft backend our tables sit in the same ruleset; detection must not count them."""
    listing = sample("nftables")
    ours = [
        {"table": {"family": "ip", "name": "vpnoffload", "handle": 90}},
        {"chain": {"family": "ip", "table": "vpnoffload", "name": "filter-FORWARD", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "vpnoffload", "chain": "filter-FORWARD", "handle": 2,
                  "expr": [{"drop": None}]}},
    ]
    with_ours = detect({"nftables": listing["nftables"] + ours})
    alone = detect(listing)
    assert with_ours.chains == alone.chains and with_ours.found() == alone.found()
