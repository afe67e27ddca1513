"""Plans as data, and the one place that applies them with rollback.

A backend compares the desired state with what it reads back from the system
and returns a list of :class:`Action`. ``--dry-run`` prints the summaries;
:func:`apply` runs them in order and, when one fails (or the user presses
Ctrl-C), runs the undo of every action already done, newest first.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from vpnoffload.errors import ApplyError, VpnOffloadError

log = logging.getLogger(__name__)


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Action:
    """One change to the system.

    ``summary`` is the human line shown by ``--dry-run`` and in errors; it is
    also what unit tests compare, so keep it stable and free of secrets.
    ``undo`` restores exactly what ``do`` changed (``None``: nothing to undo,
    e.g. a read-only wait).
    """

    summary: str
    do: Callable[[], None]
    undo: Callable[[], None] | None = None
    #: ``do`` is not all-or-nothing (it starts a process, then waits for it):
    #: if it fails or is interrupted halfway, its own ``undo`` runs too.
    undo_if_partial: bool = False

    def __str__(self) -> str:
        return self.summary


def summaries(actions: Iterable[Action]) -> list[str]:
    return [a.summary for a in actions]


def apply(actions: Sequence[Action]) -> None:
    """Run ``actions`` in order; on any failure undo the done ones and raise ApplyError."""
    done: list[Action] = []
    for action in actions:
        try:
            log.info("%s", action.summary)
            action.do()
        except VpnOffloadError as exc:
            _rollback(_with_partial(done, action))
            raise ApplyError(f"{action.summary} failed: {exc}; {_rolled(done)}") from exc
        except OSError as exc:
            _rollback(_with_partial(done, action))
            reason = exc.strerror or str(exc)
            raise ApplyError(f"{action.summary} failed: {reason}; {_rolled(done)}") from exc
        except BaseException:
            # Ctrl-C, SIGTERM or a bug: still leave the system as we found it.
            _Interrupt.pending = False
            _rollback(_with_partial(done, action))
            raise
        done.append(action)
        if _Interrupt.pending:  # the SIGTERM came inside the action, and its exception was lost there
            _Interrupt.pending = False
            _rollback(done)
            raise KeyboardInterrupt("SIGTERM")


def _with_partial(done: Sequence[Action], failed: Action) -> list[Action]:
    """What to unwind: the done actions, and the failed one if it may have half happened."""
    return [*done, failed] if failed.undo_if_partial else list(done)


class _Interrupt:
    """A SIGTERM taken by :func:`sigterm_as_interrupt` that :func:`apply` has not acted on yet.

    Python drops an exception that a signal handler raises while an at-fork callback runs
    (logging registers one, and every subprocess forks): such a SIGTERM would be lost, and a
    single ``systemctl stop`` then waits out the whole action instead of rolling back. The flag
    keeps it: :func:`apply` rolls back after the action, and long waits ask
    :func:`raise_if_interrupted` at each turn.
    """

    pending = False


def raise_if_interrupted() -> None:
    """Raise the SIGTERM that its handler could not (see :class:`_Interrupt`); for wait loops."""
    if _Interrupt.pending:
        raise KeyboardInterrupt("SIGTERM")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, the first SIGTERM (``systemctl stop``, ``kill``) acts like Ctrl-C:
    :func:`apply` then rolls back what it did instead of dying half-way.

    Later SIGTERMs are ignored until the block ends, so a second one cannot cut
    the rollback short. Outside the main thread (where no handler can be set)
    this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            _Interrupt.pending = True
            raise KeyboardInterrupt("SIGTERM")

    _Interrupt.pending = False
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _Interrupt.pending = False


def _rolled(done: Sequence[Action]) -> str:
    n = sum(1 for a in done if a.undo is not None)
    return f"rolled back {n} earlier change(s)" if n else "nothing else had been changed"


def _rollback(done: Sequence[Action]) -> None:
    for action in reversed(done):
        if action.undo is None:
            continue
        try:
            action.undo()
        except (VpnOffloadError, OSError) as exc:
            # Keep unwinding: one stuck undo must not strand the others.
            log.error("could not undo %r: %s", action.summary, exc)
