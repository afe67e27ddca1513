"""What every CLI command module shares: the root context, tables, choosing a home box."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import typer

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


def home_name(config: Any, home: str | None) -> str:
    """``--home`` checked against the config, or the first home box."""
    from vpnoffload.deploy.run import home_name as checked

    return checked(config, home)
