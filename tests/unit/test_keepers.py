"""Issue 17: the keepers that restart OpenVPN where systemd does not (watch/supervise.py on the
VPS, homekeeper.py at home), and the watchdog deciding through a wall-clock step."""

from __future__ import annotations

import json
import time
from pathlib import Path

from vpnoffload import homekeeper
from vpnoffload.lean.snapshot import ConfigView
from vpnoffload.watch import supervise
from tests.unit.hostfwkit import FakeChild


def _keeper(tmp_path: Path, alive: list[bool], codes: list[int | None], now: list[float]):
    started: list[list[str]] = []

    def start(argv: list[str]) -> FakeChild:
        started.append(argv)
        return FakeChild(codes.pop(0))

    keeper = supervise.ServerKeeper("/c.toml", str(tmp_path), str(tmp_path), clock=lambda: now[0],
                                    wall=lambda: 1000.0 + now[0], start=start)
    keeper.alive = lambda: alive[0]
    return keeper, started


def test_server_keeper_does_nothing_when_no_daemon_ran_at_start(tmp_path: Path) -> None:
    # Under systemd there is no pidfile of ours: Restart= in the unit is the keeper.
    keeper, started = _keeper(tmp_path, [False], [], [0.0])
    for _ in range(3):
        keeper.tick()
    assert started == [] and not (tmp_path / supervise.STATE_FILE).exists()


def test_server_keeper_restarts_with_backoff_and_publishes(tmp_path: Path) -> None:
    alive, now = [True], [0.0]
    keeper, started = _keeper(tmp_path, alive, [1, 0], now)
    keeper.tick()  # adopts the running daemon
    alive[0] = False
    keeper.tick()  # gone: first restart child
    assert len(started) == 1 and started[0][-4:] == ["--config", "/c.toml", "--state-dir", str(tmp_path)]
    keeper.tick()  # it failed: back off 1 s
    now[0] = 0.5
    keeper.tick()
    assert len(started) == 1
    now[0] = 1.1
    keeper.tick()  # second try
    assert len(started) == 2
    alive[0] = True
    keeper.tick()  # it worked
    stats = json.loads((tmp_path / supervise.STATE_FILE).read_text())
    assert stats["restarts"] == 1 and stats["failures"] == 1 and stats["down_since"] is None
    assert keeper.backoff == supervise.FIRST_BACKOFF


def test_server_keeper_kills_a_hung_restart_child(tmp_path: Path) -> None:
    alive, now = [True], [0.0]
    keeper, started = _keeper(tmp_path, alive, [None], now)
    keeper.tick()
    alive[0] = False
    keeper.tick()
    child = keeper.child
    now[0] = supervise.CHILD_TIMEOUT + 1
    keeper.tick()
    assert child.killed and keeper.child is None and keeper.stats["failures"] == 1


def test_home_keeper_runs_up_home_when_the_client_is_gone(tmp_path: Path, monkeypatch) -> None:
    alive = iter([True, False, False, True, True])
    monkeypatch.setattr(homekeeper, "openvpn_alive", lambda *_: next(alive, True))
    started: list[list[str]] = []
    stopping = [False]
    ticks = [0]

    def sleep(_: float) -> None:
        ticks[0] += 1
        stopping[0] = ticks[0] >= 4

    def start(argv: list[str]) -> FakeChild:
        started.append(argv)
        return FakeChild(0)

    homekeeper.keep("/run/p.pid", "/p.ovpn", ["up", "home"], stopping, clock=lambda: float(ticks[0]),
                    sleep=sleep, start=start)
    assert started == [["up", "home"]]


def test_pidfile_check_needs_a_live_openvpn_with_our_config(tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    assert not supervise.pidfile_names_openvpn(str(pidfile), "/x.conf")
    pidfile.write_text("1\n")  # pid 1 is no openvpn of ours
    assert not supervise.pidfile_names_openvpn(str(pidfile), "/x.conf")
    assert not homekeeper.openvpn_alive(str(pidfile), "/x.conf")


def test_pidfile_check_finds_a_live_openvpn_with_our_config(tmp_path: Path) -> None:
    """The positive case: without it, a check that always says "no" passes the test above."""
    import subprocess
    import sys
    import time

    # A process whose argv looks like OpenVPN's (argv[0] ends in "openvpn", our config in it).
    child = subprocess.Popen(["/usr/sbin/openvpn", "-c", "import time; time.sleep(30)", "--config", "/x.conf"],
                             executable=sys.executable)
    try:
        pidfile = tmp_path / "p.pid"
        pidfile.write_text(f"{child.pid}\n")
        # Right after exec /proc/PID/cmdline can still read empty: wait until it is the new one.
        cmdline = Path(f"/proc/{child.pid}/cmdline")
        deadline = time.monotonic() + 5
        while b"/x.conf" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert supervise.pidfile_names_openvpn(str(pidfile), "/x.conf")
        assert homekeeper.openvpn_alive(str(pidfile), "/x.conf")
        assert not supervise.pidfile_names_openvpn(str(pidfile), "/other.conf")
    finally:
        child.kill()
        child.wait()
    assert not supervise.pidfile_names_openvpn(str(pidfile), "/x.conf")  # gone (and reaped)


def test_one_pid_check_for_every_pidfile(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from vpnoffload import runfiles

    pidfile = tmp_path / "x.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    python = os.path.basename(sys.executable).encode()
    assert runfiles.pid_of(pidfile, program=python) == os.getpid()
    assert runfiles.pid_of(pidfile, contains=(b"no such word in our cmdline",)) is None
    assert runfiles.pid_of(pidfile, program=b"openvpn") is None
    assert runfiles.pid_of(tmp_path / "missing.pid") is None and runfiles.ours(None) is None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(1000):  # exited but not reaped: a zombie is not running
        with open(f"/proc/{child.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    assert runfiles.ours(child.pid) is None
    child.wait()


def test_decisions_survive_a_wall_clock_step() -> None:
    """The watchdog counts checks (fall/rise), never wall-clock durations: a step back of an hour
    mid-outage neither delays nor hurries the swap (its loop sleeps on time.monotonic). Tested
    with an injected clock, not libfaketime: LD_PRELOAD is not needed to show a logic that
    never subtracts wall-clock times."""
    from tests.fakes import Swapper, prober
    from tests.fakes import watchdog_config as config
    from vpnoffload.watch.decide import Watchdog

    wall = iter([5000.0, 5000.5, 1400.0, 1400.5, 9e9, 9e9 + 0.5])
    health = {"web": "up", "git": "up"}
    swap = Swapper()
    dog = Watchdog(ConfigView.of(config(fall=2, rise=2)), swap, prober(health), clock=lambda: next(wall, 1401.0))
    dog.start()
    health["web"] = "down"
    dog.tick()  # the clock steps back an hour here
    assert dog.tick() == {"web"}  # exactly after `fall` checks
    health["web"] = "up"
    dog.tick()  # and forward to the far future
    assert dog.tick() == {"web"}  # exactly after `rise` checks
    assert dog.status["web"].state == "forwarding"


def test_status_never_says_a_negative_ago() -> None:
    from vpnoffload.status import _ago

    assert _ago(time.time() + 3600) == "0s ago"  # a state written before the clock stepped back
