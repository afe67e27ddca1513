"""Issue 15: each hole a security review found, as a test that failed on the code before the fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.prereq import need, tool_problem
from vpnoffload.cli.app import app
from vpnoffload.errors import ConfigError

CONFIG = """[vps]
address = "203.0.113.10"

[tunnel]
subnet = "198.51.100.0/24"

[homes.home]
address = "198.51.100.2"
"""


def run(cfgfile: Path, *args: str):
    return CliRunner().invoke(app, ["-c", str(cfgfile), *args])


def cli(cfgfile: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vpnoffload", "-c", str(cfgfile), *args],
                          capture_output=True, text=True, timeout=timeout, cwd="/")


def one_line_exit_2(result) -> None:
    """Exit 2, one line, no traceback."""
    output = result.output if hasattr(result, "output") else result.stdout + result.stderr
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code == 2, output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1, output
    assert len(output) < 400, output


@pytest.fixture
def cfgfile(tmp_path: Path) -> Path:
    path = tmp_path / "vpnoffload.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A config and PKI made by `init`."""
    cfg = tmp_path / "etc" / "vpnoffload.toml"
    result = run(cfg, "init", "--vps-address", "203.0.113.10", "--tunnel-subnet", "198.51.100.0/24")
    assert result.exit_code == 0, result.output
    return cfg


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----- root processes import nothing from the cwd ------------------------------------------


def test_the_page_daemon_runs_isolated_from_root(tmp_path: Path) -> None:
    """The page server is started as ``python -I -S``: nothing from the cwd or PYTHON* variables."""
    from vpnoffload.fallback import pagectl

    run = tmp_path / "state" / "run"
    argv = pagectl.PageDaemon(str(tmp_path / "c.toml"), str(tmp_path / "state"), str(run), str(run / "pages")).argv()
    assert argv[1:3] == ["-I", "-S"] and "vpnoffload.fallback.pageserver" in argv[4]


def test_units_run_python_isolated_from_root() -> None:
    from vpnoffload.deploy.units import units
    from vpnoffload.paths import Paths

    for text in units(Paths(Path("/etc/vpnoffload/vpnoffload.toml"), Path("/etc/vpnoffload/state")), "vps").values():
        assert "WorkingDirectory=/\n" in text
        assert all(" -I -m vpnoffload " in line for line in text.splitlines() if line.startswith("Exec"))


def test_an_isolated_child_ignores_a_planted_module(tmp_path: Path) -> None:
    from vpnoffload.proc import python_argv

    (tmp_path / "argparse.py").write_text("raise SystemExit('planted module ran')\n")
    proc = subprocess.run(python_argv("vpnoffload", "--version"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "planted" not in proc.stderr


# ----- render --out --------------------------------------------------------------------


def test_render_nginx_keeps_the_out_dirs_mode_and_refuses_a_symlinked_pages(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG + '[services.blog]\nlisten = "80"\ntarget = "8080"\nhostname = "blog.example.org"\n'
                            'via = "proxy"\ncheck = "http:/"\n')
    out = tmp_path / "shared"
    out.mkdir()
    out.chmod(0o1777)
    assert run(cfg, "render", "nginx", "--out", str(out)).exit_code == 0
    assert out.stat().st_mode & 0o7777 == 0o1777
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "other.html").write_text("theirs")
    shutil.rmtree(out / "pages")
    (out / "pages").symlink_to(elsewhere)
    result = run(cfg, "render", "nginx", "--out", str(out))
    one_line_exit_2(result)
    assert "symlink" in result.output and tree(elsewhere) == {"other.html": b"theirs"}


# ----- locks ---------------------------------------------------------------------------


def test_parallel_service_adds_keep_all_eight(cfgfile: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "vpnoffload", "-c", str(cfgfile), "service", "add", f"s{i}",
                               "--listen", str(8000 + i), "--target", str(9000 + i)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/")
             for i in range(8)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outputs
    from vpnoffload import config as cfg

    assert sorted(cfg.load(cfgfile).services) == sorted(f"s{i}" for i in range(8))


def test_parallel_pki_issues_get_distinct_addresses(installed: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "vpnoffload", "-c", str(installed), "pki", "issue", f"h{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/")
             for i in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    from vpnoffload import config as cfg

    config = cfg.load(installed)
    addresses = [config.homes[f"h{i}"].address for i in range(4)]
    assert len(set(addresses)) == 4
    index = json.loads((installed.parent / "state/pki/index.json").read_text())
    assert {f"h{i}" for i in range(4)} <= set(index["certs"])


# ----- reserved names, one name rule, fullmatch ---------------------------------------------


@pytest.mark.parametrize("name", ["server", "ca", "default", "DEFAULT", "crl", "index", "tls-crypt"])
def test_reserved_names_are_refused_everywhere(cfgfile: Path, name: str) -> None:
    from vpnoffload import config as cfg

    with pytest.raises(ConfigError, match=r"^homes\.(\S+): '\1' is (reserved|not a valid name)"):
        cfg.parse_text(CONFIG.replace("[homes.home]", f"[homes.{name}]"))
    with pytest.raises(ConfigError, match=r"^services\.(\S+): '\1' is (reserved|not a valid name)"):
        cfg.parse_text(CONFIG + f'[services.{name}]\nlisten = "80"\ntarget = "80"\n')
    one_line_exit_2(run(cfgfile, "service", "add", name, "--listen", "80", "--target", "80"))


def test_a_home_named_server_by_hand_never_gets_the_servers_key(installed: Path, tmp_path: Path) -> None:
    installed.write_text(installed.read_text().replace("[homes.home]", "[homes.server]"))
    result = run(installed, "render", "home", "--home", "server", "--out", str(tmp_path / "p"))
    one_line_exit_2(result)
    assert "reserved" in result.output and not (tmp_path / "p").exists()


def test_one_name_rule_for_config_and_pki() -> None:
    from vpnoffload import config as cfg
    from vpnoffload import pki

    for good in ("a", "home-2", "x" * 32):
        assert cfg.check_name(good, "f") == pki.check_name(good) == good
    for bad in ("x" * 33, "Home", "a.b", "a\n", "-a"):
        with pytest.raises(ConfigError, match="is not a valid name"):
            cfg.check_name(bad, "f")
        with pytest.raises(ConfigError, match="is not a valid name"):
            pki.check_name(bad)


@pytest.mark.parametrize("text", [
    CONFIG.replace("[homes.home]", '[homes."home\\n"]'),
    CONFIG.replace('address = "203.0.113.10"', 'address = "203.0.113.10"\ninterface = "eth0\\n"'),
    CONFIG + '[services.blog]\nlisten = "80"\ntarget = "80"\nhostname = "blog.example.org\\n"\n',
    CONFIG + '[services.blog]\nlisten = "80"\ntarget = "80"\ncheck = "http:/\\n"\n',
])
def test_a_trailing_newline_is_refused(text: str) -> None:
    from vpnoffload import config as cfg

    with pytest.raises(ConfigError, match=r"\\n' is not"):
        cfg.parse_text(text)


# ----- bad input: one line, exit 2 ------------------------------------------------------------


@pytest.mark.parametrize("listen", ["²", "9" * 5000, "١٠٨٠", "８０", "203.0.113.10:²", "80\n"])
def test_bad_listen_is_one_line(cfgfile: Path, listen: str) -> None:
    before = cfgfile.read_bytes()
    one_line_exit_2(run(cfgfile, "service", "add", "blog", "--listen", listen, "--target", "8080"))
    assert cfgfile.read_bytes() == before


@pytest.mark.parametrize("extra", ['[tunnel]\nport = ' + "9" * 5000, "x = " + "[" * 5000 + "]" * 5000,
                                   '[services.a]\nlisten = "٨٠"\ntarget = "80"\n'])
def test_bad_toml_is_one_line(tmp_path: Path, extra: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.replace("[tunnel]\n", "[tunnel_old]\n") if "[tunnel]" in extra else CONFIG)
    if "[tunnel]" in extra:
        cfg.write_text('[vps]\naddress = "203.0.113.10"\n' + extra + '\n[homes.home]\naddress = "10.88.0.2"\n')
    elif extra.startswith("x"):
        cfg.write_text(extra + "\n" + CONFIG)
    else:
        cfg.write_text(CONFIG + extra)
    one_line_exit_2(run(cfg, "service", "list"))


def test_dev_zero_and_a_fifo_are_refused_without_hanging(tmp_path: Path) -> None:
    one_line_exit_2(cli(Path("/dev/zero"), "service", "list", timeout=30))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = cli(fifo, "service", "list", timeout=30)
    one_line_exit_2(result)
    assert "not a regular file" in result.stderr


# ----- exit 2 means nothing changed ------------------------------------------------------------


def test_revoking_the_only_home_changes_nothing(installed: Path) -> None:
    before = tree(installed.parent)
    one_line_exit_2(run(installed, "pki", "revoke", "home"))
    assert tree(installed.parent) == before


def test_init_with_a_reserved_home_leaves_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "vpnoffload.toml"
    one_line_exit_2(run(cfg, "init", "--vps-address", "203.0.113.10", "--home", "server"))
    assert not (tmp_path / "etc").exists()


def test_init_force_onto_a_directory_changes_nothing(installed: Path, tmp_path: Path) -> None:
    as_dir = tmp_path / "dir.toml"
    as_dir.mkdir()
    state = installed.parent / "state"
    before = tree(state)
    result = CliRunner().invoke(app, ["-c", str(as_dir), "--state-dir", str(state), "init", "--vps-address",
                                      "203.0.113.10", "--force"])
    one_line_exit_2(result)
    assert tree(state) == before and list(as_dir.iterdir()) == []


def test_a_failed_pki_issue_changes_nothing(installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vpnoffload.config import edits

    def fail(path: Path, text: str) -> None:
        raise ConfigError("disk full", field=str(path))

    before = tree(installed.parent)
    monkeypatch.setattr(edits, "write_config", fail)
    one_line_exit_2(run(installed, "pki", "issue", "attic"))
    assert tree(installed.parent) == before


def test_a_pki_issue_that_fails_in_the_pki_leaves_the_config(installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vpnoffload.pki import Pki

    def fail(self: Pki, name: str) -> None:
        raise ConfigError("no entropy")

    before = installed.read_bytes()
    stat_before = installed.stat().st_mtime_ns
    monkeypatch.setattr(Pki, "issue", fail)
    one_line_exit_2(run(installed, "pki", "issue", "attic"))
    assert installed.read_bytes() == before and installed.stat().st_mtime_ns == stat_before


# ----- symlinked config, umask ------------------------------------------------------------------


def test_editing_a_symlinked_config_keeps_the_link(cfgfile: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.toml"
    link.symlink_to(cfgfile)
    assert run(link, "service", "add", "blog", "--listen", "80", "--target", "8080").exit_code == 0
    assert link.is_symlink() and "[services.blog]" in cfgfile.read_text()


def test_umask_000_still_makes_private_state(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        cfg = tmp_path / "etc" / "vpnoffload.toml"
        assert run(cfg, "init", "--vps-address", "203.0.113.10").exit_code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "etc").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "etc/state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "etc/state/pki").stat().st_mode & 0o777 == 0o700
    assert cfg.stat().st_mode & 0o777 == 0o644


# ----- quoting, sandbox, render errors ----------------------------------------------------------


def test_units_quote_paths_and_verify(tmp_path: Path) -> None:
    from vpnoffload.deploy.units import units
    from vpnoffload.paths import Paths

    odd = tmp_path / "my etc" / "100%$HOME"
    found = units(Paths(odd / "vpnoffload.toml", odd / "state"), "home", "home")
    body = found["vpnoffload-home.service"]
    assert '"' in body and "%%" in body and "$$HOME" in body
    need(tool_problem("systemd-analyze", "apt-get install systemd"))
    unit = tmp_path / "vpnoffload-home.service"
    unit.write_text(body.replace(sys.executable, "/usr/bin/python3"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.stdout + proc.stderr == ""


def test_the_openvpn_wrapper_quotes_its_paths() -> None:
    from vpnoffload.tunnel import wrapper_text

    text = wrapper_text(Path("/srv/my state/server"), "server.conf")
    assert 'cd "/srv/my state/server"\n' in text
    with pytest.raises(ConfigError, match="cannot be written into an OpenVPN config"):
        wrapper_text(Path("/srv/x\nscript-security 3"), "server.conf")


def test_custom_page_templates_are_sandboxed(tmp_path: Path) -> None:
    from vpnoffload import config as cfg
    from vpnoffload.render.pages import render_page

    page = tmp_path / "page.html"
    page.write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    config = cfg.parse_text(CONFIG + f'[services.blog]\nlisten = "80"\ntarget = "80"\npage = "{page}"\n')
    with pytest.raises(ConfigError, match="services.blog.page"):
        render_page(config, config.services["blog"])


def test_render_errors_name_the_field_and_cut_huge_values(cfgfile: Path, tmp_path: Path) -> None:
    cfgfile.write_text(CONFIG + '[services.blog]\nlisten = "80"\ntarget = "8080"\nhostname = "blog.example.org"\n'
                                'via = "proxy"\n')
    result = run(cfgfile, "render", "nginx", "--out", str(tmp_path / ("a b" + "x" * 5000)))
    one_line_exit_2(result)
    assert "--out" in result.output


def test_the_watchdog_makes_its_run_dir_private_whatever_the_umask(tmp_path: Path) -> None:
    import os

    from vpnoffload.watch import loop

    old = os.umask(0)
    try:
        loop._private_dir(str(tmp_path / "state" / "run"))
    finally:
        os.umask(old)
    for path in (tmp_path / "state", tmp_path / "state" / "run"):
        assert oct(path.stat().st_mode & 0o777) == "0o700", path
