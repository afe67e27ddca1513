"""apply(): runs in order, undoes what was done in reverse on failure or Ctrl-C."""

from __future__ import annotations

import pytest

from vpnoffload.errors import ApplyError, BackendError
from vpnoffload import plan
from vpnoffload.plan import Action, apply, summaries


def recorder():
    log: list[str] = []

    def act(name: str, fail: bool = False, undo: bool = True, exc: BaseException | None = None) -> Action:
        def do() -> None:
            if fail:
                raise exc or BackendError(f"{name} broke")
            log.append(f"do {name}")

        return Action(name, do, (lambda: log.append(f"undo {name}")) if undo else None)

    return log, act


def test_applies_in_order() -> None:
    log, act = recorder()
    apply([act("a"), act("b")])
    assert log == ["do a", "do b"]


def test_failure_rolls_back_in_reverse_and_says_what_failed() -> None:
    log, act = recorder()
    with pytest.raises(ApplyError) as info:
        apply([act("a"), act("b", undo=False), act("c"), act("d", fail=True), act("e")])
    assert log == ["do a", "do b", "do c", "undo c", "undo a"]
    assert str(info.value) == "d failed: d broke; rolled back 2 earlier change(s)"


def test_oserror_is_translated() -> None:
    log, act = recorder()
    with pytest.raises(ApplyError, match="b failed: Permission denied"):
        apply([act("a"), act("b", fail=True, exc=PermissionError(13, "Permission denied"))])
    assert log == ["do a", "undo a"]


def test_keyboard_interrupt_rolls_back_and_propagates() -> None:
    log, act = recorder()
    with pytest.raises(KeyboardInterrupt):
        apply([act("a"), act("b", fail=True, exc=KeyboardInterrupt())])
    assert log == ["do a", "undo a"]


def test_failing_undo_does_not_stop_the_others() -> None:
    log: list[str] = []

    def bad_undo() -> None:
        raise BackendError("stuck")

    actions = [
        Action("a", lambda: log.append("do a"), lambda: log.append("undo a")),
        Action("b", lambda: log.append("do b"), bad_undo),
        Action("c", lambda: (_ for _ in ()).throw(BackendError("no"))),
    ]
    with pytest.raises(ApplyError, match=r"c failed: no; rolled back 2 earlier change\(s\)"):
        apply(actions)
    assert log == ["do a", "do b", "undo a"]
    assert summaries(actions) == ["a", "b", "c"]


def test_each_step_is_logged_and_a_stuck_undo_is_named(caplog: pytest.LogCaptureFixture) -> None:
    """The log is what an operator reads after a failed `up`: every step, then which undo failed and why."""
    import logging

    def stuck() -> None:
        raise BackendError("chain busy")

    caplog.set_level(logging.INFO, logger="vpnoffload.plan")
    with pytest.raises(ApplyError, match="rolled back 1 earlier change"):
        apply([Action("add rule", lambda: None, stuck), Action("boom", lambda: (_ for _ in ()).throw(OSError()))])
    assert [r.getMessage() for r in caplog.records] == ["add rule", "boom", "could not undo 'add rule': chain busy"]
    assert caplog.records[-1].levelno == logging.ERROR


def test_an_os_error_without_strerror_still_says_what_it_was() -> None:
    def fail() -> None:
        raise OSError("no such table")

    with pytest.raises(ApplyError, match=r"^boom failed: no such table; nothing else had been changed$"):
        apply([Action("boom", fail)])


def test_a_sigterm_whose_exception_was_lost_still_rolls_back_after_the_action() -> None:
    """Python drops a signal handler's exception inside an at-fork callback: the SIGTERM is kept."""
    import os
    import signal as _signal

    undone: list[str] = []

    def lost_sigterm() -> None:
        try:
            os.kill(os.getpid(), _signal.SIGTERM)
            for _ in range(1000):  # the handler runs at a bytecode boundary, here
                pass
        except KeyboardInterrupt:
            pass  # as if swallowed by an at-fork callback

    actions = [Action("first", lambda: None, lambda: undone.append("first")),
               Action("second", lost_sigterm, lambda: undone.append("second")),
               Action("third", lambda: undone.append("third ran"), None)]
    with plan.sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        plan.apply(actions)
    assert undone == ["second", "first"]


def test_a_wait_loop_raises_the_lost_sigterm_and_nothing_is_pending_afterwards() -> None:
    import os
    import signal as _signal

    with plan.sigterm_as_interrupt():
        try:
            os.kill(os.getpid(), _signal.SIGTERM)
            for _ in range(1000):
                pass
        except KeyboardInterrupt:
            pass
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            plan.raise_if_interrupted()
    plan.raise_if_interrupted()  # outside the block: nothing pending
