"""``vpnoffload render vps|home|nginx|haproxy``: write configs into a directory the user names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vpnoffload.cli.common import context, dir_option, home_name

render_app = typer.Typer(no_args_is_help=True, help="Write OpenVPN configs for the VPS or a home box, or nginx/HAProxy includes.")


@render_app.command("vps")
def render_vps(ctx: typer.Context, out_text: Annotated[str, typer.Option("--out", help="Directory to write into.")]) -> None:
    """Write the OpenVPN server config, per-home addresses, CRL and keys (0600)."""
    out = dir_option(out_text, "--out")
    from vpnoffload import config as cfg
    from vpnoffload import pki as pki_mod
    from vpnoffload.render import openvpn as render

    paths = context(ctx).paths
    config = cfg.load(paths.config)
    written = render.render_vps(config, pki_mod.Pki.open(paths.pki), out)
    typer.echo(f"wrote {len(written)} files to {out}")


@render_app.command("home")
def render_home(
    ctx: typer.Context,
    out_text: Annotated[str, typer.Option("--out", help="Directory to write into.")],
    home: Annotated[Optional[str], typer.Option(help="Home box (default: the first).")] = None,
) -> None:
    """Write one self-contained client profile NAME.ovpn for a home box."""
    out = dir_option(out_text, "--out")
    from vpnoffload import config as cfg
    from vpnoffload import pki as pki_mod
    from vpnoffload.render import openvpn as render

    paths = context(ctx).paths
    config = cfg.load(paths.config)
    name = home_name(config, home)
    path = render.render_home(config, pki_mod.Pki.open(paths.pki), name, out)
    typer.echo(f"wrote {path} (secret: copy it to the home box, e.g. with scp, and keep it 0600)")


@render_app.command("nginx")
def render_nginx(
    ctx: typer.Context,
    out_text: Annotated[str, typer.Option("--out", help="Directory to write into, e.g. /etc/vpnoffload/nginx.")],
) -> None:
    """Write the nginx includes that route the via=proxy services by name (Host, and SNI on 443)."""
    out = dir_option(out_text, "--out")
    from vpnoffload import config as cfg
    from vpnoffload.render import webserver

    config = cfg.load(context(ctx).paths.config)
    written = webserver.render_nginx(config, out)
    _proxy_summary(config, written, out)
    typer.echo(f"next: in nginx.conf's http {{ }} block: include {out.absolute()}/*.conf;")
    if any(s.sni_routed for s in config.services.values()):
        typer.echo(f"      at its top level (outside http): include {out.absolute()}/stream/*.conf; and move your "
                   f"own HTTPS sites to {config.proxy.local_https} (see the file's header)")
    typer.echo("      then: nginx -t && nginx -s reload")


@render_app.command("haproxy")
def render_haproxy(
    ctx: typer.Context,
    out_text: Annotated[str, typer.Option("--out", help="Directory to write into, e.g. /etc/vpnoffload/haproxy.")],
) -> None:
    """Write the HAProxy frontends and backends that route the via=proxy services by name."""
    out = dir_option(out_text, "--out")
    from vpnoffload import config as cfg
    from vpnoffload.render import webserver

    config = cfg.load(context(ctx).paths.config)
    written = webserver.render_haproxy(config, out)
    _proxy_summary(config, written, out)
    typer.echo(f"next: haproxy -f /etc/haproxy/haproxy.cfg -f {out.absolute()}/vpnoffload.cfg (see the file's header "
               f"for where your own sites move: {config.proxy.local_http} and {config.proxy.local_https})")


def _proxy_summary(config: Any, written: list[Path], out: Path) -> None:
    proxied = [s for s in config.services.values() if s.via == "proxy"]
    if not proxied:
        typer.echo("note: no service has via = 'proxy' yet (vpnoffload service add NAME --via proxy --hostname ...)")
    for svc in proxied:
        scheme = "https (SNI, passed through)" if svc.sni_routed else "http (Host)"
        typer.echo(f"  {svc.hostname} {scheme} -> {svc.target}")
    typer.echo(f"wrote {len(written)} files to {out}")
