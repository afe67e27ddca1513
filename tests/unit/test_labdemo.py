"""The lab demo's steps with a fake lab and a recording narrator (no root, no namespaces)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vpnoffload.lab import demo as labdemo
from vpnoffload.cli.app import app
from vpnoffload.errors import PrerequisiteError
from vpnoffload.lab.netns import Lab
from vpnoffload.lab import sites as labsites
from vpnoffload.lab import steps as labsteps
from vpnoffload.lab.narrate import RecordingNarrator
from vpnoffload.lab.sites import LabStepError, Sites


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class FakeLab(Lab):
    """A Lab whose OS layer is a script: records vpnoffload commands, answers polls."""

    def __init__(self, prefix: str = "fake", fail: tuple[str, ...] = (), interrupt: tuple[str, ...] = ()) -> None:
        super().__init__(prefix)
        self.fail, self.interrupt = fail, interrupt
        self.calls: list[tuple[str, tuple[str, ...]]] = []  # (host, vpnoffload args)
        self.events: list[str] = []
        self.polls: list[dict[str, Any]] = []
        self.alive = False

    def exists(self) -> bool:
        return self.alive

    def create(self) -> None:
        self.alive = True
        self.events.append("create")

    def destroy(self) -> None:
        self.alive = False
        self.events.append("destroy")

    def pull_cable(self) -> None:
        self.events.append("pull")

    def plug_cable(self) -> None:
        self.events.append("plug")

    def wait_tcp(self, host: str, address: str, port: int, timeout: float = 5.0) -> bool:
        return True

    def http_get(self, host: str, url: str, *, timeout: float = 2.0) -> tuple[int, str]:
        if url.endswith("/whoami"):
            return 200, f"{self.visitor_address}\n"
        return 200, f"<h1>served from home</h1><p>you are {self.visitor_address}</p>"

    def popen(self, host: str, *argv: str, **kw: Any) -> FakeProc:
        self.events.append(f"start {host} {argv[-1] if argv[-1] == 'watch' else 'labweb'}")
        notify = (kw.get("env") or {}).get("NOTIFY_SOCKET")
        if notify:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"READY=1", notify)
        return FakeProc(4_000_000 + len(self.events))  # beyond pid_max: never a real process

    def exec(self, host: str, *argv: str, **kw: Any) -> subprocess.CompletedProcess:
        assert argv[1] == "-P", argv  # lab children never import from the current directory (root)
        argv = (argv[0], *argv[2:])
        if argv[1:3] == ("-c", labsites._POLL):
            return subprocess.CompletedProcess(argv, 0, json.dumps(self.polls.pop(0)), "")
        assert argv[1:3] == ("-m", "vpnoffload") and argv[3] == "-c", argv
        config, args = Path(argv[4]), tuple(argv[5:])
        self.calls.append((host, args))
        self.events.append(f"{host}: {' '.join(args[:2])}")
        if " ".join(args[:2]) in self.interrupt:
            raise KeyboardInterrupt
        if " ".join(args[:2]) in self.fail:
            return subprocess.CompletedProcess(argv, 3, "", "vpnoffload: error: boom\n")
        if args[0] == "init":
            config.write_text("[vps]\n")
        if args[:2] == ("render", "home"):
            Path(args[args.index("--out") + 1], "home.ovpn").write_text("profile\n")
        return subprocess.CompletedProcess(argv, 0, f"did {args[0]}\n", "")


@pytest.fixture(autouse=True)
def no_real_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Teardown may delete the system user: never the real one from a unit test."""
    monkeypatch.setattr(labsteps.users, "exists", lambda name=labsteps.users.RUN_AS: False)
    monkeypatch.setattr(labsteps.users, "delete", lambda name=labsteps.users.RUN_AS: None)


@pytest.fixture
def sites(tmp_path: Path) -> Sites:
    return Sites.for_prefix("fake", tmp_path / "labs")


ALL = frozenset({"watch", "status"})


def test_up_runs_the_users_commands_in_order_and_narrates_each(sites: Sites) -> None:
    lab, n = FakeLab(), RecordingNarrator()
    assert labsteps.run_up(lab, sites, n, ALL) is True
    assert [(host, args[0]) for host, args in lab.calls] == [
        ("vps", "init"), ("vps", "service"), ("vps", "render"), ("vps", "up"), ("home", "up")]
    assert lab.calls[1][1] == ("service", "add", "web", "--listen", "80", "--target", "8080",
                               "--check", "http:/", "--hostname", "blog.example.org",
                               "--offline-copy", "/about.html")
    assert lab.events.index("start home labweb") < lab.events.index("vps: up vps")
    assert lab.events[-1] == "start vps watch"
    shown = n.texts("command")
    assert f"vps: vpnoffload -c {sites.config('vps')} up vps" in shown
    assert f"home: vpnoffload -c {sites.config('home')} up home" in shown
    profile = sites.site("home") / "state" / "home.ovpn"
    assert profile.read_text() == "profile\n" and profile.stat().st_mode & 0o777 == 0o600
    assert sites.config("home").read_text() == "[vps]\n"
    manifest = sites.load_manifest()
    assert [b["what"] for b in manifest["background"]] == ["labweb", "watch"]
    assert manifest["user_existed"] is False
    assert os.stat(sites.root).st_mode & 0o777 == 0o755


def test_a_failed_step_is_one_line_and_the_lab_is_torn_down(sites: Sites) -> None:
    lab = FakeLab(fail=("up home",))
    with pytest.raises(LabStepError) as err:
        labsteps.run_up(lab, sites, RecordingNarrator(), ALL)
    assert str(err.value) == "'vpnoffload up home' on home failed (exit 3): vpnoffload: error: boom"
    assert lab.events[-3:] == ["home: down home", "vps: down vps", "destroy"]
    assert not sites.root.exists()


def test_ctrl_c_during_the_demo_still_tears_down(sites: Sites) -> None:
    lab = FakeLab(interrupt=("up vps",))
    with pytest.raises(KeyboardInterrupt):
        labdemo.run_demo(lab, sites, RecordingNarrator(), commands=ALL, copy_wait=0)
    assert lab.events[-1] == "destroy" and not sites.root.exists()


def test_fail_over_is_measured_from_the_pull_to_the_first_friendly_page() -> None:
    lab, n = FakeLab(), RecordingNarrator()
    lab.polls.append({"at": 103.25, "attempts": 14, "tally": {"no answer": 9, "HTTP 503": 1}})
    assert labdemo.fail_over(lab, n, clock=lambda: 100.0) == pytest.approx(3.25)
    assert lab.events == ["pull"]
    assert "14 new connections: 9x no answer, 1x HTTP 503, 4 still waiting" in n.texts("output")
    assert n.texts("ok")[-1].startswith("failover: the visitor got the friendly page (HTTP 503) 3.2 s")


def test_fail_over_gives_up_after_its_bound() -> None:
    lab = FakeLab()
    lab.polls.append({"at": None, "attempts": 75, "tally": {"no answer": 74}})
    with pytest.raises(LabStepError, match=r"did not appear within 15 s .*74x no answer, 1 still waiting"):
        labdemo.fail_over(lab, RecordingNarrator(), clock=lambda: 0.0)


def test_demo_tells_the_story_in_order_and_tears_down(sites: Sites) -> None:
    lab, n = FakeLab(), RecordingNarrator()
    lab.polls += [{"at": 3.0, "attempts": 15, "tally": {"HTTP 503": 1}}, {"at": 2.0, "attempts": 10, "tally": {"HTTP 200": 1}}]
    result = labdemo.run_demo(lab, sites, n, commands=ALL, copy_wait=0)
    assert result.failover is not None and result.recovery is not None
    story = [e for e in lab.events if e in ("pull", "plug", "vps: status", "destroy")]
    assert story == ["vps: status", "pull", "vps: status", "plug", "vps: status", "destroy"]
    assert any(t.startswith("failover (cable pulled -> friendly page): ") for t in n.texts("ok"))
    assert not sites.root.exists()


def test_demo_shows_a_kept_page_during_the_outage(sites: Sites) -> None:
    """Once the VPS keeps the offline copy, the outage shows it served from the VPS (issue 16)."""
    import os

    from vpnoffload.fallback import copies

    os.makedirs(copies.service_dir(str(sites.vps_run), labsites.SERVICE), exist_ok=True)
    index = copies.empty_index()
    index["pages"][labsites.KEPT_PAGE] = {"fetched": 1.0, "size": 10}
    copies.write_index(str(sites.vps_run), labsites.SERVICE, index)
    lab, n = FakeLab(), RecordingNarrator()
    lab.polls += [{"at": 3.0, "attempts": 15, "tally": {"HTTP 503": 1}}, {"at": 2.0, "attempts": 10, "tally": {"HTTP 200": 1}}]
    labdemo.run_demo(lab, sites, n, commands=ALL, copy_wait=0)
    oks = n.texts("ok")
    assert any("keeps an offline copy of /about.html" in t for t in oks)
    assert any("/about.html is served from the VPS's offline copy (HTTP 200)" in t for t in oks)


def test_demo_without_watch_or_status_says_so_and_skips_failover(sites: Sites) -> None:
    lab, n = FakeLab(), RecordingNarrator()
    lab.polls.append({"at": 1.0, "attempts": 3, "tally": {"HTTP 200": 1}})
    result = labdemo.run_demo(lab, sites, n, commands=frozenset(), copy_wait=0)
    assert result.failover is None
    warnings = " ".join(n.texts("warn"))
    assert "'vpnoffload watch' is not available" in warnings and "'vpnoffload status' is not available" in warnings
    assert "start vps watch" not in lab.events and lab.events[-1] == "destroy"


def test_keep_leaves_the_lab_and_says_how_to_remove_it(sites: Sites) -> None:
    lab, n = FakeLab(), RecordingNarrator()
    lab.polls += [{"at": 3.0, "attempts": 15, "tally": {}}, {"at": 2.0, "attempts": 10, "tally": {}}]
    labdemo.run_demo(lab, sites, n, keep=True, commands=ALL, copy_wait=0)
    assert "destroy" not in lab.events and sites.root.exists()
    assert "you: vpnoffload lab down --prefix fake" in n.texts("command")
    assert "you: ip netns exec fake-visitor curl http://203.0.113.10/" in n.texts("command")


# ------------------------------------------------------------------ through the CLI


def test_missing_prerequisite_exits_4_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise PrerequisiteError("openvpn is not installed: apt-get install openvpn")

    monkeypatch.setattr(labsteps, "check_prerequisites", missing)
    for command in ("up", "demo", "down"):
        result = CliRunner().invoke(app, ["lab", command, "--prefix", "x"])
        assert result.exit_code == 4, result.output
        assert result.output.strip() == "vpnoffload: error: openvpn is not installed: apt-get install openvpn"


def test_a_lab_that_is_up_already_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labsteps, "check_prerequisites", lambda: None)
    monkeypatch.setattr(Lab, "exists", lambda self: True)
    result = CliRunner().invoke(app, ["lab", "up", "--prefix", "mine"])
    assert result.exit_code == 2
    assert result.output.strip() == ("vpnoffload: error: a lab named mine is already up; "
                                     "run 'vpnoffload lab down --prefix mine' first")


def test_a_bad_prefix_is_refused_before_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(app, ["lab", "up", "--prefix", "../etc"])
    assert result.exit_code == 2 and "not a usable lab prefix" in result.output


def test_help_does_not_import_rich() -> None:
    code = "import sys; from vpnoffload.cli.app import app; assert 'rich.console' not in sys.modules"
    proc = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
