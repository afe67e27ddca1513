"""Console entry point. ``vpnoffload watch`` takes a lean path that skips typer.

typer (which now pulls in pydantic) costs ~20 MB of resident memory; the
watchdog runs for months on 256 MB VPSes, so ``watch`` parses its few global
options itself. Everything else, ``watch --help`` included, goes to the typer
CLI in ``vpnoffload.cli``.
"""

from __future__ import annotations

import sys

_VALUE_OPTIONS = {"-c": "config", "--config": "config", "--state-dir": "state"}
_FLAGS = {"-v": "verbose", "--verbose": "verbose", "--debug": "debug"}


def lean_watch_options(argv: list[str]) -> dict[str, str | bool] | None:
    """The global options when ``argv`` is exactly ``[GLOBAL OPTIONS] watch``, else None."""
    found: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in _VALUE_OPTIONS:
            if not eq:
                if i + 1 >= len(argv):
                    return None
                i += 1
                value = argv[i]
            found[_VALUE_OPTIONS[name]] = value
        elif arg in _FLAGS:
            found[_FLAGS[arg]] = True
        elif arg == "watch" and i == len(argv) - 1:
            return found
        else:
            return None
        i += 1
    return None


def run_lean_watch(options: dict[str, str | bool]) -> int:
    import logging
    from pathlib import Path

    from vpnoffload.errors import VpnOffloadError
    from vpnoffload.paths import Paths

    level = logging.DEBUG if options.get("debug") else logging.INFO if options.get("verbose") else logging.WARNING
    logging.basicConfig(level=level, format="vpnoffload: %(message)s", stream=sys.stderr)
    config = options.get("config")
    state = options.get("state")
    paths = Paths.resolve(Path(str(config)) if config else None, Path(str(state)) if state else None)
    try:
        from vpnoffload import watchrun

        return watchrun.run(paths, server_running=watchrun.server_running(paths))
    except VpnOffloadError as exc:
        if options.get("debug"):
            raise
        print(f"vpnoffload: error: {exc}", file=sys.stderr)
        return int(exc.exit_status)


def main() -> None:
    options = lean_watch_options(sys.argv[1:])
    if options is not None:
        sys.exit(run_lean_watch(options))
    from vpnoffload.cli import app

    app(prog_name="vpnoffload")
