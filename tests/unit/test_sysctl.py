"""sysctl plans on a fake /proc/sys tree: set only what differs, restore exactly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.prereq import BY_DESIGN
from vpnoffload import sysctl
from vpnoffload.errors import ApplyError, BackendError
from vpnoffload.plan import apply, summaries


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    values = {
        "net/ipv4/ip_forward": "0",
        "net/ipv4/conf/all/rp_filter": "1",
        "net/ipv4/conf/vpnoffload0/rp_filter": "1",
        "net/ipv4/conf/eth0.100/rp_filter": "0",
        "net/ipv4/ip_local_port_range": "32768\t60999",
    }
    for rel, value in values.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return tmp_path


def value(proc: Path, rel: str) -> str:
    return (proc / rel).read_text().strip()


def test_keys_map_to_paths_with_dotted_device_names(proc: Path):
    assert sysctl.conf_key("eth0.100", "rp_filter") == "net.ipv4.conf.eth0/100.rp_filter"
    assert sysctl.key_path("net.ipv4.conf.eth0/100.rp_filter", proc) == proc / "net/ipv4/conf/eth0.100/rp_filter"
    assert sysctl.read_sysctl("net.ipv4.ip_local_port_range", proc) == "32768 60999"
    for bad in ("net..ip_forward", "net.ipv4.conf.//.rp_filter", ""):
        with pytest.raises(BackendError, match="is not a sysctl key"):
            sysctl.key_path(bad, proc)


def test_home_sets_loose_rp_filter_on_the_tunnel_only():
    assert sysctl.home_sysctls() == {"net.ipv4.conf.vpnoffload0.rp_filter": "2"}
    assert sysctl.vps_sysctls() == {"net.ipv4.ip_forward": "1"}


def test_plan_sets_only_what_differs_and_reports_old_values(proc: Path):
    desired = {
        "net.ipv4.conf.vpnoffload0.rp_filter": "2",
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.rp_filter": "1",  # already so
        "net.ipv4.ip_local_port_range": "32768  60999",  # same after normalising whitespace
    }
    actions, previous = sysctl.plan_sysctls(desired, proc)
    assert summaries(actions) == [
        "set net.ipv4.ip_forward = 1 (was 0)",
        "set net.ipv4.conf.vpnoffload0.rp_filter = 2 (was 1)",
    ]
    assert previous == {"net.ipv4.ip_forward": "0", "net.ipv4.conf.vpnoffload0.rp_filter": "1"}
    apply(actions)
    assert value(proc, "net/ipv4/ip_forward") == "1"
    assert value(proc, "net/ipv4/conf/vpnoffload0/rp_filter") == "2"
    assert sysctl.plan_sysctls(desired, proc) == ([], {})

    restore = sysctl.restore_actions(previous, proc)
    assert summaries(restore) == [
        "restore net.ipv4.ip_forward = 0 (was 1)",
        "restore net.ipv4.conf.vpnoffload0.rp_filter = 1 (was 2)",
    ]
    apply(restore)
    assert value(proc, "net/ipv4/ip_forward") == "0"
    assert value(proc, "net/ipv4/conf/vpnoffload0/rp_filter") == "1"
    assert sysctl.restore_actions(previous, proc) == []


def test_restore_skips_settings_of_a_device_that_is_gone(proc: Path):
    (proc / "net/ipv4/conf/vpnoffload0/rp_filter").unlink()
    assert sysctl.restore_actions({"net.ipv4.conf.vpnoffload0.rp_filter": "1"}, proc) == []


def test_failed_write_rolls_back_earlier_ones(proc: Path):
    actions, _ = sysctl.plan_sysctls({"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0"}, proc)
    (proc / "net/ipv4/conf/all/rp_filter").unlink()  # vanishes between plan and apply
    with pytest.raises(ApplyError, match=r"cannot set net.ipv4.conf.all.rp_filter = 0: no such setting"):
        apply(actions)
    assert value(proc, "net/ipv4/ip_forward") == "0"


def test_missing_key_names_the_key_and_the_device(proc: Path):
    with pytest.raises(BackendError, match=r"cannot read net.ipv4.conf.tun9.rp_filter: no such setting \(does device tun9 exist\?\)"):
        sysctl.plan_sysctls({"net.ipv4.conf.tun9.rp_filter": "2"}, proc)
    with pytest.raises(BackendError, match="cannot read net.ipv4.nope: no such setting in this kernel"):
        sysctl.read_sysctl("net.ipv4.nope", proc)


@pytest.mark.skipif(os.geteuid() == 0, reason=BY_DESIGN + "root ignores file permissions")
def test_permission_denied_names_the_key(proc: Path):
    (proc / "net/ipv4/ip_forward").chmod(0o444)
    with pytest.raises(BackendError, match=r"cannot set net.ipv4.ip_forward = 1: permission denied \(run as root\)"):
        sysctl.write_sysctl("net.ipv4.ip_forward", "1", proc)


def test_permission_denied_message(monkeypatch: pytest.MonkeyPatch, proc: Path):
    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sysctl.os, "open", deny)
    with pytest.raises(BackendError, match=r"cannot set net.ipv4.ip_forward = 1: permission denied \(run as root\)"):
        sysctl.write_sysctl("net.ipv4.ip_forward", "1", proc)
