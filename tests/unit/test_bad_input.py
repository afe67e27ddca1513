"""Issue 23: bad input across every CLI command, table-driven.

Each row runs one command (typer's CliRunner, a fresh ``init`` in a temp dir) with one bad
value and asserts what a user must get: exactly one line on the terminal (at most ~300
characters, so a 5000-character value is never echoed in full), no traceback, the exit
status for bad input (2, or the documented one), no hang, and nothing changed on disk
(lock files and directory modes included).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpnoffload.cli.app import app

pytestmark = pytest.mark.timeout(30)

ODD_DIGITS = {"superscript": "⁸⁰", "arabic-indic": "٨٠", "full-width": "８０", "math-bold": "𝟖𝟎"}
HUGE_NUMBER = "9" * 5000
HUGE_TEXT = "x" * 5000
MAX_LINE = 300  # exits.MAX_LINE: a list of allowed keys may be long; no value is repeated in full
BAD_INPUT = 2


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """``init`` plus one service: returns the config file; ``tmp_path/odd`` holds odd paths."""
    cfg = tmp_path / "etc" / "vpnoffload.toml"
    for args in (["init", "--vps-address", "203.0.113.10", "--tunnel-subnet", "198.51.100.0/24"],
                 ["service", "add", "blog", "--listen", "80", "--target", "8080", "--hostname", "blog.example.org"]):
        result = CliRunner().invoke(app, ["-c", str(cfg), *args])
        assert result.exit_code == 0, result.output
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "dir").mkdir()
    os.mkfifo(odd / "fifo")
    (odd / "loop").symlink_to(odd / "loop")
    return cfg


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | str | None]]:
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISREG(info.st_mode):
            data: bytes | str | None = path.read_bytes()
        elif stat.S_ISLNK(info.st_mode):
            data = os.readlink(path)
        else:
            data = None
        found[str(path.relative_to(root))] = (info.st_mode, info.st_uid, data)
    return found


def expect_one_line(result, code: int) -> str:
    output = result.output
    assert "Traceback" not in output and result.exception is None or isinstance(result.exception, SystemExit), \
        (result.exception, output[-2000:])
    lines = output.strip("\n").splitlines()
    assert len(lines) == 1, output[:3000]
    assert len(lines[0]) <= MAX_LINE, lines[0][:400]
    assert result.exit_code == code, (result.exit_code, output[:500])
    return lines[0]


# (id, argv after "-c CFG" with {odd}/{tmp} placeholders, exit status, words the line must name)
CASES: list[tuple[str, list[str], int, str]] = []


def case(name: str, argv: list[str], code: int = BAD_INPUT, names: str = "") -> None:
    CASES.append((name, argv, code, names))


for kind, digits in ODD_DIGITS.items():
    case(f"service-add-listen-{kind}", ["service", "add", "web", "--listen", digits, "--target", "8080"], names="listen")
    case(f"service-add-target-{kind}", ["service", "add", "web", "--listen", "81", "--target", digits], names="target")
    case(f"init-port-{kind}", ["init", "--force", "--vps-address", "203.0.113.10", "--port", digits], names="--port")
    case(f"init-address-{kind}", ["init", "--force", "--vps-address", f"203.0.113.{digits}"],
         names="--vps-address")
case("service-add-listen-huge", ["service", "add", "web", "--listen", HUGE_NUMBER, "--target", "8080"], names="listen")
case("service-add-target-huge", ["service", "add", "web", "--listen", "81", "--target", HUGE_NUMBER], names="target")
case("init-port-huge", ["init", "--force", "--vps-address", "203.0.113.10", "--port", HUGE_NUMBER], names="--port")
case("init-port-word", ["init", "--force", "--vps-address", "203.0.113.10", "--port", "abc"], names="--port")
case("service-add-name-huge", ["service", "add", HUGE_TEXT, "--listen", "81", "--target", "8080"])
case("service-add-hostname-huge", ["service", "add", "web", "--listen", "81", "--target", "8080",
                                    "--hostname", HUGE_TEXT], names="hostname")
case("service-add-check-huge", ["service", "add", "web", "--listen", "81", "--target", "8080",
                                "--check", "http:/" + HUGE_TEXT], names="check")
case("service-add-offline-huge", ["service", "add", "web", "--listen", "81", "--target", "8080",
                                  "--check", "http:/", "--hostname", "w.example.org", "--offline-copy", "/" + HUGE_TEXT])
case("service-add-homes-huge", ["service", "add", "web", "--listen", "81", "--target", "8080", "--homes", HUGE_TEXT])
case("service-add-empty-name", ["service", "add", "", "--listen", "81", "--target", "8080"])
case("service-add-empty-listen", ["service", "add", "web", "--listen", "", "--target", "8080"], names="listen")
case("service-add-empty-hostname", ["service", "add", "web", "--listen", "81", "--target", "8080", "--hostname", ""])
case("service-add-unknown-option", ["service", "add", "web", "--listen", "81", "--target", "8080", "--bogus", "1"])
for kind, digits in {**ODD_DIGITS, "huge": HUGE_NUMBER, "empty": ""}.items():
    case(f"service-set-rate-{kind}", ["service", "set", "blog", "--rate", f"{digits}/s"], names="rate")
    case(f"service-set-max-conns-{kind}", ["service", "set", "blog", "--max-conns", digits], names="max_conns")
case("service-set-allow-huge", ["service", "set", "blog", "--allow", HUGE_TEXT], names="allow")
case("service-set-allow-odd", ["service", "set", "blog", "--allow", "١٩٢.0.2.0/24"], names="allow")
case("service-set-clear-huge", ["service", "set", "blog", "--clear", HUGE_TEXT])
case("service-set-unknown", ["service", "set", HUGE_TEXT, "--rate", "10/s"])
case("service-remove-huge", ["service", "remove", HUGE_TEXT])
case("service-remove-empty", ["service", "remove", ""])
case("pki-issue-huge", ["pki", "issue", HUGE_TEXT])
case("pki-issue-empty", ["pki", "issue", ""])
case("pki-issue-odd", ["pki", "issue", "ｈｏｍｅ"])
case("pki-revoke-huge", ["pki", "revoke", HUGE_TEXT])
case("pki-revoke-empty", ["pki", "revoke", ""])
case("init-subnet-huge", ["init", "--force", "--vps-address", "203.0.113.10", "--tunnel-subnet", HUGE_TEXT])
case("init-home-empty", ["init", "--force", "--vps-address", "203.0.113.10", "--home", ""])
case("init-proto-huge", ["init", "--force", "--vps-address", "203.0.113.10", "--proto", HUGE_TEXT], names="--proto")
case("init-onto-existing", ["init", "--vps-address", "203.0.113.10"])
for command in (["render", "vps"], ["render", "home"], ["render", "nginx"], ["render", "haproxy"],
                ["install-service", "vps"]):
    label = "-".join(command)
    case(f"{label}-out-empty", [*command, "--out", ""], names="--out")
    case(f"{label}-out-huge", [*command, "--out", "/" + HUGE_TEXT])
    case(f"{label}-out-fifo", [*command, "--out", "{odd}/fifo"])
    case(f"{label}-out-loop", [*command, "--out", "{odd}/loop"])
    case(f"{label}-out-proc", [*command, "--out", "/proc/self/status"])
    case(f"{label}-out-dev", [*command, "--out", "/dev/null"])
case("render-home-unknown", ["render", "home", "--home", HUGE_TEXT, "--out", "{tmp}/p"])
case("install-service-end-huge", ["install-service", HUGE_TEXT, "--out", "{tmp}/u"])
case("up-home-profile-empty", ["up", "home", "--dry-run", "--profile", ""], names="--profile")
# The options every subcommand's --help lists that the rows above did not reach.
ADD = ["service", "add", "web", "--listen", "81", "--target", "8080"]
case("service-add-proto-huge", [*ADD, "--proto", HUGE_TEXT], names="proto")
case("service-add-proto-empty", [*ADD, "--proto", ""], names="proto")
case("service-add-fallback-huge", [*ADD, "--fallback", HUGE_TEXT], names="fallback")
case("service-add-via-huge", [*ADD, "--via", HUGE_TEXT], names="via")
case("service-add-deny-odd", [*ADD, "--deny", "١٩٢.0.2.0/24"], names="deny")
case("service-add-deny-huge", [*ADD, "--deny", HUGE_TEXT], names="deny")
case("service-add-max-conns-huge", [*ADD, "--max-conns", HUGE_NUMBER], names="max")
for option in ("--allow-file", "--deny-file"):
    for command in (ADD, ["service", "set", "blog"]):
        label = f"{command[1]}{option}"
        case(f"service-{label}-empty", [*command, option, ""], names=option.strip("-").replace("-", "_"))
        case(f"service-{label}-huge", [*command, option, "/" + HUGE_TEXT], names=option.strip("-").replace("-", "_"))
case("service-set-deny-odd", ["service", "set", "blog", "--deny", "８.8.8.8"], names="deny")
case("init-subnet6-huge", ["init", "--force", "--vps-address", "203.0.113.10", "--tunnel-subnet6", HUGE_TEXT],
     names="subnet6")
case("init-subnet6-odd", ["init", "--force", "--vps-address", "203.0.113.10", "--tunnel-subnet6", "fd00:٨٨::/64"],
     names="subnet6")
case("init-local-address-huge", ["init", "--force", "--vps-address", "203.0.113.10", "--local-address", HUGE_TEXT],
     names="local")
case("init-local-address-odd", ["init", "--force", "--vps-address", "203.0.113.10", "--local-address", "١٠.0.0.1"],
     names="local")
case("install-service-home-huge", ["install-service", "home", "--home", HUGE_TEXT, "--out", "{tmp}/u"], names="--home")
case("install-service-home-empty", ["install-service", "home", "--home", "", "--out", "{tmp}/u"], names="--home")
case("up-home-home-huge", ["up", "home", "--dry-run", "--home", HUGE_TEXT], names="--home")
case("up-home-home-odd", ["up", "home", "--dry-run", "--home", "ｈｏｍｅ"], names="--home")
for where in ("{odd}/fifo", "{odd}/loop", "/dev/zero", "/" + HUGE_TEXT):
    case(f"state-dir-{where.split('/')[-1][:8]}-pki-issue", ["--state-dir", where, "pki", "issue", "h2"])


@pytest.mark.parametrize(("name", "argv", "code", "names"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(site: Path, tmp_path: Path, name: str, argv: list[str],
                                                   code: int, names: str) -> None:
    args = [a.replace("{odd}", str(tmp_path / "odd")).replace("{tmp}", str(tmp_path)) for a in argv]
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["-c", str(site), *args])
    line = expect_one_line(result, code)
    assert names in line, line
    assert snapshot(tmp_path) == before


# Odd config and state files: -c pointing at them, or a broken PKI under a good config.
CONFIG_PATHS = {"directory": "{odd}/dir", "fifo": "{odd}/fifo", "symlink-loop": "{odd}/loop",
                "proc": "/proc/self/status", "dev-zero": "/dev/zero", "empty": "", "huge": "/" + HUGE_TEXT}
COMMANDS = (["service", "list"], ["service", "add", "w", "--listen", "81", "--target", "8080"],
            ["pki", "issue", "h2"], ["render", "vps", "--out", "{tmp}/r"], ["status"], ["up", "vps", "--dry-run"])


@pytest.mark.parametrize("where", list(CONFIG_PATHS))
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_odd_config_paths(site: Path, tmp_path: Path, where: str, command: list[str]) -> None:
    path = CONFIG_PATHS[where].replace("{odd}", str(tmp_path / "odd"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["-c", path, *args])
    expect_one_line(result, BAD_INPUT)
    assert snapshot(tmp_path) == before


def _break_index(pki: Path, how: str) -> None:
    index = pki / "index.json"
    if how == "empty":
        index.write_text("")
    elif how == "directory":
        index.unlink()
        index.mkdir()
    elif how == "missing":
        index.unlink()
    elif how == "garbage":
        index.write_text('{"certs": [1, 2, "' + HUGE_TEXT + '"]}')
    elif how == "unreadable":
        index.chmod(0)


@pytest.mark.parametrize("how", ["empty", "directory", "missing", "garbage", "unreadable"])
@pytest.mark.parametrize("command", (["pki", "list"], ["pki", "issue", "h2"], ["pki", "revoke", "home"],
                                     ["render", "vps", "--out", "{tmp}/r"], ["render", "home", "--out", "{tmp}/p"]),
                         ids=lambda c: "-".join(c[:2]))
def test_broken_pki_state(site: Path, tmp_path: Path, how: str, command: list[str]) -> None:
    if how == "unreadable" and os.geteuid() == 0:
        pytest.skip("by design: root reads a file of mode 0")
    _break_index(site.parent / "state" / "pki", how)
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["-c", str(site), *args])
    expect_one_line(result, BAD_INPUT)
    assert snapshot(tmp_path) == before


def test_an_unreadable_config_is_one_line(site: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("by design: root reads a file of mode 0")
    site.chmod(0)
    result = CliRunner().invoke(app, ["-c", str(site), "service", "list"])
    expect_one_line(result, BAD_INPUT)


# ------------------------------------------------------------------ commands that need root or a lab
# doctor, down, lab and watch must refuse bad input before they touch anything: the OS layer
# (backends, prerequisite probes, every external command) is replaced by one that fails the
# test if it is reached, so a row passes only when the refusal comes first.


class Touched(BaseException):
    """Raised by the faked OS layer; a BaseException so no ``except Exception`` hides it."""


@pytest.fixture
def os_faked(monkeypatch: pytest.MonkeyPatch) -> None:
    from vpnoffload import deploy, proc
    from vpnoffload.deploy import doctor
    from vpnoffload.lab import steps

    def touched(*args: object, **kwargs: object) -> None:
        raise Touched(f"the OS layer was reached: {args[:1]!r}")

    monkeypatch.setattr(deploy.Backends, "real", staticmethod(touched))
    monkeypatch.setattr(doctor, "require_prerequisites", touched)
    monkeypatch.setattr(doctor, "all_checks", touched)
    monkeypatch.setattr(steps, "check_prerequisites", touched)
    monkeypatch.setattr(proc, "run", touched)
    monkeypatch.setattr(proc, "start", touched)


ODD_PATHS = {"directory": "{odd}/dir", "fifo": "{odd}/fifo", "symlink-loop": "{odd}/loop", "proc": "/proc/self/status",
             "dev-zero": "/dev/zero", "huge": "/" + HUGE_TEXT}
ROOT_CASES: list[tuple[str, list[str], str]] = []
for kind, where in ODD_PATHS.items():
    if kind != "proc":  # a /proc file is a regular file: doctor reads it and refuses it as TOML (a CONFIG_PATHS row)
        ROOT_CASES.append((f"doctor-config-{kind}", ["-c", where, "doctor"], "--config"))
        ROOT_CASES.append((f"down-vps-config-{kind}", ["-c", where, "down", "vps"], "--config"))
        ROOT_CASES.append((f"down-home-profile-{kind}", ["-c", "{cfg}", "down", "home", "--profile", where], "--profile"))
    if kind != "directory":  # an empty directory is a state dir with nothing in it yet
        for command in (["doctor"], ["down", "vps"], ["down", "vps", "--dry-run"], ["down", "home"],
                        ["down", "home", "--home", "home"]):
            ROOT_CASES.append((f"{'-'.join(command)}-state-dir-{kind}", ["-c", "{cfg}", "--state-dir", where, *command],
                               "--state-dir"))
for kind, name in {**ODD_DIGITS, "huge": HUGE_TEXT, "empty": "", "newline": "home\n", "wide": "ｈｏｍｅ"}.items():
    ROOT_CASES.append((f"down-home-home-{kind}", ["-c", "{cfg}", "down", "home", "--home", name], "--home"))
    for sub in ("up", "demo", "down"):
        ROOT_CASES.append((f"lab-{sub}-prefix-{kind}", ["lab", sub, "--prefix", name], "--prefix"))
for sub in ("up", "demo", "down"):
    ROOT_CASES.append((f"lab-{sub}-prefix-dash", ["lab", sub, "--prefix", "-x"], "--prefix"))
    ROOT_CASES.append((f"lab-{sub}-prefix-41", ["lab", sub, "--prefix", "a" * 41], "--prefix"))
DAMAGED_RECORDS = {"empty": "", "list": "[]", "sysctl-list": '{"sysctl": [1, 2]}', "address-int": '{"addresses": [5]}',
                   "address-short": '{"addresses": [["eth0"]]}', "user-int": '{"created_user": 7}',
                   "sysctl-huge": '{"sysctl": {"' + HUGE_TEXT + '": "1"}}', "deep": "[" * 5000 + "]" * 5000,
                   "slot": '{"slot": 99}', "openings": '{"host_openings": ["x"]}'}


@pytest.mark.parametrize(("name", "argv", "names"), ROOT_CASES, ids=[c[0] for c in ROOT_CASES])
def test_root_commands_refuse_bad_input_first(site: Path, tmp_path: Path, os_faked: None, name: str,
                                              argv: list[str], names: str) -> None:
    args = [a.replace("{odd}", str(tmp_path / "odd")).replace("{cfg}", str(site)) for a in argv]
    before = snapshot(tmp_path)
    line = expect_one_line(CliRunner().invoke(app, args), BAD_INPUT)
    assert names in line, line
    assert snapshot(tmp_path) == before


def _damage(path: Path, how: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "directory":
        path.mkdir()
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "loop":
        path.symlink_to(path)
    else:
        path.write_text(DAMAGED_RECORDS[how])


@pytest.mark.parametrize("how", ["directory", "fifo", "loop", *DAMAGED_RECORDS])
@pytest.mark.parametrize("end", ["vps", "home"])
def test_down_refuses_a_damaged_record_before_touching_anything(site: Path, tmp_path: Path, os_faked: None,
                                                                 end: str, how: str) -> None:
    """What ``up`` recorded is what ``down`` restores: a damaged record (or a FIFO there,
    which used to hang) is one line naming the file, before any lock or backend."""
    record = site.parent / "state" / "run" / ("vps.json" if end == "vps" else "home-home.json")
    _damage(record, how)
    before = snapshot(tmp_path)
    line = expect_one_line(CliRunner().invoke(app, ["-c", str(site), "down", end]), BAD_INPUT)
    assert record.name in line, line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("how", ["empty", "directory", "missing", "garbage"])
def test_doctor_refuses_a_damaged_pki(site: Path, tmp_path: Path, os_faked: None, how: str) -> None:
    """doctor said "all ok" over a PKI that ``up vps`` then refused."""
    _break_index(site.parent / "state" / "pki", how)
    before = snapshot(tmp_path)
    line = expect_one_line(CliRunner().invoke(app, ["-c", str(site), "doctor"]), BAD_INPUT)
    assert "pki" in line, line
    assert snapshot(tmp_path) == before


def test_down_with_nothing_recorded_writes_nothing(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``down`` that finds nothing to undo creates no run directory and no lock file."""
    from tests.fakes import deploy_env
    from vpnoffload import deploy
    from vpnoffload.deploy import doctor

    (tmp_path / "fake").mkdir()
    backends = deploy_env(tmp_path / "fake")[2]
    monkeypatch.setattr(deploy.Backends, "real", staticmethod(lambda: backends))
    monkeypatch.setattr(doctor, "require_prerequisites", lambda: None)
    before = snapshot(site.parent)
    for end in ("vps", "home"):
        result = CliRunner().invoke(app, ["-c", str(site), "down", end])
        assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    assert snapshot(site.parent) == before


@pytest.mark.parametrize(("name", "argv", "names"), [
    ("config-fifo", ["-c", "{odd}/fifo", "watch"], "--config"),
    ("config-loop", ["-c", "{odd}/loop", "watch"], "--config"),
    ("config-directory", ["-c", "{odd}/dir", "watch"], "--config"),
    ("config-dev-zero", ["-c", "/dev/zero", "watch"], "/dev/zero"),
    ("config-proc", ["-c", "/proc/self/status", "watch"], "TOML"),
    ("config-huge", ["-c", "/" + HUGE_TEXT, "watch"], "long"),
    ("config-empty", ["-c", "", "watch"], "-c"),
    ("state-dir-fifo", ["-c", "{cfg}", "--state-dir", "{odd}/fifo", "watch"], "--state-dir"),
    ("state-dir-loop", ["-c", "{cfg}", "--state-dir", "{odd}/loop", "watch"], "--state-dir"),
    ("state-dir-dev-zero", ["-c", "{cfg}", "--state-dir", "/dev/zero", "watch"], "--state-dir"),
    ("state-dir-empty", ["-c", "{cfg}", "--state-dir", "", "watch"], "--state-dir"),
    ("extra-huge", ["-c", "{cfg}", "watch", HUGE_TEXT], "unexpected"),
    ("config-deep", ["-c", "{deep}", "watch"], "nested"),
    ("config-huge-number", ["-c", "{number}", "watch"], "digits"),
])
def test_watch_refuses_bad_input_before_it_starts(site: Path, tmp_path: Path, name: str, argv: list[str],
                                                  names: str) -> None:
    """The real entry point (typer skipped, the lean watchdog exec'd), in a throw-away config
    dir: every refusal comes from reading the config, before a port is held or a rule read."""
    import subprocess
    import sys

    (tmp_path / "deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000)
    (tmp_path / "number.toml").write_text("x = " + HUGE_NUMBER)
    args = [a.replace("{odd}", str(tmp_path / "odd")).replace("{cfg}", str(site))
            .replace("{deep}", str(tmp_path / "deep.toml")).replace("{number}", str(tmp_path / "number.toml"))
            for a in argv]
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "vpnoffload", *args], capture_output=True, text=True, timeout=20,
                          cwd=tmp_path)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == BAD_INPUT and len(lines) == 1, (done.returncode, lines[:5])
    assert len(lines[0]) <= MAX_LINE and "Traceback" not in lines[0] and names in lines[0], lines[0][:400]
    assert snapshot(tmp_path) == before


def test_the_table_covers_every_command() -> None:
    """A new command gets rows here too."""
    import typer.main

    group = typer.main.get_command(app)
    covered = {" ".join(argv[:2]) for _, argv, _, _ in CASES} | {" ".join(argv[:1]) for _, argv, _, _ in CASES}
    covered |= {" ".join(c[:2]) for c in COMMANDS} | {"status", "service list", "pki list"}
    for _, argv, _ in ROOT_CASES:
        words = [a for a in argv if not a.startswith(("-", "{", "/"))]
        covered |= {" ".join(words[:2]), words[0]}
    covered.add("watch")  # test_watch_refuses_bad_input_before_it_starts
    missing = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(command, "commands", None)
        for sub in (subs or {None: None}):
            full = f"{name} {sub}" if sub else name
            if full not in covered:
                missing.append(full)
    assert not missing, missing


def test_a_service_past_the_marks_room_is_refused_when_added_and_when_read(site: Path, tmp_path: Path) -> None:
    """Each service gets 8 bits of the conntrack mark: the 256th is refused by ``service add``
    (nothing written), and a config edited by hand to hold it by every command that reads it,
    not first by ``up vps``."""
    from vpnoffload.model import MAX_SERVICES

    more = "".join(f'\n[services.s{i}]\nlisten = "{1000 + i}"\ntarget = "8080"\n' for i in range(MAX_SERVICES - 1))
    site.write_text(site.read_text() + more)  # blog and these: exactly MAX_SERVICES
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["-c", str(site), "service", "add", "one-more", "--listen", "81",
                                      "--target", "8080"])
    line = expect_one_line(result, BAD_INPUT)
    assert line == f"vpnoffload: error: services: at most {MAX_SERVICES} services are supported, not {MAX_SERVICES + 1}"
    assert snapshot(tmp_path) == before
    site.write_text(site.read_text() + '\n[services.one-more]\nlisten = "81"\ntarget = "8080"\n')
    for command in (["render", "vps", "--out", str(tmp_path / "r")], ["up", "vps", "--dry-run"]):
        result = CliRunner().invoke(app, ["-c", str(site), *command])
        assert expect_one_line(result, BAD_INPUT).endswith(f"services: at most {MAX_SERVICES} services are supported, "
                                                          f"not {MAX_SERVICES + 1}"), command
        assert not (tmp_path / "r").exists()
