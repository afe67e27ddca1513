"""The CLI through typer's CliRunner: one-line errors, exit codes, untouched files."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpnoffload.cli.app import app

CONFIG = """# hand-written comment
[vps]
address = "203.0.113.10"

[tunnel]
subnet = "10.88.0.0/24"

[homes.home]
address = "10.88.0.2"
"""


@pytest.fixture
def cfgfile(tmp_path: Path) -> Path:
    path = tmp_path / "vpnoffload.toml"
    path.write_text(CONFIG)
    return path


def run(cfgfile: Path, *args: str):
    return CliRunner().invoke(app, ["-c", str(cfgfile), *args])


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("vpnoffload ")


@pytest.mark.parametrize("cmd", [[], ["service"], ["pki"], ["render"], ["up"], ["down"], ["init"], ["doctor"],
                                 ["service", "add"], ["up", "vps"], ["up", "home"], ["down", "vps"], ["render", "home"]])
def test_help_everywhere(cmd: list[str]) -> None:
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_service_add_list_remove_keeps_comments(cfgfile: Path) -> None:
    result = run(cfgfile, "service", "add", "blog", "--listen", "80", "--target", "8080", "--check", "http:/", "--hostname", "blog.example.org")
    assert result.exit_code == 0, result.output
    assert "203.0.113.10:80/tcp -> home:8080" in result.output
    assert "# hand-written comment" in cfgfile.read_text()
    listing = run(cfgfile, "service", "list")
    assert "blog" in listing.output and "blog.example.org" in listing.output
    assert run(cfgfile, "service", "remove", "blog").exit_code == 0
    assert "blog" not in run(cfgfile, "service", "list").output


@pytest.mark.parametrize(
    "args,words",
    [
        (["--listen", "70000", "--target", "8080"], "services.web.listen: 70000 is not a port"),
        (["--listen", "80", "--target", "garage:8080"], "unknown home box 'garage'"),
        (["--listen", "1.2.3:80", "--target", "8080"], "services.web.listen: '1.2.3' is not an IPv4 address"),
        (["--listen", "80", "--target", "8080", "--proto", "icmp"], "services.web.proto"),
        (["--listen", "80", "--target", "8080", "--check", "ping"], "services.web.check"),
        (["--listen", "80", "--target", "8080", "--hostname", "-bad-"], "services.web.hostname"),
        (["--listen", "1194", "--target", "8080", "--proto", "udp", "--check", "tcp"], "tunnel's own port"),
    ],
)
def test_bad_service_is_one_line_exit_2_file_untouched(cfgfile: Path, args: list[str], words: str) -> None:
    before = cfgfile.read_bytes()
    result = run(cfgfile, "service", "add", "web", *args)
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("vpnoffload: error: ")
    assert "Traceback" not in result.output
    assert cfgfile.read_bytes() == before


def test_bad_service_name(cfgfile: Path) -> None:
    result = run(cfgfile, "service", "add", "../x", "--listen", "80", "--target", "8080")
    assert result.exit_code == 2 and "not a valid name" in result.output


def test_duplicate_service_and_listen(cfgfile: Path) -> None:
    assert run(cfgfile, "service", "add", "a", "--listen", "80", "--target", "8080").exit_code == 0
    dup = run(cfgfile, "service", "add", "a", "--listen", "81", "--target", "8080")
    assert dup.exit_code == 2 and "already exists" in dup.output
    clash = run(cfgfile, "service", "add", "b", "--listen", "80", "--target", "8081")
    assert clash.exit_code == 2 and "already used by service 'a'" in clash.output


def test_mangled_config_file(cfgfile: Path) -> None:
    cfgfile.write_text(CONFIG + "\n[services.x\n")
    before = cfgfile.read_bytes()
    result = run(cfgfile, "service", "list")
    assert result.exit_code == 2 and "not valid TOML" in result.output and result.output.count("\n") == 1
    assert run(cfgfile, "service", "add", "y", "--listen", "81", "--target", "1").exit_code == 2
    assert cfgfile.read_bytes() == before


def test_missing_config_says_init(tmp_path: Path) -> None:
    result = run(tmp_path / "none.toml", "service", "list")
    assert result.exit_code == 2 and "vpnoffload init" in result.output


def test_init_refuses_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    for args, words in [
        (["--vps-address", "999.1.1.1"], "not an IPv4 address"),
        (["--vps-address", "203.0.113.10", "--tunnel-subnet", "203.0.113.0/24"], "contains the VPS address"),
        (["--vps-address", "203.0.113.10", "--port", "0"], "--port"),
        (["--vps-address", "203.0.113.10", "--proto", "quic"], "--proto"),
        (["--vps-address", "203.0.113.10", "--home", "a/b"], "not a valid name"),
    ]:
        result = CliRunner().invoke(app, ["-c", str(path), "init", *args])
        assert result.exit_code == 2, (args, result.output)
        assert words in result.output
        assert not path.exists() and not (tmp_path / "state").exists()


def test_init_refuses_to_overwrite(cfgfile: Path) -> None:
    before = cfgfile.read_bytes()
    result = run(cfgfile, "init", "--vps-address", "203.0.113.10")
    assert result.exit_code == 2 and "--force" in result.output
    assert cfgfile.read_bytes() == before


@pytest.mark.parametrize("cmd", [[], ["up", "vps"], ["init"]])
def test_help_shows_flags_as_flags(cmd: list[str]) -> None:
    result = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output  # a flag takes no value
    lines = [line for line in result.output.splitlines() if "--help" in line or "--verbose" in line]
    assert lines and all("<" not in line for line in lines), lines
    if not cmd:
        assert "<path>" in next(line for line in result.output.splitlines() if "--config" in line)
