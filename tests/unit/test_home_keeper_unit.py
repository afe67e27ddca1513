"""The home keeper under systemd: its unit's text and its ``--watch-only`` mode, which keeps the
host firewall's openings and never runs ``up home`` (systemd runs the OpenVPN client)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import home_box_config, write_home_box_config
from tests.prereq import need, tool_problem
from vpnoffload import homekeeper, runfiles
from vpnoffload.deploy.units import keeper_unit_text, systemd_word, units
from vpnoffload.errors import ConfigError
from vpnoffload.paths import Paths

HARDENING = ("NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW", "ProtectSystem=strict",
             "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes", "ProtectKernelModules=yes",
             "RestrictNamespaces=yes", "SystemCallFilter=@system-service", "RestrictSUIDSGID=yes")


def _paths(root: Path) -> Paths:
    config = write_home_box_config(root / "vpnoffload.toml", home_box_config("203.0.113.10", "198.51.100.0/24"))
    return Paths(config, config.parent / "state")


def _exec_start(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("ExecStart="))


def test_install_service_home_writes_the_keeper_beside_the_end(tmp_path: Path) -> None:
    found = units(_paths(tmp_path), "home", "home")
    assert list(found) == ["vpnoffload-home.service", "vpnoffload-home-keeper.service"]
    text = found["vpnoffload-home-keeper.service"]
    for line in HARDENING:
        assert f"\n{line}\n" in text, line
    assert "CAP_SYS_ADMIN" not in text and "CAP_SETUID" not in text
    # Stopped and restarted with the end, started with it, and restarted by systemd if it dies or hangs.
    for line in ("PartOf=vpnoffload-home.service", "After=network-online.target vpnoffload-home.service",
                 "WantedBy=multi-user.target vpnoffload-home.service", "Type=notify", "WatchdogSec=10",
                 "Restart=on-failure", "KillMode=mixed"):
        assert f"\n{line}\n" in text, line


def test_the_keeper_unit_runs_the_watch_only_mode_and_never_up_home(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    line = _exec_start(keeper_unit_text(paths, "home", "vpnoffload-home.service", python="/usr/bin/python3"))
    pidfile = str(paths.run / runfiles.home_keeper_pid("home"))
    assert line == "ExecStart=" + " ".join(
        systemd_word(w) for w in homekeeper.watch_only_argv(
            "/usr/bin/python3", pidfile, "home-home",
            ("vpnoffload0", "openvpn-client@vpnoffload-home.service", "vpnoffload-home.service")))
    assert " --watch-only " in line and f"--pidfile {pidfile} --firewall home-home " in line
    # The client gone: the end's own unit is restarted (its down home + up home), by systemd.
    assert line.endswith("--device vpnoffload0 --client-unit openvpn-client@vpnoffload-home.service "
                         "--restart-unit vpnoffload-home.service"), line
    assert " -- " not in line and " up " not in line and "--client-pidfile" not in line


def test_the_keeper_units_exec_line_is_quoted_by_systemds_rules(tmp_path: Path) -> None:
    odd = tmp_path / "my etc" / "100%$HOME"
    text = units(_paths(odd), "home", "home")["vpnoffload-home-keeper.service"]
    line = _exec_start(text)
    pidfile = str(odd / "state" / "run" / runfiles.home_keeper_pid("home"))
    assert systemd_word(pidfile) in line and '"' in line and "%%" in line and "$$HOME" in line
    assert f"ReadWritePaths={systemd_word(odd / 'state', exec_line=False)} /run -/etc/ufw" in text
    need(tool_problem("systemd-analyze", "apt-get install systemd"))
    unit = tmp_path / "vpnoffload-home-keeper.service"
    unit.write_text(text.replace(sys.executable, "/usr/bin/python3"))
    # PartOf/Wants name the end's unit, which is not installed here: only the keeper's own lines count.
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert [ln for ln in (done.stdout + done.stderr).splitlines() if "vpnoffload-home.service" not in ln] == []


def test_each_tunnel_of_the_box_has_its_own_keeper(tmp_path: Path) -> None:
    _paths(tmp_path)
    second = write_home_box_config(tmp_path / "vps2" / "vpnoffload.toml",
                                   home_box_config("203.0.113.20", "198.18.9.0/24"))
    found = units(Paths(second, second.parent / "state"), "home", "home")
    assert list(found) == ["vpnoffload-home-t1.service", "vpnoffload-home-keeper-t1.service"]
    text = found["vpnoffload-home-keeper-t1.service"]
    assert "PartOf=vpnoffload-home-t1.service" in text and str(second.parent / "state" / "run") in text
    assert "openvpn-client@vpnoffload-home-t1.service" in text


def test_watch_only_looks_at_the_firewall_and_tells_systemd() -> None:
    told: list[str] = []
    looks: list[float] = []
    stopping = [False]

    def firewall(now: float) -> list[str]:
        looks.append(now)
        stopping[0] = len(looks) >= 3
        return ["reopened in firewalld zone public (runtime rich rule)"] if len(looks) == 2 else []

    homekeeper.watch_firewall(firewall, stopping, clock=lambda: float(len(looks)), sleep=lambda _: None,
                              notify=told.append)
    assert looks == [0.0, 1.0, 2.0]
    assert told == ["READY=1", "WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]


def test_watch_only_mode_never_runs_up_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with the client dead: the unit's keeper never looks at it (systemd's), so never starts anything."""
    monkeypatch.setattr(homekeeper, "openvpn_alive", lambda *_: False)
    monkeypatch.setattr(homekeeper, "keep", lambda *a, **k: pytest.fail("the client keeper ran in --watch-only"))
    monkeypatch.setattr(homekeeper.spawn, "spawn", lambda *a, **k: pytest.fail(f"started {a}"))
    monkeypatch.setattr(homekeeper.signal, "signal", lambda *_: None)
    seen: list[str] = []

    def fake_watch(run_dir: str, end: str):
        seen.append(end)
        return lambda now: []

    def once(firewall, stopping, **_: object) -> None:
        firewall(0.0)

    monkeypatch.setattr(homekeeper, "firewall_watch", fake_watch)
    monkeypatch.setattr(homekeeper, "watch_firewall", once)
    pidfile = tmp_path / "home-keeper-home.pid"
    assert homekeeper._main(["--watch-only", "--pidfile", str(pidfile), "--firewall", "home-home"]) == 0
    assert seen == ["home-home"] and not pidfile.exists()  # a stopped keeper leaves no pidfile


@pytest.mark.parametrize("argv", [
    ["--watch-only", "--pidfile", "/p", "--firewall", "home-x", "--", "up", "home"],
    ["--watch-only", "--pidfile", "/p", "--client-pidfile", "/c", "--firewall", "home-x"],
    ["--watch-only", "--pidfile", "/p"],
])
def test_watch_only_mode_takes_no_command_and_needs_its_end(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        homekeeper._main(argv)


@contextlib.contextmanager
def _running_keeper(tmp_path: Path, restart: tuple[str, str, str] | None = None
                    ) -> Iterator[tuple[Paths, Path, subprocess.Popen[bytes]]]:
    """A real --watch-only keeper for home "home" (its record names an nftables host firewall),
    running once its pidfile names it; stopped afterwards if it still runs."""
    from vpnoffload import record as record_mod

    paths = _paths(tmp_path)
    paths.run.mkdir(parents=True, exist_ok=True)
    rec = record_mod.Record()
    rec.host_found = ["nftables (tables inet filter)"]
    record_mod.save(paths.run / runfiles.record("home-home"), rec)
    pidfile = paths.run / runfiles.home_keeper_pid("home")
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    keeper = subprocess.Popen(homekeeper.watch_only_argv(sys.executable, str(pidfile), "home-home", restart), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while homekeeper.keeper_pid(str(paths.run), "home") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        yield paths, pidfile, keeper
    finally:
        if keeper.poll() is None:
            keeper.terminate()
            keeper.wait(10)


def test_status_and_down_home_know_the_units_keeper(tmp_path: Path) -> None:
    """A real keeper in --watch-only: status names it as systemd's, and down home stops it (SIGTERM)."""
    from vpnoffload.deploy.home import _stop_keeper_actions
    from vpnoffload.firewall.host import plan as host_plan

    with _running_keeper(tmp_path) as (paths, pidfile, keeper):
        report = host_plan.home_box_report(paths.run)
        assert report is not None
        home = report["homes"][0]
        assert home["keeper_pid"] == keeper.pid and home["keeper_mode"] == "firewall", home
        lines = host_plan.render_home_box(report, lambda at: "-")
        assert any(f"keeper running (pid {keeper.pid}, under systemd)" in ln for ln in lines), lines
        assert home["keeper_restarts_unit"] is None  # an older unit's keeper: the firewall only
        actions = _stop_keeper_actions(paths, "home")
        assert [a.summary for a in actions] == [
            f"stop the home keeper for home (pid {keeper.pid}; under systemd: systemctl stop vpnoffload-home-keeper)"]
        actions[0].do()
        assert keeper.wait(10) == 0 and not pidfile.exists()
        assert _stop_keeper_actions(paths, "home") == []


class FakeSystemctl:
    """``systemctl ARGS`` -> stdout, recorded; the client unit's state is ``state``."""

    def __init__(self, state: str = "failed") -> None:
        self.state = state
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str]) -> str:
        self.calls.append(args)
        return f"{self.state}\n" if args[0] == "is-active" else ""

    def restarts(self) -> list[list[str]]:
        return [c for c in self.calls if c[0] != "is-active"]


def _restarter(tmp_path: Path, systemctl: FakeSystemctl, device: list[bool]) -> homekeeper.UnitRestarter:
    return homekeeper.UnitRestarter("vpnoff0", "openvpn-client@vpnoffload-home.service", "vpnoffload-home.service",
                                    str(tmp_path / "home-keeper-home.restart"), run=systemctl,
                                    device_exists=lambda dev: device[0])


def test_the_unit_keeper_restarts_the_end_once_per_backoff_step(tmp_path: Path) -> None:
    systemctl, device = FakeSystemctl(), [False]
    keeper = _restarter(tmp_path, systemctl, device)
    asked_at = [now / 2 for now in range(0, 200) if keeper.tick(now / 2) and systemctl.restarts()[-1:]]
    # At once, then 1 s, 2 s, 4 s ... 30 s after each ask (the restart did not bring it back).
    assert asked_at == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0], asked_at
    assert set(map(tuple, systemctl.restarts())) == {("restart", "--no-block", "vpnoffload-home.service")}
    assert not any("up" in call for call in systemctl.calls)  # never `up home`: systemd's unit does that


def test_the_unit_keeper_never_restarts_a_live_client(tmp_path: Path) -> None:
    device = [True]
    systemctl = FakeSystemctl("active")
    keeper = _restarter(tmp_path, systemctl, device)
    assert all(keeper.tick(float(now)) == [] for now in range(60))
    assert systemctl.calls == []  # the tun device is there: not even a question to systemd
    device[0] = False  # the device gone but OpenVPN (re)starting or being stopped: not ours to restart
    for state in ("active", "activating", "deactivating", "reloading"):
        systemctl.state = state
        assert keeper.tick(100.0) == []
    assert systemctl.restarts() == []


def test_the_backoff_survives_the_keeper_being_restarted_with_the_end(tmp_path: Path) -> None:
    """PartOf=: each restart of the end restarts the keeper; the next one waits the next step."""
    systemctl, device = FakeSystemctl(), [False]
    first = _restarter(tmp_path, systemctl, device)
    assert first.tick(0.0) and len(systemctl.restarts()) == 1
    second = _restarter(tmp_path, systemctl, device)  # started after `up home` failed
    assert second.tick(40.0) == [] and second.tick(40.9) == [] and len(systemctl.restarts()) == 1
    assert second.tick(41.0) and len(systemctl.restarts()) == 2
    third = _restarter(tmp_path, systemctl, device)
    assert third.tick(80.0) == [] and third.tick(81.9) == [] and third.tick(82.0)
    device[0] = True  # back: said once, and the backoff starts over
    fourth = _restarter(tmp_path, systemctl, device)
    assert fourth.tick(90.0) == ["the OpenVPN client (openvpn-client@vpnoffload-home.service) runs again"]
    assert fourth.tick(91.0) == [] and not (tmp_path / "home-keeper-home.restart").exists()
    device[0] = False
    assert fourth.tick(92.0) and len(systemctl.restarts()) == 4  # at once again


def test_the_unit_keeper_does_not_restart_when_systemd_cannot_say(tmp_path: Path) -> None:
    from vpnoffload.errors import BackendError

    def broken(args: list[str]) -> str:
        raise BackendError("systemctl is-active did not finish within 30 s")

    keeper = homekeeper.UnitRestarter("vpnoff0", "c.service", "h.service", str(tmp_path / "r"), run=broken,
                                      device_exists=lambda dev: False)
    assert keeper.tick(0.0) == [] and keeper.tick(100.0) == []


def test_watch_only_mode_builds_the_restarter_from_its_units_options(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(homekeeper.signal, "signal", lambda *_: None)
    monkeypatch.setattr(homekeeper, "firewall_watch", lambda run_dir, end: lambda now: [])
    got: list[Any] = []
    monkeypatch.setattr(homekeeper, "watch_firewall", lambda firewall, stopping, **kw: got.append(kw["restarter"]))
    pidfile = tmp_path / "home-keeper-home.pid"
    homekeeper._main(homekeeper.watch_only_argv("py", str(pidfile), "home-home",
                                                ("vpnoff0", "c.service", "h.service"))[6:])
    keeper = got[0].__self__
    assert isinstance(keeper, homekeeper.UnitRestarter)
    assert (keeper.device, keeper.client_unit, keeper.home_unit) == ("vpnoff0", "c.service", "h.service")
    assert keeper.state_file == str(tmp_path / "home-keeper-home.restart")
    homekeeper._main(["--watch-only", "--pidfile", str(pidfile), "--firewall", "home-home"])
    assert got[1] is None  # an older unit without the names: the firewall only


def test_stopping_and_starting_the_vps_end_brings_the_watchdog_back(tmp_path: Path) -> None:
    text = units(_paths(tmp_path), "vps")["vpnoffload-watch.service"]
    assert "\nPartOf=vpnoffload-vps.service\n" in text
    assert "\nWantedBy=multi-user.target vpnoffload-vps.service\n" in text


def test_status_says_the_units_keeper_restarts_the_end(tmp_path: Path) -> None:
    from vpnoffload.firewall.host import plan as host_plan

    # "lo" always exists: the keeper takes the client for alive and never runs systemctl here.
    with _running_keeper(tmp_path, ("lo", "openvpn-client@vpnoffload-home.service", "vpnoffload-home.service")) as (paths, _, _):
        report = host_plan.home_box_report(paths.run)
        assert report is not None and report["homes"][0]["keeper_restarts_unit"] == "vpnoffload-home.service"
        lines = host_plan.render_home_box(report, lambda at: "-")
        assert any("has systemd restart vpnoffload-home.service when the OpenVPN client is gone" in ln
                   for ln in lines), lines


def test_the_keepers_nap_ends_at_a_signal_sleeps_again_after_and_leaves_no_wakeup_fd(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    """SIGTERM cuts the keeper's sleep short (down home waits for it), a later nap sleeps again
    (the byte is read), and leaving the keeper restores the process's wakeup fd and closes the pipe."""
    import signal
    import threading

    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    old = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        with homekeeper._SignalledNap() as nap:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            started = time.monotonic()
            nap(30)
            assert time.monotonic() - started < 10  # woken by the signal, not the 30 s
            started = time.monotonic()
            nap(0.3)
            assert time.monotonic() - started >= 0.25  # the signal's byte was read: this one sleeps
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert signal.set_wakeup_fd(before) == before
    monkeypatch.setattr(homekeeper.signal, "signal", lambda *_: None)
    monkeypatch.setattr(homekeeper, "firewall_watch", lambda run_dir, end: lambda now: [])
    monkeypatch.setattr(homekeeper, "watch_firewall", lambda *a, **k: None)
    fds = len(os.listdir("/proc/self/fd"))
    homekeeper._main(["--watch-only", "--pidfile", str(tmp_path / "k.pid"), "--firewall", "home-home"])
    assert signal.set_wakeup_fd(before) == before and len(os.listdir("/proc/self/fd")) == fds
