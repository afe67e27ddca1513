"""The one error handler every entry point uses."""

from __future__ import annotations

import io

import pytest

from vpnoffload.exits import run_main
from vpnoffload.errors import ConfigError, ExitStatus, PrerequisiteError


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
