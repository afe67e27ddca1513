"""The ``vpnoffload`` command line. The only module that prints and exits.

Heavy libraries (cryptography, jinja2, python-iptables, pyroute2) are imported
inside the commands that need them, so ``--help`` and ``status`` stay fast and
small.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from vpnoffload import __version__
from vpnoffload.errors import ConfigError, ExitStatus, VpnOffloadError
from vpnoffload.cli.lab import lab_app
from vpnoffload.paths import Paths


class _Group(TyperGroup):
    """Turns every VpnOffloadError into one line on stderr and its exit status.

    A traceback is shown only with ``--debug``; typer's pretty tracebacks never
    show local variables (they could hold private keys).
    """

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VpnOffloadError as exc:
            if _debug(ctx):
                raise
            typer.echo(f"vpnoffload: error: {exc}", err=True)
            raise typer.Exit(int(exc.exit_status)) from None
        except KeyboardInterrupt:
            typer.echo("vpnoffload: interrupted", err=True)
            raise typer.Exit(int(ExitStatus.INTERRUPTED)) from None


def _debug(ctx: typer.Context) -> bool:
    obj = ctx.find_root().obj
    return bool(getattr(obj, "debug", False))


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Serve chosen ports of this VPS from a machine at home over OpenVPN.",
)
service_app = typer.Typer(no_args_is_help=True, help="Add, list and remove offloaded services.")
pki_app = typer.Typer(no_args_is_help=True, help="List, issue and revoke certificates.")
render_app = typer.Typer(no_args_is_help=True, help="Write OpenVPN configs for the VPS or a home box, or nginx/HAProxy includes.")
up_app = typer.Typer(no_args_is_help=True, help="Bring one end up (idempotent).")
down_app = typer.Typer(no_args_is_help=True, help="Undo exactly what 'up' did on one end.")
app.add_typer(service_app, name="service")
app.add_typer(pki_app, name="pki")
app.add_typer(render_app, name="render")
app.add_typer(up_app, name="up")
app.add_typer(down_app, name="down")
app.add_typer(lab_app, name="lab")


@dataclass
class Context:
    paths: Paths
    debug: bool


def _ctx(ctx: typer.Context) -> Context:
    return ctx.find_root().obj


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vpnoffload {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Config file (env VPNOFFLOAD_CONFIG; default /etc/vpnoffload/vpnoffload.toml).")] = None,
    state_dir: Annotated[Optional[Path], typer.Option("--state-dir", help="Where PKI and runtime state live (default: state/ beside the config).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each change as it is made.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
                        format="vpnoffload: %(message)s", stream=sys.stderr)
    ctx.obj = Context(paths=Paths.resolve(config, state_dir), debug=debug)


# ------------------------------------------------------------------ init


@app.command()
def init(
    ctx: typer.Context,
    vps_address: Annotated[str, typer.Option("--vps-address", help="The VPS's public IPv4 address.")],
    tunnel_subnet: Annotated[str, typer.Option(help="Private subnet inside the tunnel.")] = "10.88.0.0/24",
    tunnel_subnet6: Annotated[Optional[str], typer.Option(help="Private IPv6 subnet inside the tunnel (e.g. fd00:88::/64), for services listening on IPv6.")] = None,
    port: Annotated[int, typer.Option(help="OpenVPN port on the VPS.")] = 1194,
    proto: Annotated[str, typer.Option(help="OpenVPN transport: udp or tcp.")] = "udp",
    home: Annotated[str, typer.Option(help="Name of the first home box.")] = "home",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config and PKI.")] = False,
) -> None:
    """Write the config file and create the PKI (CA, server and first home box certificates)."""
    from vpnoffload import config as cfg
    from vpnoffload import pki as pki_mod

    paths = _ctx(ctx).paths
    if paths.config.exists() and not force:
        raise ConfigError(f"{paths.config} already exists; use --force to overwrite it (this also makes a new PKI)")
    # Validate everything before writing anything.
    cfg.check_port(port, "--port")
    cfg.check_proto(proto, "--proto")
    cfg.check_name(home, "--home")
    text = cfg.initial_text(vps_address, tunnel_subnet, port, proto, home, subnet6=tunnel_subnet6)
    cfg.parse_text(text, "init")  # raises on a bad address / overlapping subnet
    pki = pki_mod.Pki.create(paths.pki, force=force)
    pki.issue(home)
    cfg.write_atomic(paths.config, text)
    typer.echo(f"wrote {paths.config}")
    typer.echo(f"created PKI in {paths.pki} (CA, server, home box {home!r})")
    typer.echo("next: vpnoffload service add NAME --listen PORT --target PORT")


# ------------------------------------------------------------------ service


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
) -> None:
    """Offload a port: visitors to LISTEN on the VPS are served by TARGET at home."""
    import tomlkit

    from vpnoffload import config as cfg

    paths = _ctx(ctx).paths
    cfg.check_name(name, "service name")

    def change(doc: Any) -> None:
        if "services" not in doc:
            doc.add("services", tomlkit.table(is_super_table=True))
        if name in doc["services"]:
            raise ConfigError(f"service {name!r} already exists; remove it first", field=f"services.{name}")
        table = tomlkit.table()
        table.add("listen", listen)
        table.add("target", target)
        table.add("proto", proto)
        table.add("check", check)
        if hostname is not None:
            table.add("hostname", hostname)
        if fallback is not None:
            table.add("fallback", fallback)
        if homes is not None:
            table.add("homes", [h.strip() for h in homes.split(",")])
        if via != "dnat":
            table.add("via", via)
        doc["services"][name] = table

    config = cfg.edit(paths.config, change)
    svc = config.services[name]
    typer.echo(f"added {name}: {svc.listen}/{svc.proto} -> {svc.target} (check {svc.check}, "
               f"while home is down: {'friendly page' if svc.serves_page else 'fast reset'})")
    if svc.via == "proxy":
        typer.echo(f"{svc.hostname} is routed by this VPS's {config.proxy.server}: run 'vpnoffload render "
                   f"{config.proxy.server} --out DIR' and include it; 'vpnoffload up vps' sets up the fail-fast rules")
    else:
        typer.echo("run 'vpnoffload up vps' to apply it")


@service_app.command("list")
def service_list(ctx: typer.Context) -> None:
    """List the offloaded services."""
    from vpnoffload import config as cfg

    config = cfg.load(_ctx(ctx).paths.config)
    if not config.services:
        typer.echo("no services; add one with 'vpnoffload service add'")
        return
    rows = [("NAME", "LISTEN", "PROTO", "TARGET", "CHECK", "HOSTNAME")]
    rows += [(s.name, s.listen, s.proto, s.target, str(s.check), s.hostname or "-") for s in config.services.values()]
    _table(rows)


@service_app.command("remove")
def service_remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Service name.")]) -> None:
    """Stop offloading a service (run 'up vps' again to apply)."""
    from vpnoffload import config as cfg

    def change(doc: Any) -> None:
        if "services" not in doc or name not in doc["services"]:
            raise ConfigError(f"no service named {name!r}", field="service name")
        del doc["services"][name]

    cfg.edit(_ctx(ctx).paths.config, change)
    typer.echo(f"removed {name}")


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


# ------------------------------------------------------------------ pki


@pki_app.command("list")
def pki_list(ctx: typer.Context) -> None:
    """List certificates with their serials, expiry and revocation."""
    from vpnoffload import pki as pki_mod

    certs = pki_mod.Pki.open(_ctx(ctx).paths.pki).list()
    rows = [("NAME", "KIND", "SERIAL", "EXPIRES", "STATUS")]
    rows += [(c.name, c.kind, f"{c.serial:x}", c.not_after.date().isoformat(), "revoked" if c.revoked else "valid") for c in certs]
    _table(rows)


@pki_app.command("issue")
def pki_issue(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Name of the new home box.")]) -> None:
    """Add a home box: a client certificate and a fixed tunnel address."""
    import tomlkit

    from vpnoffload import config as cfg
    from vpnoffload import pki as pki_mod

    paths = _ctx(ctx).paths
    cfg.check_name(name, "home name")
    config = cfg.load(paths.config)
    if name in config.homes:
        raise ConfigError(f"home box {name!r} already exists", field=f"homes.{name}")
    pki = pki_mod.Pki.open(paths.pki)
    if pki.exists(name):
        raise ConfigError(f"a certificate named {name!r} exists (perhaps revoked); pick another name", field="home name")
    address = cfg.next_home_address(config)

    def change(doc: Any) -> None:
        table = tomlkit.table()
        table.add("address", str(address))
        doc["homes"][name] = table

    cfg.edit(paths.config, change)
    try:
        pki.issue(name)
    except BaseException:
        cfg.edit(paths.config, lambda doc: doc["homes"].remove(name))
        raise
    typer.echo(f"issued {name} (tunnel address {address}); run 'vpnoffload up vps' to apply, "
               f"then 'vpnoffload render home --home {name} --out DIR' for its profile")


@pki_app.command("revoke")
def pki_revoke(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Home box to revoke.")]) -> None:
    """Revoke a home box's certificate: it can no longer connect."""
    from vpnoffload import config as cfg
    from vpnoffload import pki as pki_mod

    paths = _ctx(ctx).paths
    config = cfg.load(paths.config)
    if config.services_of(name):
        users = ", ".join(s.name for s in config.services_of(name))
        raise ConfigError(f"home box {name!r} still serves {users}; remove or retarget those services first")
    pki_mod.Pki.open(paths.pki).revoke(name)
    if name in config.homes:
        cfg.edit(paths.config, lambda doc: doc["homes"].remove(name))
    typer.echo(f"revoked {name}; run 'vpnoffload up vps' to publish the new CRL")


# ------------------------------------------------------------------ render


@render_app.command("vps")
def render_vps(ctx: typer.Context, out: Annotated[Path, typer.Option(help="Directory to write into.")]) -> None:
    """Write the OpenVPN server config, per-home addresses, CRL and keys (0600)."""
    from vpnoffload import config as cfg
    from vpnoffload import pki as pki_mod
    from vpnoffload.render import openvpn as render

    paths = _ctx(ctx).paths
    config = cfg.load(paths.config)
    written = render.render_vps(config, pki_mod.Pki.open(paths.pki), out)
    typer.echo(f"wrote {len(written)} files to {out}")


@render_app.command("home")
def render_home(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Directory to write into.")],
    home: Annotated[Optional[str], typer.Option(help="Home box (default: the first).")] = None,
) -> None:
    """Write one self-contained client profile NAME.ovpn for a home box."""
    from vpnoffload import config as cfg
    from vpnoffload import pki as pki_mod
    from vpnoffload.render import openvpn as render

    paths = _ctx(ctx).paths
    config = cfg.load(paths.config)
    name = _home_name(config, home)
    path = render.render_home(config, pki_mod.Pki.open(paths.pki), name, out)
    typer.echo(f"wrote {path} (secret: copy it to the home box, e.g. with scp, and keep it 0600)")


@render_app.command("nginx")
def render_nginx(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Directory to write into, e.g. /etc/vpnoffload/nginx.")],
) -> None:
    """Write the nginx includes that route the via=proxy services by name (Host, and SNI on 443)."""
    from vpnoffload import config as cfg
    from vpnoffload.render import webserver

    config = cfg.load(_ctx(ctx).paths.config)
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
    out: Annotated[Path, typer.Option(help="Directory to write into, e.g. /etc/vpnoffload/haproxy.")],
) -> None:
    """Write the HAProxy frontends and backends that route the via=proxy services by name."""
    from vpnoffload import config as cfg
    from vpnoffload.render import webserver

    config = cfg.load(_ctx(ctx).paths.config)
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


def _home_name(config: Any, home: str | None) -> str:
    if home is None:
        return config.default_home.name
    if home not in config.homes:
        known = ", ".join(config.homes)
        raise ConfigError(f"unknown home box {home!r} (known: {known})", field="--home")
    return home


# ------------------------------------------------------------------ up / down


DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")]
HomeOpt = Annotated[Optional[str], typer.Option("--home", help="Home box (default: the first).")]
ProfileOpt = Annotated[Optional[Path], typer.Option("--profile", help="Client profile (default: STATE_DIR/HOME.ovpn).")]


def _execute(actions: list[Any], dry_run: bool, what: str) -> None:
    from vpnoffload import plan

    if not actions:
        typer.echo(f"nothing to do: {what} is already as configured")
        return
    if dry_run:
        typer.echo(f"would change {len(actions)} thing(s):")
        for action in actions:
            typer.echo(f"  - {action.summary}")
        return
    for action in actions:
        typer.echo(f"  - {action.summary}")
    plan.apply(actions)
    typer.echo(f"done: {what} changed ({len(actions)} step(s))")


@up_app.command("vps")
def up_vps(ctx: typer.Context, dry_run: DryRun = False) -> None:
    """Start the OpenVPN server, forward the services' ports to home (DNAT), enable forwarding."""
    from vpnoffload import config as cfg
    from vpnoffload import deploy
    from vpnoffload.deploy import doctor

    paths = _ctx(ctx).paths
    config = cfg.load(paths.config)
    doctor.require_prerequisites()
    with deploy.exclusive(paths):
        try:
            actions = deploy.plan_up_vps(config, paths, deploy.Backends.real())
            _execute(actions, dry_run, "the VPS end")
        finally:
            deploy.cleanup_scratch(paths)


@up_app.command("home")
def up_home(ctx: typer.Context, home: HomeOpt = None, profile: ProfileOpt = None, dry_run: DryRun = False) -> None:
    """Connect to the VPS and route replies for visitors back through the tunnel."""
    from vpnoffload import config as cfg
    from vpnoffload import deploy
    from vpnoffload.deploy import doctor

    paths = _ctx(ctx).paths
    config = cfg.load(paths.config)
    name = _home_name(config, home)
    doctor.require_prerequisites()
    with deploy.exclusive(paths):
        actions = deploy.plan_up_home(config, paths, deploy.Backends.real(), name, profile or paths.profile(name))
        _execute(actions, dry_run, f"home box {name}")


@down_app.command("vps")
def down_vps(ctx: typer.Context, dry_run: DryRun = False) -> None:
    """Stop the tunnel and remove every rule, address and setting 'up vps' added."""
    from vpnoffload import deploy
    from vpnoffload.deploy import doctor

    paths = _ctx(ctx).paths
    doctor.require_prerequisites()
    with deploy.exclusive(paths):
        _execute(deploy.plan_down_vps(paths, deploy.Backends.real()), dry_run, "the VPS end")


@down_app.command("home")
def down_home(ctx: typer.Context, home: HomeOpt = None, profile: ProfileOpt = None, dry_run: DryRun = False) -> None:
    """Stop the tunnel and remove the policy routing and rules 'up home' added."""
    from vpnoffload import config as cfg
    from vpnoffload import deploy
    from vpnoffload.deploy import doctor

    paths = _ctx(ctx).paths
    name = home or cfg.load(paths.config).default_home.name
    cfg.check_name(name, "--home")
    doctor.require_prerequisites()
    with deploy.exclusive(paths):
        actions = deploy.plan_down_home(paths, deploy.Backends.real(), name, profile or paths.profile(name))
        _execute(actions, dry_run, f"home box {name}")


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check this machine for what vpnoffload needs, with a fix hint for each problem."""
    from vpnoffload import config as cfg
    from vpnoffload.deploy import doctor as doc

    paths = _ctx(ctx).paths
    config = cfg.load(paths.config) if paths.config.exists() else None
    findings = doc.all_checks(config)
    for f in findings:
        line = f"[{f.level:>4}] {f.check}: {f.detail}"
        typer.echo(line + (f" -> {f.hint}" if f.hint and f.level != "ok" else ""))
    if any(f.level == "fail" for f in findings):
        raise typer.Exit(int(ExitStatus.MISSING_PREREQUISITE))


# ------------------------------------------------------------------ watch / status


@app.command()
def watch(ctx: typer.Context) -> None:
    """Run the failover watchdog in the foreground (systemd runs it as vpnoffload-watch)."""
    from vpnoffload.watch import loop as watchrun

    paths = _ctx(ctx).paths
    raise typer.Exit(watchrun.run(paths, server_running=watchrun.server_running(paths)))


@app.command()
def status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Show the tunnel and each service. Exit 0: all forwarding; 1: fallback or tunnel down; 2: not set up."""
    from vpnoffload import status as status_mod

    report = status_mod.report_for(_ctx(ctx).paths)
    typer.echo(status_mod.render(report, as_json))
    raise typer.Exit(int(report.exit_status))


@app.command("install-service")
def install_service(
    ctx: typer.Context,
    end: Annotated[str, typer.Argument(help="vps (the up unit and the watchdog) or home.")] = "vps",
    home: HomeOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the units here instead of /etc/systemd/system (no systemctl).")] = None,
) -> None:
    """Install and start systemd units: 'up END' at boot, 'down END' on stop (and the watchdog on the VPS)."""
    from vpnoffload import config as cfg
    from vpnoffload.deploy import units as service_unit

    paths = _ctx(ctx).paths
    if end not in ("vps", "home"):
        raise ConfigError(f"{end!r} is not an end: use 'vps' or 'home'", field="END")
    config = cfg.load(paths.config)
    name = _home_name(config, home) if end == "home" else None
    if out is None:
        service_unit.require_systemd()  # check first: write nothing where it cannot run
    written = service_unit.install(paths, end, name, out)
    for path in written:
        typer.echo(f"wrote {path}")
    if out is None:
        service_unit.enable([p.name for p in written])
        typer.echo(f"enabled and started {', '.join(p.name for p in written)}")


def main() -> None:
    """The typer CLI (the console script goes through vpnoffload.entry first)."""
    app(prog_name="vpnoffload")
