"""The lean VPS processes (issue 14): what they import, the snapshot child, the state file
writer without json, the page server kept only while needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vpnoffload import model
from vpnoffload.errors import ConfigError
from vpnoffload import watchfile
from vpnoffload.watch import health, loop
from vpnoffload.lean import snapshot, spawn
from vpnoffload.watch.decide import Watchdog

#: Each of these costs the watchdog or page server >= 0.3 MB resident and is not needed in their loops.
HEAVY = {"typing", "logging", "json", "re", "subprocess", "pathlib", "dataclasses", "tomllib", "ipaddress",
         "argparse", "ssl", "site", "vpnoffload.model", "vpnoffload.config", "vpnoffload.paths"}

CONFIG = """\
[vps]
address = "203.0.113.10"
[homes.home]
address = "10.88.0.2"
[services.blog]
listen = "80"
target = "8080"
fallback = "page"
hostname = "blog.example.org"
check = "http:/"
[services.git]
listen = "22"
target = "2222"
"""


@pytest.mark.parametrize("module", ["vpnoffload.watch.loop", "vpnoffload.fallback.pageserver"])
def test_lean_processes_import_nothing_heavy(module: str) -> None:
    argv = spawn.lean_argv("json", "")[:4]  # python -I -S -c
    code = (f"import sys; sys.path.insert(0, {spawn.ROOT!r}); import {module}; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([*argv[:4], code], capture_output=True, text=True, timeout=30, check=True).stdout
    assert HEAVY.isdisjoint(out.split()), sorted(HEAVY & set(out.split()))


def test_lean_argv_is_isolated_without_site() -> None:
    argv = spawn.lean_argv("vpnoffload.watch.loop", "--config", "/c")
    assert argv[1:3] == ["-I", "-S"] and argv[-2:] == ["--config", "/c"]
    assert b"vpnoffload" in " ".join(argv).encode() and "watch" in " ".join(argv)  # what watchfile.watch_pid looks for
    assert spawn.full_argv("m", "a") == [sys.executable, "-I", "-m", "m", "a"]


def test_health_mark_is_the_models() -> None:
    assert health.HEALTH_MARK == model.HEALTH_MARK


@pytest.mark.parametrize("value", [{"a": [1, 2.5, None, True, False, "x\"\\\n\x01é\u2028"], "b": {}}, [], "", -3, 1e-9])
def test_state_dumps_is_json(value: object) -> None:
    assert json.loads(watchfile.dumps(value)) == value


def test_state_dumps_refuses_what_json_would_not_read() -> None:
    with pytest.raises(ValueError, match="not representable in JSON"):
        watchfile.dumps(float("nan"))
    with pytest.raises(TypeError, match="keys must be str"):
        watchfile.dumps({1: 2})
    with pytest.raises(TypeError, match="not JSON serialisable"):
        watchfile.dumps(object())


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "watch.json"
    watchfile.write_state(path, {"pid": 7, "services": [{"name": "blog", "active": None}]})
    assert watchfile.believed_targets(watchfile.read_state(path)) == {"blog": None}
    path.write_text("{not json")
    assert watchfile.read_state(path) is None and watchfile.believed_targets(None) == {}


def test_spawn_communicate_and_timeout() -> None:
    child = spawn.spawn([sys.executable, "-c", "import sys; d = sys.stdin.read(); print(d.upper()); "
                                               "print('e', file=sys.stderr); sys.exit(3)"],
                        stdin=True, stdout=True, stderr=True)
    out, err = child.communicate(b"hi", 10)
    assert (out.strip(), err.strip(), child.returncode) == (b"HI", b"e", 3)
    slow = spawn.spawn([sys.executable, "-c", "import time; time.sleep(30)"], stdout=True)
    with pytest.raises(TimeoutError, match="did not finish within"):
        slow.communicate(b"", 0.2)
    slow.kill()
    assert slow.returncode is not None


def test_snapshot_child_gives_a_config_the_watchdog_runs_on(tmp_path: Path) -> None:
    cfg = tmp_path / "vpnoffload.toml"
    cfg.write_text(CONFIG)
    data = snapshot.fetch(str(cfg))
    view = snapshot.ConfigView(data)
    assert data["paths"]["watch_state"] == str(tmp_path / "state" / "run" / "watch.json")
    assert data["server_running"] is False and data["believed"] == {}
    blog = view.services["blog"]
    assert (blog.listen_address, blog.listen_port, blog.serves_page, blog.check.kind) == ("203.0.113.10", 80, True, "http")
    assert view.homes["home"].address == "10.88.0.2" and view.watch.fall == 2
    swaps = []
    dog = Watchdog(view, lambda a, f: swaps.append((dict(a), f)),
                   lambda s, h, c: health.Result("down", 0.01, "refused"))
    dog.start()
    assert swaps == [({"blog": None, "git": None}, frozenset({"blog", "git"}))] and dog.page_needed()
    json.loads(watchfile.dumps(dog.snapshot()))


def test_snapshot_child_reports_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "vpnoffload.toml"
    cfg.write_text(CONFIG.replace('"80"', '"eighty"'))
    with pytest.raises(ConfigError, match="services.blog"):
        snapshot.fetch(str(cfg))


class FakePages:
    def __init__(self) -> None:
        self.up, self.log = False, []

    def spawn(self) -> None:
        if not self.up:
            self.up = True
            self.log.append("start")

    def wait_ready(self, timeout: float) -> None:
        self.log.append("ready")

    def running(self) -> bool:
        return self.up

    def stop(self) -> None:
        self.up = False
        self.log.append("stop")


def test_page_server_runs_only_while_needed_and_lingers() -> None:
    now = [0.0]
    fake = FakePages()
    keeper = loop.PageKeeper(fake, linger=5, clock=lambda: now[0])  # type: ignore[arg-type]
    keeper.update(False)
    assert fake.log == []  # steady: no page server at all
    keeper.update(True)
    keeper.ready()
    assert fake.log == ["start", "ready"]
    for t in (1.0, 3.0, 5.9):  # home back: it stays PAGE_LINGER s (a flapping home does not restart it)
        now[0] = t
        keeper.update(False)
    assert fake.up
    now[0] = 6.1
    keeper.update(False)
    assert fake.log[-1] == "stop" and not fake.up


def test_one_option_parser_for_the_children() -> None:
    from vpnoffload.lean import options

    assert options.parse(["--config", "/c", "--state-dir=/s", "-v"], values=("--config", "--state-dir"),
                         flags=("-v",), required=("--config",)) == {"--config": "/c", "--state-dir": "/s", "-v": True}
    assert options.parse(["--pidfile", "/p", "--", "up", "--x"], values=("--pidfile",), rest=True) == {
        "--pidfile": "/p", "--": ["up", "--x"]}
    for argv, message in ((["--bogus"], "unknown option '--bogus'"), (["--config"], "--config needs a value"),
                          ([], "--config is required")):
        with pytest.raises(ConfigError, match=message):
            options.parse(argv, values=("--config",), required=("--config",))


def test_the_swap_child_starts_without_setuptools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its warm start (python-iptables loaded) pulls in neither setuptools' distutils nor pkg_resources:
    they were half of the CPU every pre-forked child cost, also the ones a passing doubt lets go."""
    started: list[dict[str, object]] = []
    monkeypatch.setattr(loop.spawn, "spawn", lambda argv, **kw: started.append({"argv": argv, **kw}) or "child")
    loop.SubprocessSwapper("/c").prepare()
    assert started[0]["argv"] == spawn.full_argv("vpnoffload.watch.swap", "--config", "/c")
    env = started[0]["env"]
    assert isinstance(env, dict) and env["SETUPTOOLS_USE_DISTUTILS"] == "stdlib" and env["PATH"]
    code = ("import sys; from vpnoffload.firewall import iptc; iptc._iptc(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'setuptools', 'pkg_resources', 'iptc'}))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env=env).stdout
    assert out.split("\n")[-2] == "['iptc']"


def test_unshare_without_the_ctypes_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Python < 3.12 the probe thread's unshare goes through ``_ctypes`` alone (ctypes: ~0.2 MB more)."""
    import errno

    from vpnoffload.watch import probe

    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); from vpnoffload.watch import probe; "
            "print(probe._libc_call('getpid')() == os.getpid(), 'ctypes' in sys.modules)")
    out = subprocess.run([*spawn.lean_argv("json", "")[:4], code, spawn.ROOT], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.split() == ["True", "False"]
    if hasattr(probe.os, "unshare"):
        monkeypatch.delattr(probe.os, "unshare")
    called: list[tuple[str, int]] = []

    def refused(name: str):  # what libc does without CAP_SYS_ADMIN: -1, errno EPERM
        def call(flags: int) -> int:
            import _ctypes

            called.append((name, flags))
            _ctypes.set_errno(errno.EPERM)
            return -1
        return call

    monkeypatch.setattr(probe, "_libc_call", refused)
    with pytest.raises(OSError, match=r"unshare\(CLONE_NEWNET\)") as err:
        probe.unshare_net()
    assert err.value.errno == errno.EPERM and called == [("unshare", 0x40000000)]
