"""Firewall rules as data, and plans computed against an in-memory firewall (no root)."""

from __future__ import annotations

import fcntl
import os
from ipaddress import IPv4Address, IPv4Network

import pytest

from tests.fakes import FakeBackend
from vpnoffload.proc import Result
from vpnoffload import firewall as fw
from vpnoffload.firewall import iptc as iptc_backend
from vpnoffload.firewall import xtables
from vpnoffload.errors import ApplyError, BackendError, ConfigError
from vpnoffload.model import Config, Home, Service, Tunnel, Vps
from vpnoffload.plan import apply, summaries


def config() -> Config:
    return Config(
        vps=Vps(IPv4Address("203.0.113.10")),
        tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
        homes={
            "home": Home("home", IPv4Address("198.51.100.2")),
            "attic": Home("attic", IPv4Address("198.51.100.3")),
        },
        services={
            "web": Service("web", IPv4Address("203.0.113.10"), 80, "home", 8080, fallback="page"),
            "dns": Service("dns", IPv4Address("203.0.113.11"), 53, "home", 5353, proto="udp"),
            "git": Service("git", IPv4Address("203.0.113.10"), 22, "attic", 2222),
        },
    )


FWD_HEAD = "-A VPNOFFLOAD-FWD -m conntrack --ctstate RELATED,ESTABLISHED -m connmark ! --mark 0x0/0xff00000 -j ACCEPT"
WEB_FWD = (
    "-A VPNOFFLOAD-FWD -d 198.51.100.2/32 -o vpnoffload0 -p tcp -m tcp --dport 8080"
    " -m conntrack --ctstate DNAT -m connmark --mark 0x100000/0xff00000"
)
DNS_FWD = (
    "-A VPNOFFLOAD-FWD -d 198.51.100.2/32 -o vpnoffload0 -p udp -m udp --dport 5353"
    " -m conntrack --ctstate DNAT -m connmark --mark 0x200000/0xff00000"
)
GIT_FWD = (
    "-A VPNOFFLOAD-FWD -d 198.51.100.3/32 -o vpnoffload0 -p tcp -m tcp --dport 2222"
    " -m conntrack --ctstate DNAT -m connmark --mark 0x300000/0xff00000"
)
VPS_FILTER_TAIL = [
    # The watchdog's forward check from the probe namespace (issue 13), straight to a home's tunnel address.
    "-A VPNOFFLOAD-FWD -s 198.18.255.254/32 -i vpnoffload-pb -o vpnoffload0 -j ACCEPT",
    "-A VPNOFFLOAD-FWD -d 198.18.255.254/32 -i vpnoffload0 -o vpnoffload-pb -m conntrack --ctstate RELATED,ESTABLISHED"
    " -j ACCEPT",
    "-A VPNOFFLOAD-FWD -o vpnoffload0 -j DROP",
    "-A VPNOFFLOAD-FWD -i vpnoffload0 -j DROP",
    "-A VPNOFFLOAD-FWD -j RETURN",
]
VPS_INPUT = [
    ":VPNOFFLOAD-IN",
    "-A INPUT -j VPNOFFLOAD-IN",
    "-A VPNOFFLOAD-IN -p tcp -m tcp --dport 503 -m conntrack --ctstate DNAT -j ACCEPT",
    "-A VPNOFFLOAD-IN -p tcp -m tcp --dport 504 -m conntrack --ctstate DNAT -j ACCEPT",
    "-A VPNOFFLOAD-IN -p tcp -m tcp --dport 503 -j DROP",
    "-A VPNOFFLOAD-IN -p tcp -m tcp --dport 504 -j DROP",
    "-A VPNOFFLOAD-IN -i vpnoffload0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A VPNOFFLOAD-IN -i vpnoffload0 -j DROP",
    "-A VPNOFFLOAD-IN -j RETURN",
]
VPS_NAT = [
    "*nat",
    ":VPNOFFLOAD-DNAT",
    "-A PREROUTING ! -i vpnoffload0 -j VPNOFFLOAD-DNAT",
    "-A VPNOFFLOAD-DNAT -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j CONNMARK --set-xmark 0x100000/0xff00000",
    "-A VPNOFFLOAD-DNAT -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.51.100.2:8080",
    "-A VPNOFFLOAD-DNAT -d 203.0.113.11/32 -p udp -m udp --dport 53 -j CONNMARK --set-xmark 0x200000/0xff00000",
    "-A VPNOFFLOAD-DNAT -d 203.0.113.11/32 -p udp -m udp --dport 53 -j DNAT --to-destination 198.51.100.2:5353",
    "-A VPNOFFLOAD-DNAT -d 203.0.113.10/32 -p tcp -m tcp --dport 22 -j CONNMARK --set-xmark 0x300000/0xff00000",
    "-A VPNOFFLOAD-DNAT -d 203.0.113.10/32 -p tcp -m tcp --dport 22 -j DNAT --to-destination 198.51.100.3:2222",
]


def foreign_firewall() -> FakeBackend:
    """A firewall with other people's rules and chains, which we must never touch."""
    return FakeBackend(
        tables={
            "filter": {
                "FORWARD": [("-s", "192.0.2.0/24", "-j", "ACCEPT")],
                "INPUT": [("-i", "lo", "-j", "ACCEPT"), ("-j", "FOREIGN")],
                "FOREIGN": [("-p", "tcp", "-m", "tcp", "--dport", "22", "-j", "ACCEPT")],
            },
            "nat": {"POSTROUTING": [("-s", "192.0.2.0/24", "-j", "MASQUERADE")]},
        }
    )


# --------------------------------------------------------------------------
# Desired state


RECENT = "--mask 255.255.255.255"
#: The watchdog's counts (lean/counters.py): from each home (filter), to it (mangle POSTROUTING), and the
#: resets from a home on each DNATed TCP service's connections (web: mark 1, git: mark 3).
VPS_EVIDENCE = [
    ":VPNOFFLOAD-EVIN",
    "-A FORWARD -i vpnoffload0 -j VPNOFFLOAD-EVIN",
    "-A INPUT -i vpnoffload0 -j VPNOFFLOAD-EVIN",
    f"-A VPNOFFLOAD-EVIN -s 198.51.100.2/32 -m recent --set --name vpnoffload-in1 {RECENT} --rsource",
    "-A VPNOFFLOAD-EVIN -s 198.51.100.2/32 -p tcp -m tcp --tcp-flags RST RST -m connmark --mark 0x100000/0xff00000"
    f" -m recent --set --name vpnoffload-rst1-1 {RECENT} --rsource",
    f"-A VPNOFFLOAD-EVIN -s 198.51.100.3/32 -m recent --set --name vpnoffload-in2 {RECENT} --rsource",
    "-A VPNOFFLOAD-EVIN -s 198.51.100.3/32 -p tcp -m tcp --tcp-flags RST RST -m connmark --mark 0x300000/0xff00000"
    f" -m recent --set --name vpnoffload-rst3-2 {RECENT} --rsource",
    # mangle: what really leaves for home, after every verdict
    ":VPNOFFLOAD-EVOUT",
    "-A POSTROUTING -o vpnoffload0 -j VPNOFFLOAD-EVOUT",
    f"-A VPNOFFLOAD-EVOUT -d 198.51.100.2/32 -m recent --set --name vpnoffload-out1 {RECENT} --rdest",
    f"-A VPNOFFLOAD-EVOUT -d 198.51.100.3/32 -m recent --set --name vpnoffload-out2 {RECENT} --rdest",
]


def test_vps_ruleset_is_exactly_this() -> None:
    lines = fw.vps_ruleset(config()).lines()
    assert [x for x in lines if "VPNOFFLOAD-IN" in x] == VPS_INPUT
    assert [x for x in lines if "VPNOFFLOAD-EV" in x] == VPS_EVIDENCE
    assert [x for x in lines if "VPNOFFLOAD-IN" not in x and "VPNOFFLOAD-EV" not in x] == [
        "*filter",
        ":VPNOFFLOAD-FWD",
        "-A FORWARD -j VPNOFFLOAD-FWD",
        FWD_HEAD,
        WEB_FWD + " -j ACCEPT",
        DNS_FWD + " -j ACCEPT",
        GIT_FWD + " -j ACCEPT",
        *VPS_FILTER_TAIL,
        "*mangle",
        *VPS_NAT,
    ]


def test_vps_ruleset_fallback_page_for_web_fast_refusal_for_others() -> None:
    lines = fw.vps_ruleset(config(), fallback=frozenset({"web", "dns", "git"})).lines()
    # web: new connections go to the friendly-page server on the VPS
    page = "-A VPNOFFLOAD-DNAT -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 203.0.113.10:503"
    assert page in lines and VPS_NAT[4] not in lines
    # others: refused at once instead of hanging on a dead home
    assert DNS_FWD + " -j REJECT --reject-with icmp-port-unreachable" in lines
    assert GIT_FWD + " -j REJECT --reject-with tcp-reset" in lines
    assert [x for x in lines if x.startswith("-A VPNOFFLOAD-DNAT") and "203.0.113.10:503" not in x] == \
        [x for x in VPS_NAT[3:] if x != VPS_NAT[4]]


def test_vps_ruleset_refuses_unknown_fallback_names() -> None:
    with pytest.raises(ConfigError, match="no service named 'mail'"):
        fw.vps_ruleset(config(), fallback=frozenset({"mail"}))


def test_vps_ruleset_never_masquerades() -> None:
    text = "\n".join(fw.vps_ruleset(config()).lines())
    assert "MASQUERADE" not in text and "SNAT" not in text
    # POSTROUTING only counts (mangle, the passive evidence): no nat rule there
    nat = fw.vps_ruleset(config()).table("nat")
    assert not any(r.chain == "POSTROUTING" for r in nat.rules)


def test_home_ruleset_is_exactly_this() -> None:
    assert fw.home_ruleset(config(), "home").lines() == [
        "*filter",
        ":VPNOFFLOAD-FWD",
        ":VPNOFFLOAD-IN",
        "-A FORWARD -i vpnoffload0 -j VPNOFFLOAD-FWD",
        "-A INPUT -i vpnoffload0 -j VPNOFFLOAD-IN",
        # forwarded on only what the home box itself DNATs from a target port (a container's)
        "-A VPNOFFLOAD-FWD -p tcp -m conntrack --ctstate DNAT --ctorigdst 198.51.100.2 --ctorigdstport 8080 -j ACCEPT",
        "-A VPNOFFLOAD-FWD -p udp -m conntrack --ctstate DNAT --ctorigdst 198.51.100.2 --ctorigdstport 5353 -j ACCEPT",
        "-A VPNOFFLOAD-FWD -j DROP",
        "-A VPNOFFLOAD-IN -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A VPNOFFLOAD-IN -d 198.51.100.2/32 -p tcp -m tcp --dport 8080 -j ACCEPT",
        "-A VPNOFFLOAD-IN -d 198.51.100.2/32 -p udp -m udp --dport 5353 -j ACCEPT",
        "-A VPNOFFLOAD-IN -p icmp -m icmp --icmp-type 8 -j ACCEPT",
        "-A VPNOFFLOAD-IN -j DROP",
        # connections from the tunnel are marked; their packets from elsewhere get the mark back
        "*mangle",
        ":VPNOFFLOAD-MARK",
        "-A PREROUTING -j VPNOFFLOAD-MARK",
        "-A VPNOFFLOAD-MARK -i vpnoffload0 -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x20000000/0xe0000000",
        "-A VPNOFFLOAD-MARK ! -i vpnoffload0 -m connmark --mark 0x20000000/0xe0000000 -j MARK --set-xmark 0x20000000/0xe0000000",
    ]


def test_home_ruleset_only_opens_that_homes_ports() -> None:
    lines = fw.home_ruleset(config(), "attic").lines()
    assert "-A VPNOFFLOAD-IN -d 198.51.100.3/32 -p tcp -m tcp --dport 2222 -j ACCEPT" in lines
    assert not any("8080" in x or "5353" in x for x in lines)


def test_home_ruleset_of_unknown_home_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no home named 'garage'"):
        fw.home_ruleset(config(), "garage")


def test_service_marks_are_index_based_under_the_mask() -> None:
    c = config()
    assert fw.service_mark(c, "web") == (0x100000, 0xFF00000)
    assert fw.service_mark(c, "git") == (0x300000, 0xFF00000)
    with pytest.raises(ConfigError, match="no service named \'nope\'"):
        fw.service_mark(c, "nope")


def test_empty_ruleset_is_empty() -> None:
    assert fw.empty_ruleset().is_empty() and fw.empty_ruleset().lines() == []


def test_ruleset_equality_ignores_build_order_but_not_rule_order() -> None:
    a = fw.Rule("filter", "VPNOFFLOAD-X", ("-j", "ACCEPT"))
    b = fw.Rule("filter", "VPNOFFLOAD-X", ("-j", "DROP"))
    jump = fw.Rule("filter", "INPUT", ("-j", "VPNOFFLOAD-X"))
    chains = frozenset({("filter", "VPNOFFLOAD-X")})
    assert fw.Ruleset(chains, (a, jump, b)) == fw.Ruleset(chains, (jump, a, b))
    assert fw.Ruleset(chains, (a, b)) != fw.Ruleset(chains, (b, a))


def test_ruleset_refuses_rules_it_could_not_recognise_as_its_own() -> None:
    with pytest.raises(ValueError, match="must jump to one of ours"):
        fw.Ruleset(frozenset(), (fw.Rule("filter", "INPUT", ("-j", "ACCEPT")),))
    with pytest.raises(ValueError, match="not in the ruleset"):
        fw.Ruleset(frozenset(), (fw.Rule("filter", "VPNOFFLOAD-X", ("-j", "ACCEPT")),))
    with pytest.raises(ValueError, match="not named"):
        fw.Ruleset(frozenset({("filter", "MINE")}))


def test_rule_target() -> None:
    assert fw.Rule("nat", "X", ("-p", "tcp", "-j", "DNAT", "--to-destination", "1")).target == "DNAT"
    assert fw.Rule("nat", "X", ("-g", "VPNOFFLOAD-A",)).target == "VPNOFFLOAD-A"
    assert fw.Rule("nat", "X", ("-p", "tcp")).target is None


# --------------------------------------------------------------------------
# Plans against the fake backend


def test_first_plan_describes_each_change_then_commits_per_table() -> None:
    backend = FakeBackend()
    lines = summaries(fw.plan(backend, fw.home_ruleset(config(), "attic")))
    assert lines == [
        "iptables filter: create chain VPNOFFLOAD-FWD",
        "iptables filter: create chain VPNOFFLOAD-IN",
        "iptables filter VPNOFFLOAD-FWD: -p tcp -m conntrack --ctstate DNAT --ctorigdst 198.51.100.3 --ctorigdstport 2222 -j ACCEPT",
        "iptables filter VPNOFFLOAD-FWD: -j DROP",
        "iptables filter VPNOFFLOAD-IN: -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "iptables filter VPNOFFLOAD-IN: -d 198.51.100.3/32 -p tcp -m tcp --dport 2222 -j ACCEPT",
        "iptables filter VPNOFFLOAD-IN: -p icmp -m icmp --icmp-type 8 -j ACCEPT",
        "iptables filter VPNOFFLOAD-IN: -j DROP",
        "iptables filter FORWARD: -i vpnoffload0 -j VPNOFFLOAD-FWD",
        "iptables filter INPUT: -i vpnoffload0 -j VPNOFFLOAD-IN",
        "iptables filter: commit the 10 change(s) above in one step",
        "iptables mangle: create chain VPNOFFLOAD-MARK",
        "iptables mangle VPNOFFLOAD-MARK: -i vpnoffload0 -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x20000000/0xe0000000",
        "iptables mangle VPNOFFLOAD-MARK: ! -i vpnoffload0 -m connmark --mark 0x20000000/0xe0000000 -j MARK --set-xmark 0x20000000/0xe0000000",
        "iptables mangle PREROUTING: -j VPNOFFLOAD-MARK",
        "iptables mangle: commit the 4 change(s) above in one step",
    ]
    assert backend.writes == []  # planning changes nothing


def test_apply_then_plan_again_is_empty() -> None:
    backend = foreign_firewall()
    desired = fw.vps_ruleset(config())
    actions = fw.plan(backend, desired)
    assert actions[-1].summary == "iptables mangle: commit the 4 change(s) above in one step"
    apply(actions)
    assert backend.writes == ["filter", "nat", "mangle"]  # the FORWARD guard before the DNAT
    assert backend.read() == desired
    assert fw.plan(backend, desired) == []


def test_jumps_go_first_and_foreign_rules_stay() -> None:
    backend = foreign_firewall()
    apply(fw.plan(backend, fw.vps_ruleset(config())))
    assert backend.tables["filter"]["FORWARD"] == [
        ("-i", "vpnoffload0", "-j", "VPNOFFLOAD-EVIN"), ("-j", "VPNOFFLOAD-FWD"), ("-s", "192.0.2.0/24", "-j", "ACCEPT")]
    assert backend.tables["filter"]["FOREIGN"] == foreign_firewall().tables["filter"]["FOREIGN"]
    assert backend.tables["nat"]["POSTROUTING"] == [("-s", "192.0.2.0/24", "-j", "MASQUERADE")]


def test_plan_to_empty_removes_only_ours() -> None:
    backend = foreign_firewall()
    before = backend.dump()
    apply(fw.plan(backend, fw.vps_ruleset(config())))
    actions = fw.plan(backend, fw.empty_ruleset())
    assert [a.summary for a in actions if "commit" in a.summary] == [
        "iptables mangle: commit the 2 change(s) above in one step",  # the count of what leaves
        "iptables nat: commit the 2 change(s) above in one step",  # the DNAT before its guard
        "iptables filter: commit the 7 change(s) above in one step",
    ]
    assert "iptables nat: delete chain VPNOFFLOAD-DNAT and its 6 rule(s)" in summaries(actions)
    apply(actions)
    assert backend.dump() == before
    assert fw.plan(backend, fw.empty_ruleset()) == []


def test_changing_one_service_changes_only_its_rules() -> None:
    backend = FakeBackend()
    apply(fw.plan(backend, fw.vps_ruleset(config())))
    lines = summaries(fw.plan(backend, fw.vps_ruleset(config(), fallback=frozenset({"git"}))))
    assert lines == [
        f"iptables filter VPNOFFLOAD-FWD: delete {GIT_FWD[len('-A VPNOFFLOAD-FWD '):]} -j ACCEPT",
        f"iptables filter VPNOFFLOAD-FWD: {GIT_FWD[len('-A VPNOFFLOAD-FWD '):]} -j REJECT --reject-with tcp-reset",
        "iptables filter: commit the 2 change(s) above in one step",
    ]
    # A web service swaps its DNAT target to the page server: one nat commit, nothing in filter.
    lines = summaries(fw.plan(backend, fw.vps_ruleset(config(), fallback=frozenset({"web"}))))
    assert lines == [
        "iptables nat VPNOFFLOAD-DNAT: delete -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.51.100.2:8080",
        "iptables nat VPNOFFLOAD-DNAT: -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 203.0.113.10:503",
        "iptables nat: commit the 2 change(s) above in one step",
    ]


def test_plan_repairs_what_someone_else_removed() -> None:
    backend = FakeBackend()
    desired = fw.vps_ruleset(config())
    apply(fw.plan(backend, desired))
    backend.tables["filter"]["FORWARD"].clear()
    assert summaries(fw.plan(backend, desired)) == [
        "iptables filter FORWARD: -i vpnoffload0 -j VPNOFFLOAD-EVIN",
        "iptables filter FORWARD: -j VPNOFFLOAD-FWD",
        "iptables filter: commit the 2 change(s) above in one step",
    ]


def test_switching_vps_to_home_rules_replaces_chains() -> None:
    backend = FakeBackend()
    apply(fw.plan(backend, fw.vps_ruleset(config())))
    desired = fw.home_ruleset(config(), "home")
    apply(fw.plan(backend, desired))
    assert backend.read() == desired


def test_failed_commit_rolls_back_the_tables_already_written() -> None:
    backend = foreign_firewall()
    backend.fail_tables.add("nat")
    before = backend.dump()
    with pytest.raises(ApplyError, match="iptables nat: commit .* failed: .*simulated failure; rolled back 1"):
        apply(fw.plan(backend, fw.vps_ruleset(config())))
    assert backend.writes == ["filter", "filter"]  # written, then written back
    assert backend.dump() == before


def test_undo_restores_the_previous_content_exactly() -> None:
    backend = foreign_firewall()
    old = fw.vps_ruleset(config())
    apply(fw.plan(backend, old))
    snapshot = backend.dump()
    commit = fw.plan(backend, fw.home_ruleset(config(), "home"))[-1]
    assert commit.undo is not None
    commit.do()
    commit.undo()
    assert backend.dump() == snapshot and backend.read() == old


def test_a_jump_into_our_chain_from_a_foreign_chain_is_ours_and_goes_on_down() -> None:
    backend = foreign_firewall()
    apply(fw.plan(backend, fw.vps_ruleset(config())))
    backend.tables["filter"]["FOREIGN"].append(("-j", "VPNOFFLOAD-FWD"))
    actions = fw.plan(backend, fw.empty_ruleset())
    assert "iptables filter FOREIGN: delete -j VPNOFFLOAD-FWD" in summaries(actions)
    apply(actions)
    assert backend.dump() == foreign_firewall().dump()


def test_fake_write_refuses_content_of_another_table() -> None:
    with pytest.raises(ValueError, match="has rules of other tables"):
        FakeBackend().write("nat", fw.vps_ruleset(config()))


# --------------------------------------------------------------------------
# The iptc backend's pieces that need no root (python-iptables is not imported)


def test_xtables_lock_waits_then_fails_clearly(tmp_path, monkeypatch) -> None:
    lock = tmp_path / "xtables.lock"
    monkeypatch.setenv("XTABLES_LOCKFILE", str(lock))
    assert xtables.lockfile_path() == str(lock)
    with xtables.xtables_lock(timeout=1):
        pass  # free: taken at once, and the file is made
    assert lock.exists()
    holder = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(BackendError, match=f"another program has held the xtables lock {lock} for 0.2 s"):
            with xtables.xtables_lock(timeout=0.2):
                pass
    finally:
        os.close(holder)
    with xtables.xtables_lock(timeout=1):
        pass


def test_xtables_lock_that_cannot_be_opened(tmp_path) -> None:
    with pytest.raises(BackendError, match="cannot open the lock"):
        with xtables.xtables_lock(path=str(tmp_path / "missing" / "lock")):
            pass


def test_lockfile_defaults_to_run(monkeypatch) -> None:
    monkeypatch.delenv("XTABLES_LOCKFILE", raising=False)
    assert xtables.lockfile_path() == "/run/xtables.lock"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("can't find target DNAT", "cannot load the DNAT target (are its kernel module and xtables extension available?)"),
        ("can't commit: b'Resource temporarily unavailable'", "can't commit: Resource temporarily unavailable (the table"),
        ("can't commit: b'No chain/target/match by that name.'", "by that name (is the kernel module"),
        ("can't initialize nat: b'Permission denied (you must be root)'", "(vpnoffload must run as root)"),
    ],
)
def test_python_iptables_messages_become_one_clear_line(raw: str, clean: str) -> None:
    message = iptc_backend._hint(iptc_backend._clean(Exception(raw)))
    assert clean in message and "b'" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("version", "warns"), [("iptables v1.8.9 (nf_tables)\n", True), ("iptables v1.8.9 (legacy)\n", False)]
)
def test_nft_variant_note(monkeypatch, version: str, warns: bool) -> None:
    monkeypatch.setattr(xtables.shutil, "which", lambda name: "/usr/sbin/iptables")
    monkeypatch.setattr(xtables.proc, "run", lambda argv, **k: Result(tuple(argv), 0, version, ""))
    note = xtables.nft_variant_note()
    assert (note is not None) == warns
    if note:
        assert "iptables-legacy-save" in note


def test_nft_variant_note_without_iptables(monkeypatch) -> None:
    monkeypatch.setattr(xtables.shutil, "which", lambda name: None)
    assert xtables.nft_variant_note() is None


def test_tables_outside_the_known_order_sort_last_by_name() -> None:
    from vpnoffload.firewall import planner
    from vpnoffload.firewall.rules import TABLES

    assert sorted(["zeta", *TABLES, "alpha"], key=planner._table_rank) == [*TABLES, "alpha", "zeta"]


def test_policy_refusals_name_their_field() -> None:
    """Each refusal is one line naming the config field (what the CLI prints for exit 2)."""
    from dataclasses import replace

    from vpnoffload.firewall import policy

    c = config()
    cases = [
        (lambda: fw.service_mark(c, "nope"), "services: no service named 'nope'"),
        (lambda: fw.vps_ruleset(c, fallback=frozenset({"nope"})), "services: no service named 'nope'"),
        (lambda: fw.vps_ruleset(c, active={"web": "attic"}),
         "services.web.homes: 'attic' is not one of web's home boxes"),
        (lambda: fw.home_ruleset(c, "garage"), "homes: no home named 'garage'"),
    ]
    for call, text in cases:
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value) == text
    # The mark has room for MAX_SERVICES services: the last one fits, one more does not.
    many = {f"s{i}": Service(f"s{i}", IPv4Address("203.0.113.10"), 1000 + i, "home", 2000 + i)
            for i in range(policy.MAX_SERVICES + 1)}
    crowded = replace(c, services=many)
    assert fw.service_mark(crowded, f"s{policy.MAX_SERVICES - 1}")[0] == policy.MAX_SERVICES << policy.MARK_SHIFT
    with pytest.raises(ConfigError) as caught:
        fw.service_mark(crowded, f"s{policy.MAX_SERVICES}")
    assert str(caught.value) == f"services: at most {policy.MAX_SERVICES} services are supported"


def test_the_page_of_an_https_service_is_the_next_port() -> None:
    from dataclasses import replace
    from pathlib import Path

    from vpnoffload.firewall import policy

    c = config()
    web = c.services["web"]
    assert policy.fallback_address(c, web) == "203.0.113.10:503"
    tls = replace(web, listen_port=443, tls_cert=Path("/c.pem"), tls_key=Path("/k.pem"))
    assert tls.page_over_tls and policy.fallback_address(c, tls) == "203.0.113.10:504"


def test_a_scoped_plan_refuses_desired_rules_outside_its_scope() -> None:
    """The home box's tunnel slots plan only their own chains: desired rules of another
    chain are a programming error, said as such (mutmut's survivors of ``_within``)."""
    from vpnoffload.firewall import planner
    from vpnoffload.firewall.rules import Rule, Ruleset

    mine = lambda name: name.startswith("VPNOFFLOAD-HOME")  # noqa: E731
    inside = Ruleset(frozenset({("filter", "VPNOFFLOAD-HOME")}), (Rule("filter", "VPNOFFLOAD-HOME", ("-j", "ACCEPT")),))
    assert planner._within(Ruleset(), inside, mine) == inside
    outside = Ruleset(frozenset({("filter", "VPNOFFLOAD-HOME"), ("filter", "VPNOFFLOAD-VPS")}), inside.rules)
    with pytest.raises(ValueError, match="^the desired rules reach outside their scope$"):
        planner._within(Ruleset(), outside, mine)
