"""The one error handler every entry point uses."""

from __future__ import annotations

import io
import sys

import pytest

from vpnoffload.errors import BackendError, ConfigError, ExitStatus, PrerequisiteError
from vpnoffload.exits import child_error, run_main
from vpnoffload.lean import spawn


def test_an_error_is_one_line_and_its_exit_status() -> None:
    err = io.StringIO()

    def body() -> int:
        raise ConfigError("must be a port number", field="services.blog.listen")

    assert run_main(body, stderr=err) == ExitStatus.BAD_INPUT
    assert err.getvalue() == "vpnoffload: error: services.blog.listen: must be a port number\n"


def test_each_kind_keeps_its_status_and_success_is_zero() -> None:
    def missing() -> None:
        raise PrerequisiteError("openvpn is missing")

    assert run_main(missing, stderr=io.StringIO()) == ExitStatus.MISSING_PREREQUISITE
    assert run_main(lambda: None) == 0
    assert run_main(lambda: 1) == 1


def test_ctrl_c_is_130_and_debug_shows_the_traceback() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    err = io.StringIO()
    assert run_main(interrupted, stderr=err) == ExitStatus.INTERRUPTED and "interrupted" in err.getvalue()
    with pytest.raises(ConfigError, match="bad"):
        run_main(lambda: (_ for _ in ()).throw(ConfigError("bad")), debug=True)


def test_a_bug_is_not_hidden() -> None:
    with pytest.raises(ZeroDivisionError, match="by zero"):
        run_main(lambda: 1 // 0)


@pytest.mark.parametrize(("status", "kind"), [(2, ConfigError), (4, PrerequisiteError), (3, BackendError),
                                               (1, BackendError), (-9, BackendError)])
def test_a_childs_error_is_read_back_as_its_kind(status: int, kind: type) -> None:
    said = b"some log line\nvpnoffload-pages: error: services.blog: no page\n\n"
    exc = child_error(status, said, "the page server")
    assert type(exc) is kind and str(exc) == "services.blog: no page"
    assert str(child_error(status, b"", "swap")) == f"swap failed (exit status {status})"
    assert str(child_error(1, b"RTNETLINK answers: File exists\n", "ip")) == "RTNETLINK answers: File exists"


def test_finish_raises_what_the_child_reported() -> None:
    code = "import sys; print('vpnoffload: error: --config is required', file=sys.stderr); sys.exit(2)"
    with pytest.raises(ConfigError, match=r"^--config is required$"):
        spawn.run([sys.executable, "-I", "-c", code], "the child", 10)
    child = spawn.spawn([sys.executable, "-I", "-c", "import sys; print('ok'); sys.exit(3)"], stdout=True, stderr=True)
    assert spawn.finish(child, b"", 10, "the child", ok=(0, 3)) == b"ok\n" and child.returncode == 3
    child = spawn.spawn([sys.executable, "-I", "-c", "import time; time.sleep(30)"], stdout=True, stderr=True)
    with pytest.raises(BackendError, match="the child did not finish within 0.2 s"):
        spawn.finish(child, b"", 0.2, "the child")
    assert child.returncode is not None  # killed and reaped


def test_the_typer_group_goes_through_run_main(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from vpnoffload.cli import app as cli_app

    seen = []
    real = cli_app.run_main
    monkeypatch.setattr(cli_app, "run_main", lambda body, **kw: seen.append(body) or real(body, **kw))
    result = CliRunner().invoke(cli_app.app, ["-c", "/nonexistent/vpnoffload.toml", "service", "list"])
    assert seen and result.exit_code == ExitStatus.BAD_INPUT
    assert result.output.strip().splitlines()[-1].startswith("vpnoffload: error: ")
