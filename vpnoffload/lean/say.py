"""Log lines of the lean VPS processes (the watchdog and the page server) without ``logging``.

``logging`` costs ~1 MB resident in a process that otherwise needs ~10 MB.
A :class:`Log` writes ``PREFIX: message`` to stderr at or above :data:`level`.
When ``logging`` is already imported (the typer CLI, pytest), it hands the
record to ``logging.getLogger(name)`` instead, so handlers and ``caplog`` see it.
"""

from __future__ import annotations

import sys

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40

#: Lowest level written to stderr (set from -v / --debug by the process's main).
level = WARNING
#: Printed before each line.
prefix = "vpnoffload"


class Log:
    """The subset of ``logging.Logger`` the watchdog and page server use."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _emit(self, at: int, msg: str, args: tuple[object, ...]) -> None:
        logging = sys.modules.get("logging")
        if logging is not None:
            logging.getLogger(self.name).log(at, msg, *args)
            return
        if at >= level:
            try:
                print(f"{prefix}: {msg % args if args else msg}", file=sys.stderr, flush=True)
            except (OSError, ValueError):
                pass  # stderr closed: a log line is not worth dying for

    def debug(self, msg: str, *args: object) -> None:
        self._emit(DEBUG, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._emit(INFO, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._emit(WARNING, msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._emit(ERROR, msg, args)


def fail(message: str) -> None:
    """A lean process's last word before it exits non-zero: always on stderr, as the CLI writes errors."""
    from vpnoffload.exits import error_line

    try:
        print(error_line(message, prefix), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
