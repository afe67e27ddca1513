"""The one place where a vpnoffload error becomes a message and an exit status.

Every entry point (the typer CLI, the lean ``watch``/``status`` path, the
swap child, the page server, ``python -m vpnoffload.render.pages``) runs its
body through :func:`run_main`. Stdlib only, so the lean processes can use it
without importing typer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from vpnoffload.errors import ExitStatus, VpnOffloadError

#: What a message is prefixed with, so logs and terminals show who spoke.
PREFIX = "vpnoffload"


def error_line(exc: VpnOffloadError, prog: str = PREFIX) -> str:
    """The one line a user sees for ``exc``."""
    return f"{prog}: error: {exc}"


def run_main(body: Callable[[], int | None], *, debug: bool = False, prog: str = PREFIX,
             stderr: TextIO | None = None) -> int:
    """Run ``body`` and return the process's exit status.

    A :class:`VpnOffloadError` becomes one line on stderr and its kind's exit
    status; Ctrl-C becomes "interrupted" and 130. With ``debug`` the error is
    re-raised, so its traceback shows. Anything else is a bug and propagates.
    """
    err = stderr or sys.stderr
    try:
        status = body()
    except VpnOffloadError as exc:
        if debug:
            raise
        print(error_line(exc, prog), file=err)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=err)
        return int(ExitStatus.INTERRUPTED)
    return int(status or 0)
