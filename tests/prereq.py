"""The one place that decides: skip, or fail, when a test's prerequisite is missing.

A plain ``pytest`` (a laptop, no root) skips what it cannot run and says why. The
README's test command (``scripts/test``) sets ``VPNOFFLOAD_TEST_STRICT=1``: it has
installed every prerequisite, so one that is still missing is a broken machine or a
broken install, and the run must fail instead of going green with whole layers
skipped. Skips that hold on every machine by design (a check that cannot work as
root) say so with :data:`BY_DESIGN` and stay skips in both modes.

tests/conftest.py enforces this for every skip, including ones written without
these helpers.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

STRICT_ENV = "VPNOFFLOAD_TEST_STRICT"
#: The start of a skip reason that is no missing prerequisite.
BY_DESIGN = "by design: "


def strict() -> bool:
    """True when a missing prerequisite must fail the run (exactly ``VPNOFFLOAD_TEST_STRICT=1``)."""
    return os.environ.get(STRICT_ENV) == "1"


def missing(problem: str) -> NoReturn:
    """Stop this test because ``problem`` (a readable reason) keeps it from running."""
    if strict():
        pytest.fail(f"missing prerequisite ({STRICT_ENV}=1): {problem}", pytrace=False)
    pytest.skip(problem)


def need(problem: str | None) -> None:
    """:func:`missing` when there is a ``problem``; nothing when it is None."""
    if problem:
        missing(problem)


def requires(problem: str | None) -> pytest.MarkDecorator:
    """A mark that calls :func:`need` before the test (tests/conftest.py reads it).

    ``problem`` is computed at import: None when the prerequisite is there.
    """
    return pytest.mark.prerequisite(problem)


def tool_problem(name: str, install: str) -> str | None:
    """Why a command-line tool cannot be used (``install`` says how to get it), or None."""
    return None if shutil.which(name) else f"{name} is not installed ({install})"


def root_problem() -> str | None:
    return None if os.geteuid() == 0 else "needs root (network namespaces)"


needs_root = requires(root_problem())
needs_openvpn = requires(tool_problem("openvpn", "apt-get install openvpn"))
