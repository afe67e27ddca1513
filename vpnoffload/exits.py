"""The one place where a vpnoffload error becomes a message and an exit status.

Every entry point (the lean ``status`` path, the swap child, the page server,
the reconcile child, ``python -m vpnoffload.render.pages``) runs its body
through :func:`run_main`; the typer CLI's group and the lean processes' last
word (:func:`vpnoffload.lean.say.fail`) use the same :func:`error_line`. It
imports nothing but ``sys`` and the errors (not even ``typing``: ~2 MB in a
~10 MB watchdog), so the lean processes can use it.
"""

from __future__ import annotations

import sys

from vpnoffload.errors import (BackendError, ConfigError, ExitStatus, PrerequisiteError,
                               VpnOffloadError)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

#: What a message is prefixed with, so logs and terminals show who spoke.
PREFIX = "vpnoffload"


def error_line(exc: VpnOffloadError | str, prog: str = PREFIX) -> str:
    """The one line a user sees for ``exc``."""
    return f"{prog}: error: {exc}"


def child_error(returncode: int, stderr: bytes, what: str) -> VpnOffloadError:
    """The error a vpnoffload child reported by exiting non-zero, read back as :func:`run_main` wrote it.

    The message is the child's last stderr line without its ``PROG: error:`` prefix;
    the kind follows the exit status (2: bad input, 4: prerequisite, else a failure),
    so the parent raises what the child would have raised in its place.
    """
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    message = lines[-1] if lines else f"{what} failed (exit status {returncode})"
    prog, sep, rest = message.partition(": error: ")
    if sep and prog.startswith(PREFIX):
        message = rest
    kinds: dict[int, type[VpnOffloadError]] = {ExitStatus.BAD_INPUT: ConfigError,
                                               ExitStatus.MISSING_PREREQUISITE: PrerequisiteError}
    return kinds.get(returncode, BackendError)(message)


def run_main(body: Callable[[], int | None], *, debug: bool | Callable[[], bool] = False, prog: str = PREFIX,
             stderr: TextIO | None = None) -> int:
    """Run ``body`` and return the process's exit status.

    A :class:`VpnOffloadError` becomes one line on stderr and its kind's exit
    status; Ctrl-C becomes "interrupted" and 130. With ``debug`` the error is
    re-raised, so its traceback shows; a callable ``debug`` is asked only then
    (the typer CLI learns ``--debug`` while ``body`` runs). Anything else is a
    bug and propagates.
    """
    err = stderr or sys.stderr
    try:
        status = body()
    except VpnOffloadError as exc:
        if debug() if callable(debug) else debug:
            raise
        print(error_line(exc, prog), file=err)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=err)
        return int(ExitStatus.INTERRUPTED)
    return int(status or 0)
