"""Suite-wide rules: prerequisites skip or fail in one place, and root tests are marked.

See tests/prereq.py for the skip-or-fail decision (``VPNOFFLOAD_TEST_STRICT=1`` in
scripts/test turns a missing prerequisite into a failure).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.prereq import BY_DESIGN, STRICT_ENV, need, root_problem, strict

#: Tests under these directories build namespaces or containers: they must carry ``root``.
ROOT_LAYERS = ("integration", "e2e", "systemd", "compose")
#: ... and these need a Docker engine as well: they must carry ``docker``.
DOCKER_LAYERS = ("systemd", "compose")
TESTS = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "prerequisite(problem): tests.prereq.requires; None when met")


def _layer(item: pytest.Item) -> str | None:
    try:
        return item.path.resolve().relative_to(TESTS).parts[0]
    except ValueError:
        return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A root or Docker test without its marker is an error, not something to remember."""
    unmarked = [f"{item.nodeid} (needs the '{mark}' marker)"
                for item in items
                for mark, layers in (("root", ROOT_LAYERS), ("docker", DOCKER_LAYERS))
                if _layer(item) in layers and item.get_closest_marker(mark) is None]
    if unmarked:
        raise pytest.UsageError("tests without their marker:\n  " + "\n  ".join(unmarked))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None:
        need(root_problem())
    for mark in item.iter_markers("prerequisite"):
        need(mark.args[0])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """In strict mode a skip from anywhere (a skipif, a fixture's pytest.skip) fails,
    unless its reason starts with BY_DESIGN."""
    outcome = yield
    report = outcome.get_result()
    if not (strict() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if reason.startswith(BY_DESIGN):
        return
    report.outcome = "failed"
    report.longrepr = f"missing prerequisite ({STRICT_ENV}=1): {reason}"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Where the suite's time goes, per layer and per module (setup, call and teardown, module
    fixtures included), printed at the end of every run: ``--durations`` names single tests, but a
    slow module is often many medium tests or a lab built per test."""
    per_module: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                module = report.nodeid.split("::", 1)[0]
                per_module[module] = per_module.get(module, 0.0) + report.duration
    if len(per_module) < 2:
        return
    per_layer: dict[str, float] = {}
    for module, seconds in per_module.items():
        layer = "/".join(module.split("/")[:2]) if module.startswith("tests/") else module.split("/")[0]
        per_layer[layer] = per_layer.get(layer, 0.0) + seconds
    write = terminalreporter.write_line
    terminalreporter.section("time per layer and slowest modules")
    write("  ".join(f"{layer} {seconds:.0f} s" for layer, seconds in sorted(per_layer.items(), key=lambda x: -x[1])))
    for module, seconds in sorted(per_module.items(), key=lambda x: -x[1])[:20]:
        write(f"{seconds:8.1f} s  {module}")
