"""Console entry point. ``watch`` and ``status`` take a lean path that skips typer.

typer (which now pulls in pydantic) costs ~20 MB of resident memory and
~0.3 s to import; the watchdog runs for months on 256 MB VPSes and ``status``
runs in monitoring loops, so these two parse their few options themselves.
Everything else, their ``--help`` included, goes to the typer CLI in
``vpnoffload.cli.app``.

``watch`` goes further: it re-executes itself (same pid) as ``python -I -S``
running ``vpnoffload.watch.loop``, so not even ``site`` (~2.4 MB with the
venv's editable-install finder) stays resident; see docs/architecture.md.
"""

from __future__ import annotations

import sys

_VALUE_OPTIONS = {"-c": "config", "--config": "config", "--state-dir": "state"}
_FLAGS = {"-v": "verbose", "--verbose": "verbose", "--debug": "debug"}


LEAN_COMMANDS = {"watch": (), "status": ("--json",)}


def lean_options(argv: list[str]) -> dict[str, str | bool] | None:
    """The options when ``argv`` is ``[GLOBAL OPTIONS] watch`` or ``[GLOBAL OPTIONS] status [--json]``
    (``command`` names which), else None: the typer CLI handles it."""
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
            if not value.strip():
                return None  # the typer CLI refuses an empty path in one line
            found[_VALUE_OPTIONS[name]] = value
        elif arg in _FLAGS:
            found[_FLAGS[arg]] = True
        elif arg in LEAN_COMMANDS:
            rest = argv[i + 1:]
            if any(r not in LEAN_COMMANDS[arg] for r in rest):
                return None
            found["command"] = arg
            found.update({r.lstrip("-"): True for r in rest})
            return found
        else:
            return None
        i += 1
    return None


def lean_watch_options(argv: list[str]) -> dict[str, str | bool] | None:
    """Back-compat helper for tests: the global options of exactly ``[GLOBAL OPTIONS] watch``."""
    found = lean_options(argv)
    if found is None or found.pop("command") != "watch":
        return None
    return found


def exec_lean_watch(options: dict[str, str | bool]) -> None:
    """Replace this process with the lean watchdog (``python -I -S``), paths resolved here."""
    import os

    from vpnoffload.paths import Paths
    from vpnoffload.lean.spawn import lean_argv

    config, state = options.get("config"), options.get("state")
    paths = Paths.resolve(str(config or ""), str(state or ""))
    flags = [f"--{name}" for name in ("verbose", "debug") if options.get(name)]
    argv = lean_argv("vpnoffload.watch.loop", "--config", str(paths.config), "--state-dir", str(paths.state), *flags)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


def run_lean(options: dict[str, str | bool]) -> int:
    if options.get("command") == "watch":
        exec_lean_watch(options)  # does not return
    import logging

    from vpnoffload.exits import run_main
    from vpnoffload.paths import Paths

    level = logging.DEBUG if options.get("debug") else logging.INFO if options.get("verbose") else logging.WARNING
    logging.basicConfig(level=level, format="vpnoffload: %(message)s", stream=sys.stderr)
    config = options.get("config")
    state = options.get("state")
    paths = Paths.resolve(str(config or ""), str(state or ""))

    def show_status() -> int:
        from vpnoffload import homestatus, status

        home = homestatus.shown(paths, bool(options.get("json")))
        if home is not None:  # a home box: every VPS it serves
            print(home[0])
            return int(home[1])
        report = status.report_for(paths)
        print(status.render(report, bool(options.get("json"))))
        return int(report.exit_status)

    return run_main(show_status, debug=bool(options.get("debug")))

#: Global options naming a path: typer turns an empty one into ".", the current directory.
_PATH_OPTIONS = ("-c", "--config", "--state-dir")


def empty_path_option(argv: list[str]) -> str | None:
    """The global path option given as ``''`` (``-c ''``, ``--state-dir=``), if any."""
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in _PATH_OPTIONS and (eq and not value.strip()
                                      or not eq and i + 1 < len(argv) and not argv[i + 1].strip()):
            return name
    return None


def main() -> None:
    empty = empty_path_option(sys.argv[1:])
    if empty is not None:
        print(f"vpnoffload: error: {empty}: is empty; name a directory or file", file=sys.stderr)
        sys.exit(2)
    options = lean_options(sys.argv[1:])
    if options is not None:
        sys.exit(run_lean(options))
    from vpnoffload.cli.app import app

    app(prog_name="vpnoffload")
