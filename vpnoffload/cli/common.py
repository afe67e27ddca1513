"""What every CLI command module shares: the root context, tables, choosing a home box."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import typer

from pathlib import Path

from vpnoffload.paths import Paths


@dataclass
class Context:
    paths: Paths
    debug: bool


def context(ctx: typer.Context) -> Context:
    """The root command's Context (paths from -c / --state-dir, --debug)."""
    found: Context = ctx.find_root().obj
    return found


def table(rows: Sequence[tuple[str, ...]]) -> None:
    """Print ``rows`` as left-aligned columns (the first row is the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def path_option(value: str | None, option: str) -> Path | None:
    """A path the user typed: ``''`` is refused, not taken as the current directory
    (``render --out ''`` would write, and delete, in whatever directory the command runs from)."""
    from vpnoffload.errors import ConfigError
    from vpnoffload.names import shown

    if value is None:
        return None
    if not value.strip():
        raise ConfigError("is empty; name a directory or file", field=option)
    if "\0" in value or len(value) > 4096:
        raise ConfigError(f"{shown(value)} is not a usable path", field=option)
    return Path(value)


def dir_option(value: str, option: str) -> Path:
    """A required path option (``--out``): :func:`path_option`, never None."""
    path = path_option(value, option)
    assert path is not None
    return path


def home_name(config: Any, home: str | None) -> str:
    """``--home`` checked against the config, or the first home box."""
    from vpnoffload.deploy.run import home_name as checked

    return checked(config, home)
