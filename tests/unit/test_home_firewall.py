"""The home box's own firewall is watched too (issue 29): the home keeper looks at it each round and
its reconcile child puts back the openings ``up home`` recorded, noting them for ``status``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.unit.hostfwkit import FakeFirewalld, firewalld_13, running_host
from tests.unit.hostfwkit import FakeChild
from vpnoffload import config as cfg, homekeeper, record as record_mod, runfiles
from vpnoffload.firewall.host import firewalld as host_firewalld, nft as host_nft, plan as host_plan
from vpnoffload.firewall.host.openings import choose, home_openings
from vpnoffload.watch import hostfw
from tests.unit.hostfwkit import CONFIG


def test_the_keeper_looks_at_the_firewall_each_round_but_not_while_up_home_runs(monkeypatch) -> None:
    alive = iter([True, False, True, True, True, True])
    monkeypatch.setattr(homekeeper, "openvpn_alive", lambda *_: next(alive, True))
    looks: list[float] = []
    stopping, ticks = [False], [0]

    def sleep(_: float) -> None:
        ticks[0] += 1
        stopping[0] = ticks[0] >= 5

    def firewall(now: float) -> list[str]:
        looks.append(now)
        return ["reopened in ufw: ..."] if now == 4 else []

    class Child(FakeChild):  # `up home` running for two rounds, then done
        polls = 0

        def poll(self) -> int | None:
            self.polls += 1
            return None if self.polls < 2 else 0

    homekeeper.keep("/run/p.pid", "/p.ovpn", ["up", "home"], stopping, clock=lambda: float(ticks[0]),
                    sleep=sleep, start=lambda argv: Child(None), firewall=firewall)
    assert looks == [0.0, 1.0, 4.0]  # rounds 2 and 3: the `up home` started in round 1 was still running


def test_the_keeper_is_started_with_its_homes_record() -> None:
    keeper = homekeeper.HomeKeeper("den", "/run/x", "/run/x/c.pid", "/p.ovpn", ["up"])
    captured: list[list[str]] = []

    class Stop(Exception):
        pass

    def spawn(argv, **kwargs):
        captured.append(argv)
        raise Stop

    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(homekeeper.spawn, "spawn", spawn)
        with pytest.raises(Stop):
            keeper.start()
    assert captured[0][captured[0].index("--firewall") + 1] == "home-den"
    watch = hostfw.HostFirewallWatch("/run/x", 0.0, "home-den")
    assert watch.record == "/run/x/home-den.json"


def test_home_reconcile_puts_back_and_status_on_the_home_box_says_so(tmp_path: Path, monkeypatch) -> None:
    config = cfg.parse_text(CONFIG, "test")
    fake = FakeFirewalld()
    monkeypatch.setattr(host_firewalld, "run", fake)
    monkeypatch.setattr(host_firewalld.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(host_nft, "list_ruleset", firewalld_13)
    rec = record_mod.Record()
    rec.host_found = running_host().found()
    rec.host_openings = [host_plan.entry_of(p) for p in choose(home_openings(config, "home"), running_host())]
    record_mod.save(tmp_path / runfiles.record("home-home"), rec)
    restored = host_plan.reconcile(tmp_path, tmp_path / runfiles.LOCK, "home-home")
    assert restored and len(fake.rich["public"]) == 2
    report = host_plan.status_report(tmp_path)  # no vps.json here: the home box's record
    assert report["reopened"] == 2 and report["by"] == "the home keeper"
    lines = host_plan.render_status(report, lambda at: "just now")
    assert "  reopened by the home keeper after a host reload: 2 rule(s), last just now" in lines
    assert (tmp_path / "hostfw-home-home.json").exists() and not (tmp_path / runfiles.HOSTFW_STATUS).exists()


def test_the_reconcile_child_refuses_a_bad_end_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-I", "-m", "vpnoffload.firewall.host.plan", "--run", str(tmp_path),
                           "--end", "../etc"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--end" in done.stderr and "Traceback" not in done.stderr


def test_status_on_the_home_box_names_the_keeper_and_what_it_put_back(tmp_path: Path) -> None:
    rec = record_mod.Record()
    rec.host_found = ["nftables (tables inet filter)"]
    record_mod.save(tmp_path / runfiles.record("home-den"), rec)
    report = host_plan.home_box_report(tmp_path)
    assert report is not None and report["homes"][0]["keeper_pid"] is None
    lines = host_plan.render_home_box(report, lambda at: "-")
    assert any("keeper NOT running: nothing puts the openings back" in line for line in lines), lines
    assert "host firewall: nftables (tables inet filter)" in lines
    assert host_plan.home_box_report(tmp_path / "nothing-here") is None
