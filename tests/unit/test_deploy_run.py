"""One path for up/down of either end, and rollback on SIGTERM (on fake backends)."""

from __future__ import annotations

import os
import signal

import pytest

from vpnoffload import plan
from vpnoffload.deploy.run import Request, execute
from vpnoffload.errors import ConfigError
from vpnoffload.plan import Action


def _run(env, request: Request) -> tuple[object, list[str]]:  # noqa: F811
    config, paths, backends, tunnels, proc = env
    said: list[str] = []
    return execute(request, paths, backends=backends, announce=said.append, require=lambda: None), said


def test_up_then_nothing_to_do_then_down_through_one_path(env) -> None:  # noqa: F811
    config, paths, backends, tunnels, proc = env
    dry, said = _run(env, Request("up", "vps", dry_run=True))
    assert dry.steps and not dry.applied and said == [] and backends.firewall.read().is_empty()
    up, said = _run(env, Request("up", "vps"))
    assert up.applied and said == up.steps and up.what == "the VPS end"
    again, _ = _run(env, Request("up", "vps"))
    assert again.nothing_to_do
    down, _ = _run(env, Request("down", "vps"))
    assert down.applied and backends.firewall.read().is_empty()


def test_home_requests_name_the_home_and_refuse_unknown_ones(env) -> None:  # noqa: F811
    config, paths, backends, tunnels, proc = env
    (paths.state / "home.ovpn").write_text("client\n")
    dry, _ = _run(env, Request("up", "home", dry_run=True))
    assert dry.what == "home box home" and any("lookup 7701" in s for s in dry.steps)
    with pytest.raises(ConfigError, match="--home"):
        _run(env, Request("up", "home", home="attic"))
    with pytest.raises(ConfigError, match="--home"):
        _run(env, Request("down", "home", home="../x"))


def test_sigterm_halfway_rolls_back_what_was_done() -> None:
    log: list[str] = []

    def term() -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    actions = [
        Action("one", lambda: log.append("one"), lambda: log.append("undo one")),
        Action("two", lambda: log.append("two"), lambda: log.append("undo two")),
        Action("killed here", term, None),
        Action("never", lambda: log.append("never"), None),
    ]
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), plan.sigterm_as_interrupt():
        plan.apply(actions)
    assert log == ["one", "two", "undo two", "undo one"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_action_that_half_happened_is_undone_too_when_it_says_so() -> None:
    """A start that is interrupted while waiting must not leave the started process behind."""
    log: list[str] = []

    def start_then_wait() -> None:
        log.append("started")
        raise KeyboardInterrupt  # SIGTERM while waiting for it to be ready

    actions = [Action("rules", lambda: log.append("rules"), lambda: log.append("undo rules")),
               Action("start", start_then_wait, lambda: log.append("stopped"), undo_if_partial=True)]
    with pytest.raises(KeyboardInterrupt):
        plan.apply(actions)
    assert log == ["rules", "started", "stopped", "undo rules"]
    # An all-or-nothing action that fails is not undone: it changed nothing.
    log.clear()
    with pytest.raises(plan.ApplyError, match="No space left on device; nothing else had been changed"):
        plan.apply([Action("atomic", lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")),
                           lambda: log.append("undo atomic"))])
    assert log == []


@pytest.mark.parametrize("end", ["vps", "home"])
def test_down_takes_away_what_a_dead_openvpn_left_behind(env, end: str) -> None:  # noqa: F811
    """OpenVPN died (killed, crashed, its unit failed): not running, but its pidfile or the unit's
    wrapper config in /etc/openvpn is still there, and ``down`` must remove it all the same."""
    from pathlib import Path

    from tests.fakes import FakeTunnel

    config, paths, backends, tunnels, proc = env
    (paths.state / "home.ovpn").write_text("client\n")
    name = "server" if end == "vps" else "home-home"
    tunnel = tunnels[name] = FakeTunnel(name, Path(), Path(), Path(), leftover=True)
    down, _ = _run(env, Request("down", end))
    assert any(step.startswith("stop OpenVPN") for step in down.steps), down.steps
    assert tunnel.log[-1] == "stop" and not tunnel.left_behind()


def test_what_each_kind_of_openvpn_leaves_behind(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vpnoffload import proc, tunnel

    daemon = tunnel.DaemonTunnel("home-home", tmp_path / "c.conf", tmp_path, tmp_path / "run")
    assert not daemon.left_behind()
    daemon.pidfile.parent.mkdir()
    daemon.pidfile.write_text("999999999\n")  # no such process: not running, but left behind
    assert not daemon.running() and daemon.left_behind()
    wrapper = tmp_path / "etc-openvpn-client" / "vpnoffload-home.conf"
    unit = tunnel.SystemdTunnel("home-home", "openvpn-client@vpnoffload-home", wrapper, "cd /x\n")
    assert not unit.left_behind()
    wrapper.parent.mkdir()
    wrapper.write_text("cd /x\n")
    systemctl: list[list[str]] = []
    monkeypatch.setattr(proc, "run", lambda argv, **kw: systemctl.append(list(argv)) or proc.Result(tuple(argv), 3, "", ""))
    assert not unit.running() and unit.left_behind()
    unit.stop()
    assert not wrapper.exists() and systemctl[-2:] == [["systemctl", "disable", "--now", "openvpn-client@vpnoffload-home"],
                                                       ["systemctl", "reset-failed", "openvpn-client@vpnoffload-home"]]
