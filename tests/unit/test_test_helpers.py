"""The judges the root tests rely on must be able to fail: checked here without root."""

from __future__ import annotations

import pytest

from tests.helpers import golden, judge_crowd, wait_until

PAGE = "503 <p>Back in a moment</p>"
HOME = "200 served from home"


def test_a_crowd_passes_when_visitors_see_no_reply_then_the_change() -> None:
    results = [[0.0, 5.0, "0 TimeoutError"], [0.2, 0.3, "0 ConnectionResetError"], [0.4, 0.5, PAGE],
               [0.6, 0.7, PAGE]]
    assert judge_crowd(results, "^503 ") == 0.5


def test_a_crowd_fails_on_an_error_page_before_the_change() -> None:
    """What visitors got before the first match counts too (a 502 from somewhere is a wrong answer)."""
    results = [[0.0, 0.1, "502 Bad Gateway"], [0.4, 0.5, PAGE], [0.6, 0.7, PAGE]]
    with pytest.raises(AssertionError, match="before the first '\\^503 '"):
        judge_crowd(results, "^503 ")


def test_a_recovering_crowd_may_see_the_page_before_home() -> None:
    results = [[0.0, 0.1, PAGE], [0.2, 0.3, HOME], [0.4, 0.5, HOME]]
    assert judge_crowd(results, "^200 ") == 0.3
    with pytest.raises(AssertionError, match="neither"):
        judge_crowd(results, "^200 ", before="^0 ")


def test_a_crowd_fails_on_anything_else_or_a_slow_reply_after_the_change() -> None:
    with pytest.raises(AssertionError):
        judge_crowd([[0.0, 0.1, PAGE], [0.2, 0.3, "0 TimeoutError"]], "^503 ")
    with pytest.raises(AssertionError):
        judge_crowd([[0.0, 0.1, PAGE], [0.2, 1.3, PAGE]], "^503 ")


def test_a_crowd_that_never_sees_the_change_fails() -> None:
    with pytest.raises(pytest.fail.Exception, match="no reply matching"):
        judge_crowd([[0.0, 0.1, HOME]], "^503 ")


def test_wait_until_returns_what_it_saw_or_fails_naming_it() -> None:
    seen = iter(range(100))
    assert wait_until("three", lambda: ((n := next(seen)) == 3, n), limit=5, interval=0) == 3
    with pytest.raises(pytest.fail.Exception, match="never: not within 0 s; last: 'x'"):
        wait_until("never", lambda: (False, "x"), limit=0)


def test_golden_rewrites_only_on_update_golden_1(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "g.txt").write_text("old")
    for value in ("yes", "0", "true"):
        monkeypatch.setenv("UPDATE_GOLDEN", value)
        with pytest.raises(AssertionError, match="differs from the golden file"):
            golden("g.txt", "new", tmp_path)
        assert (tmp_path / "g.txt").read_text() == "old"
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    golden("g.txt", "new", tmp_path)
    assert (tmp_path / "g.txt").read_text() == "new"


def test_test_modules_never_import_from_each_other() -> None:
    """Shared helpers live in tests/helpers.py, tests/fakes.py, tests/nslib.py, tests/prereq.py,
    tests/e2e/labkit.py (and the conftests): a test module importing another one drags its
    tests' fixtures and module-level state along."""
    import re
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    crossing = re.compile(r"^\s*from tests\.\w+\.test_\w+ import|^\s*import tests\.\w+\.test_", re.M)
    # Helper modules too (a helper importing a test module drags it into every importer).
    found = [str(p.relative_to(tests)) for p in tests.rglob("*.py") if crossing.search(p.read_text())]
    assert found == []


def test_strict_mode_fails_a_missing_prerequisite_and_keeps_by_design_skips(tmp_path) -> None:
    """What scripts/test (the README's test command) relies on: with VPNOFFLOAD_TEST_STRICT=1
    a missing prerequisite, from tests.prereq or a bare pytest.skip, fails the run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "test_prereqs.py").write_text(
        "import pytest\n"
        "from tests.prereq import missing\n"
        "def test_needs_a_tool():\n    missing('no frobnicator')\n"
        "def test_bare_skip():\n    pytest.skip('no widget')\n"
        "def test_by_design():\n    pytest.skip('by design: never here')\n")
    repo = Path(__file__).resolve().parents[2]

    def run(strict: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VPNOFFLOAD_TEST_STRICT": strict}
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                               "-q", "-rA", str(tmp_path / "test_prereqs.py")], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=60)

    strict = run("1")
    assert strict.returncode == 1, strict.stdout
    assert "2 failed, 1 skipped" in strict.stdout, strict.stdout
    assert "missing prerequisite (VPNOFFLOAD_TEST_STRICT=1): no frobnicator" in strict.stdout
    assert "missing prerequisite (VPNOFFLOAD_TEST_STRICT=1): no widget" in strict.stdout
    plain = run("")
    assert plain.returncode == 0 and "3 skipped" in plain.stdout, plain.stdout


def test_footprint_fails_instead_of_reading_nothing_as_0_kb(monkeypatch: pytest.MonkeyPatch) -> None:
    """The e2e memory checks ("<= N MB") must not pass because the process filter found nothing."""
    import os

    from tests.e2e import vpsmem

    class NoLab:
        def namespace(self, host: str) -> str:
            return "vt-none"

    monkeypatch.setattr(vpsmem, "namespace_pids", lambda ns: [])
    with pytest.raises(AssertionError, match="no vpnoffload process"):
        vpsmem.footprint(NoLab())  # type: ignore[arg-type]
    # A live process's memory is read for real (this one's), never defaulted.
    mine = vpsmem._rollup(os.getpid())
    assert mine is not None and mine["Rss"] > 0
    assert vpsmem._rollup(2**22 + 12345) is None  # no such process: gone, not 0 KB
