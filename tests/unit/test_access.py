"""Issue 28: per-service access control, without root: the config keys and flags, the
prefix files, the rules and sets as data, both backends' translation and read-back,
and the drop counters status and the metrics show."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.fakes import FakeNft
from vpnoffload import plan as plan_mod
from vpnoffload.cli.app import app
from vpnoffload.config.parse import parse
from vpnoffload.errors import ConfigError
from vpnoffload.firewall import access, ipset
from vpnoffload.firewall.nft import NftBackend, RawJSON, Snapshot, batch, dumps, elements_json
from vpnoffload.firewall.nftexpr import to_nft
from vpnoffload.firewall.nftread import from_nft
from vpnoffload.firewall.planner import plan
from vpnoffload.firewall.policy import vps_ruleset
from vpnoffload.firewall.rules import Ruleset
from vpnoffload.lean import accessdrops


def doc(**services: dict[str, Any]) -> dict[str, Any]:
    return {"vps": {"address": "203.0.113.10"},
            "tunnel": {"subnet": "10.88.0.0/24", "subnet6": "fd00:88::/64"},
            "homes": {"home": {"address": "10.88.0.2"}},
            "services": services}


WEB = {"listen": "80", "target": "8080", "check": "http:/"}
SSH = {"listen": "22", "target": "22"}


# ------------------------------------------------------------------ the config keys


def test_access_keys_parse_into_the_service() -> None:
    config = parse(doc(web={**WEB, "allow": ["192.0.2.0/24", "2001:db8::/32"], "deny": ["192.0.2.7"],
                            "deny_file": "/etc/vpnoffload/deny.txt", "rate": "10/s", "max_conns": 20}))
    a = config.services["web"].access
    assert [str(p) for p in a.allow] == ["192.0.2.0/24", "2001:db8::/32"]
    assert [str(p) for p in a.deny] == ["192.0.2.7/32"]
    assert a.deny_file == Path("/etc/vpnoffload/deny.txt") and a.allow_file is None
    assert (a.rate, a.burst, a.max_conns, a.restricts) == (10, 5, 20, True)
    assert not parse(doc(web=WEB)).services["web"].access.restricts


@pytest.mark.parametrize("key,value,words", [
    ("allow", "192.0.2.0/24", "services.web.allow: must be a list of prefixes"),
    ("allow", ["192.0.2.1/24"], "services.web.allow: '192.0.2.1/24' is not a prefix (192.0.2.1/24 has host bits set)"),
    ("deny", ["example.org"], "services.web.deny: 'example.org' is not a prefix"),
    ("deny", [7], "services.web.deny: 7 is not a prefix"),
    ("deny", ["10.0.0.0/8"] * 1001, "services.web.deny: 1001 prefixes: put more than 1000 in a file"),
    ("deny_file", "relative.txt", "services.web.deny_file: 'relative.txt' must be an absolute path"),
    ("rate", "10/m", "services.web.rate: '10/m' is not a rate"),
    ("rate", "0/s", "services.web.rate: '0/s' is not a rate"),
    ("rate", 10, "services.web.rate: 10 is not a rate"),
    ("max_conns", 0, "services.web.max_conns: 0 must be a whole number from 1 to 100000"),
    ("max_conns", "many", "services.web.max_conns: 'many' must be a whole number"),
])
def test_bad_access_values_name_the_key(key: str, value: Any, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(doc(web={**WEB, key: value}))
    assert words in str(err.value)


def test_a_proxy_service_refuses_access_rules() -> None:
    with pytest.raises(ConfigError, match="services.web.rate: access rules apply to via = 'dnat'"):
        parse(doc(web={**WEB, "via": "proxy", "hostname": "www.example.org", "rate": "5/s"}))


# ------------------------------------------------------------------ the flags


CONFIG = """# mine
[vps]
address = "203.0.113.10"

[homes.home]
address = "10.88.0.2"
"""


def run(cfg: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["-c", str(cfg), *args])


def test_service_add_and_set_write_the_keys_the_flags_name(tmp_path: Path) -> None:
    cfg = tmp_path / "vpnoffload.toml"
    cfg.write_text(CONFIG)
    added = run(cfg, "service", "add", "web", "--listen", "80", "--target", "8080", "--allow", "192.0.2.0/24",
                "--allow", "2001:db8::/32", "--rate", "10/s", "--max-conns", "20")
    assert added.exit_code == 0, added.output
    text = cfg.read_text()
    assert 'allow = ["192.0.2.0/24", "2001:db8::/32"]' in text and 'rate = "10/s"' in text and "max_conns = 20" in text
    changed = run(cfg, "service", "set", "web", "--deny-file", "deny.txt", "--clear", "allow", "--rate", "5/s")
    assert changed.exit_code == 0, changed.output
    assert "deny file" in changed.output and "at most 5/s" in changed.output
    text = cfg.read_text()
    assert "allow =" not in text and f'deny_file = "{Path.cwd() / "deny.txt"}"' in text and 'rate = "5/s"' in text
    assert text.startswith("# mine")


@pytest.mark.parametrize("args,words", [
    (["add", "web", "--listen", "80", "--target", "8080", "--deny", "300.1.2.3/8"], "services.web.deny: '300.1.2.3/8'"),
    (["add", "web", "--listen", "80", "--target", "8080", "--rate", "fast"], "services.web.rate: 'fast' is not a rate"),
    (["add", "web", "--listen", "80", "--target", "8080", "--max-conns", "-1"], "services.web.max_conns: '-1'"),
    (["set", "nope", "--rate", "1/s"], "no service named 'nope'"),
    (["set", "old", "--clear", "colour"], "--clear: 'colour' is not an access key"),
    (["set", "old"], "nothing to change"),
])
def test_bad_flags_are_one_line_exit_2_file_untouched(tmp_path: Path, args: list[str], words: str) -> None:
    cfg = tmp_path / "vpnoffload.toml"
    cfg.write_text(CONFIG + '\n[services.old]\nlisten = "81"\ntarget = "81"\n')
    before = cfg.read_bytes()
    result = run(cfg, "service", *args)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert cfg.read_bytes() == before


# ------------------------------------------------------------------ prefix files


def test_prefix_files_comments_normalisation_and_both_families(tmp_path: Path) -> None:
    data = b"# a country\n198.51.100.0/24\n198.51.100.128/25  # inside the one above\n\n2001:db8::/32\n192.0.2.9\n"
    spans = access.parse_lines(data, "f")
    assert access.normalise(spans, 4) == ["192.0.2.9/32", "198.51.100.0/24"]
    assert access.normalise(spans, 6) == ["2001:db8::/32"]


@pytest.mark.parametrize("line,words", [(b"198.51.100.1/24", "host bits"), (b"nonsense", "is not an IPv4"),
                                        (b"10.0.0.0/33", "bad prefix length"), (b"\xff", "not ASCII text")])
def test_a_bad_line_names_the_file_and_line(line: bytes, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        access.parse_lines(b"# ok\n10.0.0.0/8\n" + line + b"\n", "services.web.deny_file (/x)")
    assert "services.web.deny_file (/x)" in str(err.value) and "line 3" in str(err.value) and words in str(err.value)


# ------------------------------------------------------------------ the rules as data


def restricted_config(tmp_path: Path, deny_lines: str = "203.0.113.128/25\n") -> Any:
    deny = tmp_path / "deny.txt"
    deny.write_text(deny_lines)
    return parse(doc(web={**WEB, "deny": ["192.0.2.7/32"], "deny_file": str(deny), "rate": "10/s", "max_conns": 20},
                     ssh={**SSH, "allow": ["192.0.2.0/24"]},
                     free={"listen": "8080", "target": "8080"},
                     web6={"listen": "[2001:db8:1::80]:80", "target": "8080", "allow": ["2001:db8:2::/48"],
                           "max_conns": 5}))


def test_each_restricted_service_gets_its_chain_entered_from_forward_and_the_page(tmp_path: Path) -> None:
    rs = vps_ruleset(restricted_config(tmp_path))
    fwd = [r.text for r in rs.rules_of("filter", "VPNOFFLOAD-FWD")]
    assert fwd[1:3] == ["-m conntrack --ctstate NEW -m connmark --mark 0x100000/0xff00000 -j VPNOFFLOAD-ACL1",
                        "-m conntrack --ctstate NEW -m connmark --mark 0x200000/0xff00000 -j VPNOFFLOAD-ACL2"]
    # Only web serves the friendly page: only its chain is entered from INPUT.
    assert [r.text for r in rs.rules_of("filter", "VPNOFFLOAD-IN") if "ACL" in r.text] == [
        "-m conntrack --ctstate NEW -m connmark --mark 0x100000/0xff00000 -j VPNOFFLOAD-ACL1"]
    acl1 = [r.text for r in rs.rules_of("filter", "VPNOFFLOAD-ACL1")]
    assert acl1[0] == "-i vpnoffload-pb -j RETURN"  # the watchdog's forward check is never limited
    assert acl1[1].startswith("-m set --match-set vpnoffload-1-d4-") and acl1[1].endswith(" src -j DROP")
    assert acl1[2].startswith("-m hashlimit --hashlimit-above 10/sec --hashlimit-burst 5 --hashlimit-mode srcip "
                              "--hashlimit-name vpnoffload-1r --hashlimit-htable-size 4096 --hashlimit-htable-max 65536")
    assert acl1[3:] == ["-m connlimit --connlimit-above 20 --connlimit-mask 32 --connlimit-saddr -j DROP", "-j RETURN"]
    acl2 = [r.text for r in rs.rules_of("filter", "VPNOFFLOAD-ACL2")]
    assert acl2[1].startswith("-m set ! --match-set vpnoffload-2-a4-")
    assert ("filter", "VPNOFFLOAD-ACL3") not in rs.chains  # "free" has no rules
    acl4 = [r.text for r in rs.rules_of("filter6", "VPNOFFLOAD-ACL4")]
    assert acl4[0].startswith("-m set ! --match-set vpnoffload-4-a6-")  # no probe in IPv6
    assert "--connlimit-mask 128" in acl4[1]
    assert sorted(s.name[:16] for s in rs.sets) == ["vpnoffload-1-d4-", "vpnoffload-2-a4-", "vpnoffload-4-a6-"]


def test_a_set_is_named_after_its_content(tmp_path: Path) -> None:
    first = vps_ruleset(restricted_config(tmp_path))
    again = vps_ruleset(restricted_config(tmp_path))
    changed = vps_ruleset(restricted_config(tmp_path, "203.0.113.0/25\n"))
    assert first == again and first != changed
    assert first.set_names("filter")[0] != changed.set_names("filter")[0]
    web = next(s for s in first.sets if s.name.startswith("vpnoffload-1-"))
    assert web.elements() == ["192.0.2.7/32", "203.0.113.128/25"]
    assert "1 inline prefix(es) + 1 prefix line(s) of" in web.describe()


def test_rules_of_an_access_chain_round_trip_through_nft(tmp_path: Path) -> None:
    rs = vps_ruleset(restricted_config(tmp_path))
    for rule in rs.rules:
        exprs = to_nft(rule)
        if access.chain_number(rule.chain) and rule.target == "DROP":
            assert {"counter": None} in exprs
        # An anonymous counter is ignored when read (it comes back with its numbers); a named
        # one is one of the VPS's counts and reads back as the rule's -m recent.
        kept = [e for e in exprs if "counter" not in e or isinstance(e["counter"], str)]
        assert from_nft(rule.table, rule.chain, kept) == rule


def test_nft_translations_of_the_access_rules() -> None:
    from vpnoffload.firewall.rules import Rule

    rate = to_nft(Rule("filter", "VPNOFFLOAD-ACL3", (*access.hashlimit_args(10, 5, 3), "-j", "DROP")))
    assert rate[0] == {"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}},
                               "set": "@vpnoffload-3r",
                               "stmt": [{"limit": {"rate": 10, "burst": 5, "per": "second", "inv": True}}]}}
    conns = to_nft(Rule("filter6", "VPNOFFLOAD-ACL3", (*access.connlimit_args(4, 6), "-j", "DROP")))
    assert conns[0]["set"]["stmt"] == [{"ct count": {"val": 4, "inv": True}}] and conns[0]["set"]["set"] == "@vpnoffload-3c"
    from vpnoffload.errors import BackendError

    with pytest.raises(BackendError, match="outside an access chain"):
        to_nft(Rule("filter", "VPNOFFLOAD-FWD", (*access.connlimit_args(4, 4), "-j", "DROP")))
    with pytest.raises(BackendError, match="not as vpnoffload writes it"):
        to_nft(Rule("filter", "VPNOFFLOAD-ACL3", ("-m", "hashlimit", "--hashlimit-upto", "1/sec", "-j", "DROP")))


# ------------------------------------------------------------------ the nft backend's sets


def test_nft_sets_are_made_filled_and_removed_in_the_rules_transaction(tmp_path: Path) -> None:
    fake = FakeNft()
    backend = NftBackend(run=fake)
    first = vps_ruleset(restricted_config(tmp_path))
    plan_mod.apply(plan(backend, first))
    assert plan(backend, first) == []  # read back tersely, equal: nothing to do
    table = fake.tables[("ip", "vpnoffload")]
    web_set = next(n for n in table["sets"] if n.startswith("vpnoffload-1-d4-"))
    assert table["sets"][web_set]["elem"] == [{"prefix": {"addr": "192.0.2.7", "len": 32}},
                                             {"prefix": {"addr": "203.0.113.128", "len": 25}}]
    assert {"vpnoffload-1r", "vpnoffload-1c"} <= set(table["sets"])
    assert table["sets"]["vpnoffload-1r"]["set"]["timeout"] == 10

    changed = vps_ruleset(restricted_config(tmp_path, "203.0.113.0/25\n"))
    plan_mod.apply(plan(backend, changed))
    filter_batch = fake.batches[-1]
    verbs = [(next(iter(c)), next(iter(next(iter(c.values()))))) for c in filter_batch]
    assert ("delete", "set") in verbs and ("add", "set") in verbs  # one transaction: new list in, old out
    assert any(c.get("add", {}).get("set", {}).get("elem") for c in filter_batch)  # filled as it is made
    assert web_set not in fake.tables[("ip", "vpnoffload")]["sets"]

    plan_mod.apply(plan(backend, Ruleset()))
    assert fake.tables == {}  # down: tables, chains and sets gone


def test_an_unchanged_set_is_left_alone(tmp_path: Path) -> None:
    rs = vps_ruleset(restricted_config(tmp_path)).table("filter")
    names = {*rs.set_names("filter"), "vpnoffload-1r", "vpnoffload-1c"}
    cmds = batch(Snapshot("ip", True, {}, Ruleset(), names), "filter", rs)
    assert not [c for c in cmds if "set" in next(iter(c.values())) or "element" in next(iter(c.values()))]


# ------------------------------------------------------------------ the legacy backend's ipsets


def test_ipset_restore_script_sizes_the_set_to_its_list(tmp_path: Path) -> None:
    rs = vps_ruleset(restricted_config(tmp_path))
    script = ipset.restore_script(list(rs.sets)).splitlines()
    web = next(s for s in rs.sets if s.name.startswith("vpnoffload-1-"))
    assert f"create {web.name} hash:net family inet hashsize 16384 maxelem 65536" in script
    assert f"add {web.name} 203.0.113.128/25" in script
    assert any(line.endswith("hash:net family inet6 hashsize 16384 maxelem 65536") for line in script)
    assert ipset.unused({web.name, "vpnoffload-9-a6-0123456789", "other"}, [], 4) == [web.name]


# ------------------------------------------------------------------ counters


SAVE = """*filter
:VPNOFFLOAD-ACL1 - [0:0]
[0:0] -A VPNOFFLOAD-ACL1 -i vpnoffload-pb -j RETURN
[12:720] -A VPNOFFLOAD-ACL1 -m set --match-set vpnoffload-1-d4-0123456789 src -j DROP
[85:5100] -A VPNOFFLOAD-ACL1 -m hashlimit --hashlimit-above 10/sec --hashlimit-name vpnoffload-1r -j DROP
[3:180] -A VPNOFFLOAD-ACL2 -m set ! --match-set vpnoffload-2-a4-0123456789 src -j DROP
[1:60] -A VPNOFFLOAD-ACL2 -m connlimit --connlimit-above 3 --connlimit-mask 32 --connlimit-saddr -j DROP
[9:9] -A VPNOFFLOAD-FWD -j DROP
COMMIT
"""


def test_drop_counters_from_iptables_save() -> None:
    assert accessdrops.parse_save(SAVE) == {1: {"deny": 12, "rate": 85}, 2: {"allow": 3, "max_conns": 1}}


def test_drop_counters_from_the_nft_listing(tmp_path: Path) -> None:
    rs = vps_ruleset(restricted_config(tmp_path))
    rules = []
    for rule in rs.rules_of("filter", "VPNOFFLOAD-ACL1"):
        exprs = [{"counter": {"packets": 7, "bytes": 420}} if e == {"counter": None} else e for e in to_nft(rule)]
        rules.append({"rule": {"family": "ip", "table": "vpnoffload", "chain": rule.chain, "expr": exprs}})
    text = json.dumps({"nftables": [{"metainfo": {}}, *rules]})
    assert accessdrops.parse_nft(text) == {1: {"deny": 7, "rate": 7, "max_conns": 7}}


def test_counters_shown_in_status_and_metrics() -> None:
    assert accessdrops.render("web", {"deny": 12, "rate": 85}) == (
        "access of web: dropped 12 by deny, 85 by rate (new connections, since the rules were last written)")
    assert "unreadable" in accessdrops.render("web", None)
    lines = accessdrops.metrics({"web": {"deny": 12}})
    assert 'vpnoffload_access_dropped_total{service="web",rule="deny"} 12' in lines


def test_restricted_services_by_mark_number(tmp_path: Path) -> None:
    assert accessdrops.restricted(restricted_config(tmp_path)) == {1: "web", 2: "ssh", 4: "web6"}


def test_dry_run_names_the_sets_it_loads_and_removes(tmp_path: Path) -> None:
    backend = NftBackend(run=FakeNft())
    first = vps_ruleset(restricted_config(tmp_path))
    lines = [a.summary for a in plan(backend, first)]
    assert any(line.startswith("iptables filter: load set vpnoffload-1-d4-") and "1 prefix line(s) of" in line
               for line in lines), lines
    plan_mod.apply(plan(backend, first))
    lines = [a.summary for a in plan(backend, vps_ruleset(restricted_config(tmp_path, "192.0.2.128/25\n")))]
    assert any(line.startswith("iptables filter: remove set vpnoffload-1-d4-") for line in lines), lines


# ------------------------------------------------------------------ merged intervals (the nft backend's sets)


def _prefixes_in(block: str) -> list[str]:
    """Every prefix inside ``block`` (itself included): 15 for a /29."""
    net = ip_network(block)
    return [str(sub) for length in range(net.prefixlen, net.max_prefixlen + 1) for sub in net.subnets(new_prefix=length)]


def _addresses_of_elements(version: int, text: str) -> set[int]:
    """The addresses nft would put in the set for an elements_json() array."""
    out: set[int] = set()
    for element in json.loads(text):
        if "prefix" in element:
            net = ip_network(f"{element['prefix']['addr']}/{element['prefix']['len']}")
            assert net.version == version
            out |= set(range(int(net.network_address), int(net.broadcast_address) + 1))
        else:
            first, last = (int(ip_address(a)) for a in element["range"])
            assert first < last and ip_address(element["range"][0]).version == version
            # A range is never a prefix: that one is written as a prefix.
            count = last - first + 1
            assert count & (count - 1) or first % count
            out |= set(range(first, last + 1))
    return out


@pytest.mark.parametrize("block", ["192.0.2.0/29", "255.255.255.248/29", "2001:db8::/125",
                                   "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff8/125", "0.0.0.0/29"])
def test_merge_keeps_exactly_the_addresses_of_every_combination_of_prefixes(block: str) -> None:
    # Every subset of the 15 prefixes of a /29 (32 768 lists): adjacent, nested, overlapping
    # and duplicate prefixes, at the bottom and the top of the address space.
    prefixes = _prefixes_in(block)
    spans = [access.span(p) for p in prefixes]
    addresses = [set(range(s[1], s[2] + 1)) for s in spans]
    version = spans[0][0]
    for mask in range(1 << len(prefixes)):
        chosen = [i for i in range(len(prefixes)) if mask >> i & 1]
        intervals = access.merge([spans[i] for i in chosen], version)
        wanted: set[int] = set().union(*(addresses[i] for i in chosen))
        got = {a for first, last in intervals for a in range(first, last + 1)}
        assert got == wanted, (block, [prefixes[i] for i in chosen], intervals)
        # The fewest intervals: sorted, neither overlapping nor touching.
        assert all(b[0] > a[1] + 1 for a, b in zip(intervals, intervals[1:])), intervals
        assert all(first <= last for first, last in intervals)
        if mask % 97 == 0:  # the JSON text of a sample of them (all of it takes seconds)
            assert _addresses_of_elements(version, elements_json(version, intervals)) == wanted


def test_merge_takes_one_family_and_keeps_the_whole_space() -> None:
    spans = [access.span(p) for p in ("0.0.0.0/1", "128.0.0.0/1", "::/0", "2001:db8::1")]
    assert access.merge(spans, 4) == [(0, 2**32 - 1)]
    assert access.merge(spans, 6) == [(0, 2**128 - 1)]
    assert access.merge([], 4) == []
    assert json.loads(elements_json(4, access.merge(spans, 4))) == [{"prefix": {"addr": "0.0.0.0", "len": 0}}]
    assert json.loads(elements_json(6, [(1, 1), (2, 4)])) == [{"prefix": {"addr": "::1", "len": 128}},
                                                              {"range": ["::2", "::4"]}]


def test_the_nft_set_gets_merged_intervals_and_ipset_the_prefixes(tmp_path: Path) -> None:
    (tmp_path / "deny.txt").write_text("198.51.100.0/25\n198.51.100.128/25\n203.0.113.0/31\n203.0.113.2\n")
    config = parse({"vps": {"address": "203.0.113.10"}, "homes": {"home": {"address": "10.88.0.2"}},
                    "services": {"web": {"listen": "80", "target": "8080", "deny_file": str(tmp_path / "deny.txt")}}})
    (deny,) = vps_ruleset(config).sets
    assert deny.elements() == ["198.51.100.0/25", "198.51.100.128/25", "203.0.113.0/31", "203.0.113.2/32"]
    fake = FakeNft()
    plan_mod.apply(plan(NftBackend(run=fake), vps_ruleset(config)))
    assert fake.tables[("ip", "vpnoffload")]["sets"][deny.name]["elem"] == [
        {"prefix": {"addr": "198.51.100.0", "len": 24}}, {"range": ["203.0.113.0", "203.0.113.2"]}]


def test_dumps_splices_raw_json_in_place() -> None:
    cmds = [{"add": {"set": {"name": "a", "elem": RawJSON('[{"range":["::1","::2"]}]')}}},
            {"add": {"set": {"name": "b\u0000raw0", "elem": RawJSON("[]")}}}]
    assert json.loads(dumps(cmds)) == {"nftables": [{"add": {"set": {"name": "a", "elem": [{"range": ["::1", "::2"]}]}}},
                                                    {"add": {"set": {"name": "b\u0000raw0", "elem": []}}}]}
    with pytest.raises(TypeError):
        dumps([{"x": object()}])
