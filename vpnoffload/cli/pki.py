"""``vpnoffload pki list|issue|revoke``: the config + PKI edits live in vpnoffload.config.edits."""

from __future__ import annotations

from typing import Annotated

import typer

from vpnoffload.cli.common import context, table

pki_app = typer.Typer(no_args_is_help=True, help="List, issue and revoke certificates.")


@pki_app.command("list")
def pki_list(ctx: typer.Context) -> None:
    """List certificates with their serials, expiry and revocation."""
    from vpnoffload import pki as pki_mod

    certs = pki_mod.Pki.open(context(ctx).paths.pki).list()
    rows = [("NAME", "KIND", "SERIAL", "EXPIRES", "STATUS")]
    rows += [(c.name, c.kind, f"{c.serial:x}", c.not_after.date().isoformat(), "revoked" if c.revoked else "valid") for c in certs]
    table(rows)


@pki_app.command("issue")
def pki_issue(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Name of the new home box.")]) -> None:
    """Add a home box: a client certificate and a fixed tunnel address."""
    from vpnoffload.config import edits

    address = edits.issue_home(context(ctx).paths, name)
    typer.echo(f"issued {name} (tunnel address {address}); run 'vpnoffload up vps' to apply, "
               f"then 'vpnoffload render home --home {name} --out DIR' for its profile")


@pki_app.command("revoke")
def pki_revoke(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Home box to revoke.")]) -> None:
    """Revoke a home box's certificate: it can no longer connect."""
    from vpnoffload.config import edits

    edits.revoke_home(context(ctx).paths, name)
    typer.echo(f"revoked {name}; run 'vpnoffload up vps' to publish the new CRL")
