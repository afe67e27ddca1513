"""``vpnoffload service add|list|remove``: the editing lives in vpnoffload.config.edits."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from vpnoffload.cli.common import context, table

service_app = typer.Typer(no_args_is_help=True, help="Add, list and remove offloaded services.")

# The access flags, shared by `service add` and `service set`; each writes the TOML key of its name.
AllowOpt = Annotated[Optional[list[str]], typer.Option("--allow", help="Only these sources (CIDR, IPv4 or IPv6) reach the service; repeat for more.")]
DenyOpt = Annotated[Optional[list[str]], typer.Option("--deny", help="These sources (CIDR) never reach the service; repeat for more.")]
AllowFileOpt = Annotated[Optional[str], typer.Option("--allow-file", help="A file of allowed prefixes, one a line, # comments (read by 'up vps').")]
DenyFileOpt = Annotated[Optional[str], typer.Option("--deny-file", help="A file of denied prefixes, one a line, # comments (read by 'up vps').")]
RateOpt = Annotated[Optional[str], typer.Option("--rate", help="New connections per second per source, e.g. 10/s (a burst of up to 5 above it).")]
MaxConnsOpt = Annotated[Optional[str], typer.Option("--max-conns", help="Open connections per source.")]


@service_app.command("add")
def service_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Service name, e.g. blog.")],
    listen: Annotated[str, typer.Option(help="[ADDRESS:]PORT on the VPS; a bare port means the VPS address; IPv6 in brackets: [2001:db8::80]:80.")],
    target: Annotated[str, typer.Option(help="[HOME:]PORT at home; a bare port means the first home box.")],
    proto: Annotated[str, typer.Option(help="tcp or udp.")] = "tcp",
    check: Annotated[str, typer.Option(help="Health check: tcp or http:/path.")] = "tcp",
    hostname: Annotated[Optional[str], typer.Option(help="Public host name, shown on the fallback page (and what --via proxy routes by).")] = None,
    fallback: Annotated[Optional[str], typer.Option(help="While home is down: 'page' (friendly 503) or 'reset' (default: page for web services).")] = None,
    homes: Annotated[Optional[str], typer.Option("--homes", help="Several home boxes in order of preference, e.g. home,attic (TARGET is then a bare port).")] = None,
    via: Annotated[str, typer.Option(help="'dnat' (the kernel forwards LISTEN) or 'proxy' (LISTEN 80/443 is shared with this VPS's own sites; its nginx/HAProxy routes --hostname home: see 'render nginx').")] = "dnat",
    offline_copy: Annotated[Optional[list[str]], typer.Option("--offline-copy", help="A path (e.g. / or /about.html) the VPS keeps a copy of and serves while home is down; repeat for more.")] = None,
    allow: AllowOpt = None, deny: DenyOpt = None, allow_file: AllowFileOpt = None, deny_file: DenyFileOpt = None,
    rate: RateOpt = None, max_conns: MaxConnsOpt = None,
) -> None:
    """Offload a port: visitors to LISTEN on the VPS are served by TARGET at home."""
    from vpnoffload.config import edits

    access = edits.access_values(allow, deny, allow_file, deny_file, rate, max_conns)
    spec = edits.ServiceSpec(listen=listen, target=target, proto=proto, check=check, hostname=hostname,
                             fallback=fallback, via=via, offline_copy=tuple(offline_copy or ()),
                             homes=tuple(h.strip() for h in homes.split(",")) if homes is not None else None,
                             access=access)
    config, svc = edits.add_service(context(ctx).paths.config, name, spec)
    typer.echo(f"added {name}: {svc.listen}/{svc.proto} -> {svc.target} (check {svc.check}, "
               f"while home is down: {'friendly page' if svc.serves_page else 'fast reset'}"
               + (f", {len(svc.offline_copy)} page(s) kept" if svc.offline_copy else "") + ")")
    if svc.via == "proxy":
        typer.echo(f"{svc.hostname} is routed by this VPS's {config.proxy.server}: run 'vpnoffload render "
                   f"{config.proxy.server} --out DIR' and include it; 'vpnoffload up vps' sets up the fail-fast rules")
    else:
        typer.echo("run 'vpnoffload up vps' to apply it")


@service_app.command("set")
def service_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Service name.")],
    allow: AllowOpt = None, deny: DenyOpt = None, allow_file: AllowFileOpt = None, deny_file: DenyFileOpt = None,
    rate: RateOpt = None, max_conns: MaxConnsOpt = None,
    clear: Annotated[Optional[list[str]], typer.Option("--clear", help="Remove an access key: allow, deny, allow_file, deny_file, rate or max_conns; repeat for more.")] = None,
) -> None:
    """Change who may reach a service (a given flag replaces that key); 'up vps' applies it atomically."""
    from vpnoffload.config import edits

    values = edits.access_values(allow, deny, allow_file, deny_file, rate, max_conns)
    svc = edits.set_access(context(ctx).paths.config, name, values, tuple(clear or ()))
    typer.echo(f"{name}: {access_summary(svc)}; run 'vpnoffload up vps' to apply it")


def access_summary(svc: Any) -> str:
    """One line of a service's access rules, for the CLI."""
    a = svc.access
    parts = [f"allow {len(a.allow)} prefix(es)" if a.allow else "", f"allow file {a.allow_file}" if a.allow_file else "",
             f"deny {len(a.deny)} prefix(es)" if a.deny else "", f"deny file {a.deny_file}" if a.deny_file else "",
             f"at most {a.rate}/s new per source" if a.rate else "",
             f"at most {a.max_conns} open per source" if a.max_conns else ""]
    return ", ".join(p for p in parts if p) or "open to every source"


@service_app.command("list")
def service_list(ctx: typer.Context) -> None:
    """List the offloaded services."""
    from vpnoffload import config as cfg

    config = cfg.load(context(ctx).paths.config)
    if not config.services:
        typer.echo("no services; add one with 'vpnoffload service add'")
        return
    rows = [("NAME", "LISTEN", "PROTO", "TARGET", "CHECK", "HOSTNAME")]
    rows += [(s.name, s.listen, s.proto, s.target, str(s.check), s.hostname or "-") for s in config.services.values()]
    table(rows)


@service_app.command("remove")
def service_remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Service name.")]) -> None:
    """Stop offloading a service (run 'up vps' again to apply)."""
    from vpnoffload.config import edits

    edits.remove_service(context(ctx).paths.config, name)
    typer.echo(f"removed {name}")
