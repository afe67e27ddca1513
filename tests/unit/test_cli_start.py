"""What a ``vpnoffload`` command loads when it starts: only the heavy libraries its own work needs.

Each command is a new process (the e2e labs run hundreds of them, users run ``up``/``down``),
and python-iptables, pyroute2, cryptography, jinja2 and pydantic cost 20-200 ms each to import.
These tests fail when one comes back to a command that does not use it; the times are in
bench/clistart.py, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vpnoffload.cli import values
from vpnoffload.cli.app import app

HEAVY = {"iptc", "pyroute2", "cryptography", "jinja2", "pydantic", "typer", "rich", "pkg_resources", "setuptools"}

#: Run the CLI as ``python -m vpnoffload`` does, then say on stderr which heavy packages were loaded.
_PROBE = """
import atexit, json, sys
heavy = set(json.loads(sys.argv[1]))
atexit.register(lambda: sys.stderr.write("\\nLOADED " + json.dumps(sorted({m.split('.')[0] for m in sys.modules}
                                                                     & heavy)) + "\\n"))
sys.argv = ["vpnoffload", *sys.argv[2:]]
from vpnoffload.entry import main
main()
"""


def loaded(*args: str) -> set[str]:
    """The heavy packages ``vpnoffload ARGS`` imported (it must end without a traceback)."""
    env = {k: v for k, v in os.environ.items() if k != "SETUPTOOLS_USE_DISTUTILS"}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(sorted(HEAVY)), *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd="/")
    assert done.returncode in (0, 1, 2) and "Traceback" not in done.stderr, done.stdout + done.stderr
    return set(json.loads(done.stderr.rsplit("LOADED ", 1)[1]))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config with one service and a PKI, as ``init`` and ``service add`` make them."""
    cfg = tmp_path / "etc" / "vpnoffload.toml"
    runner = CliRunner()
    for args in (["init", "--vps-address", "203.0.113.10", "--tunnel-subnet", "198.51.100.0/24"],
                 ["service", "add", "web", "--listen", "80", "--target", "8080", "--hostname", "blog.example.org"]):
        result = runner.invoke(app, ["-c", str(cfg), *args])
        assert result.exit_code == 0, result.output
    return cfg


def test_help_loads_no_library_a_command_needs() -> None:
    assert loaded("--help") & HEAVY <= {"typer", "rich"}


def test_status_loads_nothing_heavy(site: Path) -> None:
    """The lean path: not even typer (here on a VPS not up yet; bench/clistart.py runs it on one that is)."""
    assert loaded("-c", str(site), "status", "--json") == set()


def test_config_edits_load_neither_pydantic_nor_the_backends(site: Path) -> None:
    """Editing the config file touches no certificate, template, kernel table or pydantic schema."""
    assert loaded("-c", str(site), "service", "add", "ssh", "--listen", "2222", "--target", "22") == {"typer"}
    assert loaded("-c", str(site), "service", "list") == {"typer"}


def test_render_home_reads_the_pki_without_cryptography(site: Path, tmp_path: Path) -> None:
    """The profile inlines PEM files as they are: jinja2 renders it, nothing parses a certificate."""
    out = tmp_path / "out"
    out.mkdir()
    assert loaded("-c", str(site), "render", "home", "--out", str(out)) == {"typer", "jinja2"}
    assert (out / "home.ovpn").is_file()


_IPTC_PROBE = (
    "import os, sys; before = [type(f).__name__ for f in sys.meta_path]; "
    "from vpnoffload.firewall import iptc; m = iptc._iptc(); "
    "print(sorted({m.split('.')[0] for m in sys.modules} & {'setuptools', 'pkg_resources', 'iptc'}), "
    "before == [type(f).__name__ for f in sys.meta_path], os.environ.get('IPTABLES_LIBDIR'), "
    "m.xtables._lib_xtwrapper._name)")


def _iptc_probe(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("SETUPTOOLS_USE_DISTUTILS", "IPTABLES_LIBDIR")}
    return subprocess.run([sys.executable, "-c", _IPTC_PROBE], capture_output=True, text=True, timeout=60, check=True,
                          env={**clean, **env}, cwd="/").stdout.strip().splitlines()[-1].split(" ")


def test_python_iptables_is_imported_without_setuptools_and_its_library_search() -> None:
    """setuptools' distutils shim (a venv's distutils-precedence.pth) is set aside for that one import:
    with it, python-iptables' ``distutils.sysconfig`` pulled in setuptools and pkg_resources. Its C helper
    is looked for where it is installed first (IPTABLES_LIBDIR during the import only), not by ~50
    ldconfig/gcc/ld runs. The shim's finder is back afterwards, in its place."""
    from vpnoffload.firewall.iptc import _installed_beside_iptc

    loaded_, restored, libdir, xtwrapper = _iptc_probe()
    assert (loaded_, restored, libdir) == ("['iptc']", "True", "None")
    beside = _installed_beside_iptc()
    assert beside is not None and xtwrapper.startswith(beside + "/libxtwrapper")


def test_a_users_iptables_libdir_is_left_alone(tmp_path: Path) -> None:
    _, _, libdir, xtwrapper = _iptc_probe(IPTABLES_LIBDIR=str(tmp_path))
    assert libdir == str(tmp_path) and "libxtwrapper" in xtwrapper  # found python-iptables' own way


# ------------------------------------------------------------------ option values without pydantic


def _parameters() -> list[tuple[Any, Any]]:
    """(command, parameter) for every parameter of every command of the CLI."""
    import typer.main

    found: list[tuple[Any, Any]] = []

    def walk(command: Any) -> None:
        found.extend((command, p) for p in command.params if hasattr(p, "type_descriptor"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


SAMPLES = ["", "x", " a b ", "\udcff", "0", "80", "-1", "007", "+3", " 4", "1_0", "99999999999999999999", "abc",
           "/tmp", "rel/x", "-"]


def test_plain_values_are_the_values_typer_gives() -> None:
    """For every parameter of the CLI and many values: the plain coercion gives what typer's own
    (pydantic) coercion gives, or leaves the value to it."""
    from typer import _coercion

    if not hasattr(_coercion, "build_runtime_param"):
        pytest.skip("by design: this typer coerces without pydantic, and values.install leaves it alone")
    checked = 0
    for command, param in _parameters():
        descriptor = param.type_descriptor
        ctx = command.context_class(command)
        typers = _coercion.build_runtime_param(descriptor)
        samples: list[Any] = [*SAMPLES, 5, ("a", "b"), ()]
        for value in samples:
            if descriptor.annotation is Path:
                if not isinstance(value, str):
                    continue
                plain = values._plain_path(descriptor.parameter_info, value, param, ctx)  # typer's own checks
            else:
                plain = values.plain_value(descriptor.annotation, descriptor.parameter_info, value)
            if plain is values._NOT_PLAIN:
                continue
            assert plain == typers.coerce(value, param=param, ctx=ctx), (param.name, value)
            assert type(plain) is type(typers.coerce(value, param=param, ctx=ctx)), (param.name, value)
            checked += 1
    assert checked > 100


def test_bad_values_keep_typers_message(tmp_path: Path) -> None:
    """A value the plain rules do not take goes to typer, whose message the user sees as before."""
    result = CliRunner().invoke(app, ["-c", str(tmp_path / "x.toml"), "init", "--vps-address", "203.0.113.10",
                                      "--port", "abc"])
    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.output and "valid integer" in result.output


# ------------------------------------------------------------------ the lab's commands


def test_detached_output_run_keeps_its_contract() -> None:
    """The lab's way to run a command (output through files, woken by the child's exit through a pidfd):
    the output, the exit status, the timeout and the input as before."""
    from vpnoffload import proc
    from vpnoffload.errors import BackendError

    done = proc.run(["sh", "-c", "echo out; echo err >&2; exit 3"], detached_output=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert proc.run(["cat"], input="abc", detached_output=True).stdout == "abc"
    with pytest.raises(BackendError, match="did not finish within 0.2 s"):
        proc.run(["sleep", "30"], detached_output=True, timeout=0.2)


def test_plain_values_stay_out_of_a_typer_whose_internals_differ() -> None:
    """cli/values.py subclasses a private typer class: only when it has exactly the shape known."""
    import dataclasses

    from typer import _coercion

    from vpnoffload.cli import values

    assert values._shaped_as_expected(_coercion.RuntimeParam)

    class NotADataclass:
        def _coerce_value(self, value, param, ctx):
            return value

    @dataclasses.dataclass(frozen=True)
    class MoreFields:
        parameter_info: object
        annotation: object
        adapter: object

        def _coerce_value(self, value, param, ctx):
            return value

    assert not values._shaped_as_expected(NotADataclass)
    assert not values._shaped_as_expected(MoreFields)


def test_python_iptables_failing_while_it_is_imported_is_one_backend_error(monkeypatch) -> None:
    """python-iptables raises its own XTablesError at import time when libxtables finds no
    extensions directory: a BackendError (one line), not a traceback."""
    from vpnoffload.errors import BackendError
    from vpnoffload.firewall import iptc as backend

    class XTablesError(Exception):
        pass

    def failing() -> None:
        raise XTablesError("can't find directory with extensions; please set XTABLES_LIBDIR")

    monkeypatch.setattr(backend, "_import_python_iptables", failing)
    with pytest.raises(BackendError) as caught:
        backend._iptc()
    assert str(caught.value) == ("cannot load python-iptables: can't find directory with extensions; "
                                 "please set XTABLES_LIBDIR")
