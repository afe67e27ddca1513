"""A running firewalld (issue 29): openings go through firewall-cmd, runtime only, as rich rules in the
zone of the inbound interface and the probe veth bound to ``trusted``; nothing where firewalld's
own base chains accept already (established, DNATed). No root: firewall-cmd is faked."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.unit.hostfwkit import CONFIG
from vpnoffload import config as cfg, record as record_mod, runfiles
from vpnoffload.firewall.host import firewalld as host_firewalld, nft as host_nft, plan as host_plan
from vpnoffload.firewall.host.openings import choose, home_openings, vps_openings
from vpnoffload.plan import apply
from tests.unit.hostfwkit import FakeFirewalld, firewalld_13, running_host


@pytest.fixture
def config():
    return cfg.parse_text(CONFIG, "test")


def test_detect_names_a_running_firewalld_and_manages_its_table() -> None:
    host = running_host()
    assert "firewalld (running)" in host.found()
    assert {c.manager for c in host.chains if c.table == "firewalld"} == {"firewalld"}
    assert host.zone_of("eth0") == "public" and host.zone_of("vpnoffload0") == "public"


def test_vps_opens_only_what_firewalld_would_refuse_through_its_own_mechanisms(config) -> None:
    places = choose(vps_openings(config, "eth0"), running_host(default="drop"))
    got = [(p.mechanism, p.chain, p.opening.why, p.where) for p in places]
    assert got == [
        ("firewalld", "public", "OpenVPN server", "firewalld zone public (runtime rich rule)"),
        ("firewalld", "trusted", "the watchdog's visitor-path check",
         "firewalld zone trusted (runtime interface vpnoffload-pb)"),
    ]  # DNATed services and pages, and every reply, pass firewalld's own ct accepts
    assert host_firewalld.rich_rule(places[0].opening) == (
        'rule family="ipv4" destination address="203.0.113.10" port port="1194" protocol="udp" accept')


def test_home_services_open_in_the_zone_of_the_tunnel_device(config) -> None:
    host = running_host(zones=(("eth0", "home"), ("vpnoffload0", "internal")))
    places = choose(home_openings(config, "home"), host)
    assert [(p.chain, host_firewalld.rich_rule(p.opening)) for p in places] == [
        ("internal", 'rule family="ipv4" destination address="198.51.100.2" port port="8080" protocol="tcp" accept'),
        ("internal", 'rule family="ipv4" destination address="198.51.100.2" port port="2222" protocol="tcp" accept'),
    ]


def test_ipv6_opening_is_an_ipv6_rich_rule() -> None:
    from vpnoffload.firewall.host.openings import Opening

    rule = host_firewalld.rich_rule(Opening("input", 6, "tcp", dport=8080, iif="vpnoffload0", daddr="fd00:88::2"))
    assert rule == 'rule family="ipv6" destination address="fd00:88::2" port port="8080" protocol="tcp" accept'


def _rec():
    return record_mod.Record()


def test_up_records_down_removes_exactly_and_never_touches_what_firewalld_had(config, monkeypatch) -> None:
    fake = FakeFirewalld()
    fake.rich["public"] = {'rule family="ipv4" destination address="203.0.113.10" port port="1194" protocol="udp" '
                           'accept'}  # the host's own: not ours
    monkeypatch.setattr(host_firewalld, "run", fake)
    monkeypatch.setattr(host_firewalld.shutil, "which", lambda name: "/usr/bin/" + name)
    before = copy.deepcopy((fake.rich, fake.interfaces))
    fw = host_plan.HostFirewall(reader=lambda: (running_host(), firewalld_13()))
    rec = _rec()
    apply(fw.plan_open(vps_openings(config, "eth0"), rec))
    assert [e["mechanism"] for e in rec.host_openings] == ["firewalld"]  # the binding; the rich rule was theirs
    assert fake.interfaces == {"trusted": {"vpnoffload-pb"}}
    assert fw.plan_open(vps_openings(config, "eth0"), rec) == []  # a second up finds nothing to do
    apply(fw.plan_close(rec))
    assert (fake.rich, fake.interfaces) == (before[0], {"trusted": set()}) and rec.host_openings == []
    assert not [a for a in fake.argvs if "--permanent" in a]


def test_reconcile_puts_back_what_a_reload_dropped_and_waits_out_a_restart(tmp_path: Path, config,
                                                                           monkeypatch) -> None:
    fake = FakeFirewalld()
    monkeypatch.setattr(host_firewalld, "run", fake)
    monkeypatch.setattr(host_firewalld.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(host_nft, "list_ruleset", firewalld_13)
    rec = _rec()
    apply(host_plan.HostFirewall(reader=lambda: (running_host(), firewalld_13())).plan_open(
        home_openings(config, "home"), rec))
    record_mod.save(tmp_path / runfiles.record("vps"), rec)
    lock = tmp_path / "lock"
    assert host_plan.reconcile(tmp_path, lock) == []
    fake.reload()
    assert [line.split(":")[0] for line in host_plan.reconcile(tmp_path, lock) or []] == [
        "reopened in firewalld zone public (runtime rich rule)"] * 2
    assert len(fake.rich["public"]) == 2
    fake.reload()
    fake.state = "not running"  # mid-restart: nothing of firewalld filters, nothing to put back yet
    assert host_plan.reconcile(tmp_path, lock) == []
    fake.state = "running"
    assert len(host_plan.reconcile(tmp_path, lock) or []) == 2


def test_a_failing_firewall_cmd_makes_the_watchdog_try_again(tmp_path: Path, config, monkeypatch) -> None:
    from vpnoffload.errors import BackendError

    rec = _rec()
    rec.host_openings = [host_plan.entry_of(p) for p in choose(home_openings(config, "home"), running_host())]
    record_mod.save(tmp_path / runfiles.record("vps"), rec)

    def broken(argv, **kwargs):
        raise BackendError("firewall-cmd: Error: INVALID_ZONE")

    monkeypatch.setattr(host_firewalld, "run", broken)
    monkeypatch.setattr(host_firewalld.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(host_nft, "list_ruleset", firewalld_13)
    with pytest.raises(host_plan.TryAgain, match="INVALID_ZONE"):
        host_plan.reconcile(tmp_path, tmp_path / "lock")
