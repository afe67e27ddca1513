"""The ``vpnoffload`` command line. The only module that prints and exits.

Heavy libraries (cryptography, jinja2, python-iptables, pyroute2) are imported
inside the commands that need them, so ``--help`` and ``status`` stay fast and
small.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from vpnoffload import __version__
from vpnoffload.errors import ConfigError, ExitStatus
from vpnoffload.cli import values
from vpnoffload.cli.common import Context, context, home_name, path_option
from vpnoffload.exits import error_line, run_main
from vpnoffload.cli.lab import lab_app
from vpnoffload.cli.pki import pki_app
from vpnoffload.cli.render import render_app
from vpnoffload.cli.service import service_app
from vpnoffload.names import shown
from vpnoffload.paths import Paths


class _Group(TyperGroup):
    """Turns every VpnOffloadError into one line on stderr and its exit status.

    A traceback is shown only with ``--debug``; typer's pretty tracebacks never
    show local variables (they could hold private keys).
    """

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]  # typer.Context is click's, narrowed
        result: list[Any] = []

        def body() -> None:
            result.append(super(_Group, self).invoke(ctx))

        status = run_main(body, debug=lambda: _debug(ctx))
        if status:
            raise typer.Exit(status)
        return result[0] if result else None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, windows_expand_args: bool = True,
             **extra: Any) -> Any:
        """typer's own usage errors (``--port abc``, an unknown option) as one line too, not a
        framed multi-line box that repeats a 5000-digit value: exit 2 like every bad input."""
        from typer._click import exceptions as click_errors
        from typer.exceptions import Abort

        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, windows_expand_args=windows_expand_args, **extra)
        except click_errors.NoArgsIsHelpError:
            if not standalone_mode:
                raise
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=True,
                                windows_expand_args=windows_expand_args, **extra)  # the help, as typer shows it
        except click_errors.ClickException as exc:
            if not standalone_mode:
                raise
            typer.echo(error_line(_usage_line(exc)), err=True)
            sys.exit(exc.exit_code)
        except Abort:
            if not standalone_mode:
                raise
            typer.echo("vpnoffload: interrupted", err=True)
            sys.exit(int(ExitStatus.INTERRUPTED))
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _usage_line(exc: Any) -> str:
    """A click/typer usage error as text for :func:`error_line`: quoted values cut short,
    and where to find the command's help."""
    import re

    from vpnoffload.names import shown

    message = re.sub(r"'([^']{40,})'", lambda m: shown(m.group(1), 40), exc.format_message())
    where = getattr(getattr(exc, "ctx", None), "command_path", None)
    return f"{message} (see '{where} --help')" if where else message


def _flags_shown_as_flags() -> None:
    """Leave the value type off flags in ``--help`` (``--verbose, -v``, not ``--verbose -v <bool>``).

    typer 0.29 renders the rich help panel with ``TyperOption.display_type_rich``,
    which names every option's type, flags included, although a flag takes no
    value; its plain-text help (``get_help_record``) leaves the type off for flags
    and counters. This gives the rich panel the same rule. Older typers without
    that method print flags correctly already and are left alone.
    """
    from typer.core import TyperOption

    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "flags_as_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) or getattr(self, "count", False):
            return None
        return original(self, ctx)  # type: ignore[no-any-return]

    display_type_rich.flags_as_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_shown_as_flags()
values.install()  # no pydantic for plain option values: ~50 ms of every command


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
up_app = typer.Typer(no_args_is_help=True, help="Bring one end up (idempotent).")
down_app = typer.Typer(no_args_is_help=True, help="Undo exactly what 'up' did on one end.")
app.add_typer(service_app, name="service")
app.add_typer(pki_app, name="pki")
app.add_typer(render_app, name="render")
app.add_typer(up_app, name="up")
app.add_typer(down_app, name="down")
app.add_typer(lab_app, name="lab")


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
    local_address: Annotated[Optional[str], typer.Option("--local-address", help="1:1-NAT clouds: the private address the provider maps --vps-address to (default: found on this host when --vps-address is on no interface).")] = None,
) -> None:
    """Write the config file and create the PKI (CA, server and first home box certificates)."""
    from vpnoffload.config import edits
    from vpnoffload.routing import nat

    paths = context(ctx).paths
    found = edits.init(paths, vps_address=vps_address, tunnel_subnet=tunnel_subnet, tunnel_subnet6=tunnel_subnet6,
                       port=port, proto=proto, home=home, force=force, local_address=local_address,
                       find_local=nat.find_local)
    typer.echo(f"wrote {paths.config}")
    if local_address is None and found is not None and found.natted:
        typer.echo(f"{found}: wrote [vps] local_address = \"{found.local}\" (a 1:1-NAT cloud; "
                   "--local-address sets another)")
    typer.echo(f"created PKI in {paths.pki} (CA, server, home box {home!r})")
    typer.echo("next: vpnoffload service add NAME --listen PORT --target PORT")


# ------------------------------------------------------------------ up / down


DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")]
HomeOpt = Annotated[Optional[str], typer.Option("--home", help="Home box (default: the first).")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="Client profile (default: STATE_DIR/HOME.ovpn).")]


def _run(ctx: typer.Context, verb: str, end: str, *, home: str | None = None, profile: str | None = None,
         dry_run: bool = False) -> None:
    """Every up/down goes through deploy.run; this only says what happened."""
    from vpnoffload.deploy import run

    request = run.Request(verb, end, home=home, profile=path_option(profile, "--profile"), dry_run=dry_run)  # type: ignore[arg-type]
    outcome = run.execute(request, context(ctx).paths, announce=lambda line: typer.echo(f"  - {line}"))
    if outcome.nothing_to_do:
        typer.echo(f"nothing to do: {outcome.what} is already as configured")
    elif not outcome.applied:
        typer.echo(f"would change {len(outcome.steps)} thing(s):")
        for line in outcome.steps:
            typer.echo(f"  - {line}")
    else:
        typer.echo(f"done: {outcome.what} changed ({len(outcome.steps)} step(s))")


@up_app.command("vps")
def up_vps(ctx: typer.Context, dry_run: DryRun = False) -> None:
    """Start the OpenVPN server, forward the services' ports to home (DNAT), enable forwarding."""
    _run(ctx, "up", "vps", dry_run=dry_run)


@up_app.command("home")
def up_home(ctx: typer.Context, home: HomeOpt = None, profile: ProfileOpt = None, dry_run: DryRun = False) -> None:
    """Connect to the VPS and route replies for visitors back through the tunnel."""
    _run(ctx, "up", "home", home=home, profile=profile, dry_run=dry_run)


@down_app.command("vps")
def down_vps(ctx: typer.Context, dry_run: DryRun = False) -> None:
    """Stop the tunnel and remove every rule, address and setting 'up vps' added."""
    _run(ctx, "down", "vps", dry_run=dry_run)


@down_app.command("home")
def down_home(ctx: typer.Context, home: HomeOpt = None, profile: ProfileOpt = None, dry_run: DryRun = False) -> None:
    """Stop the tunnel and remove the policy routing and rules 'up home' added."""
    _run(ctx, "down", "home", home=home, profile=profile, dry_run=dry_run)


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check this machine for what vpnoffload needs, with a fix hint for each problem."""
    from vpnoffload import config as cfg
    from vpnoffload.deploy import doctor as doc

    from vpnoffload.homestatus import is_home_end

    paths = context(ctx).paths
    paths.check()  # a FIFO, directory or symlink loop is bad input, not "no config yet"
    config = cfg.load(paths.config) if paths.config.exists() else None
    end = "home" if is_home_end(paths) else "vps"
    if end == "vps" and config is not None and os.path.lexists(paths.pki):
        from vpnoffload.pki import Pki

        Pki.open(paths.pki)  # a damaged index is one line (exit 2), not a clean report up vps then contradicts
    typer.echo(f"checking this machine as the {'home box' if end == 'home' else 'VPS'}")
    findings = doc.all_checks(config, end, paths.config)
    for f in findings:
        line = f"[{f.level:>4}] {f.check}: {f.detail}"
        typer.echo(line + (f" -> {f.hint}" if f.hint and f.level != "ok" else ""))
    if any(f.level == "fail" for f in findings):
        raise typer.Exit(int(ExitStatus.MISSING_PREREQUISITE))


# ------------------------------------------------------------------ watch / status


@app.command()
def watch(ctx: typer.Context) -> None:
    """Run the failover watchdog in the foreground (systemd runs it as vpnoffload-watch)."""
    from vpnoffload.tunnel import server_running
    from vpnoffload.watch import loop as watchrun

    paths = context(ctx).paths
    raise typer.Exit(watchrun.run(paths, server_up=server_running(paths)))


@app.command()
def status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Show the tunnel and each service. Exit 0: all forwarding; 1: fallback or tunnel down; 2: not set up."""
    from vpnoffload import status as status_mod
    from vpnoffload import homestatus

    paths = context(ctx).paths
    home = homestatus.shown(paths, as_json)
    if home is not None:  # a home box: every VPS it serves
        typer.echo(home[0])
        raise typer.Exit(int(home[1]))
    report = status_mod.report_for(paths)
    typer.echo(status_mod.render(report, as_json))
    raise typer.Exit(int(report.exit_status))


@app.command("install-service")
def install_service(
    ctx: typer.Context,
    end: Annotated[str, typer.Argument(help="vps (the up unit and the watchdog) or home.")] = "vps",
    home: HomeOpt = None,
    out: Annotated[Optional[str], typer.Option(help="Write the units here instead of /etc/systemd/system (no systemctl).")] = None,
) -> None:
    """Install and start systemd units: 'up END' at boot, 'down END' on stop (and the watchdog on the VPS)."""
    from vpnoffload import config as cfg
    from vpnoffload.deploy import units as service_unit

    paths = context(ctx).paths
    if end not in ("vps", "home"):
        raise ConfigError(f"{shown(end)} is not an end: use 'vps' or 'home'", field="END")
    where = path_option(out, "--out")
    config = cfg.load(paths.config)
    name = home_name(config, home) if end == "home" else None
    if where is None:
        service_unit.require_systemd()  # check first: write nothing where it cannot run
    written = service_unit.install(paths, end, name, where)
    for path in written:
        typer.echo(f"wrote {path}")
    if where is None:
        service_unit.enable([p.name for p in written])
        typer.echo(f"enabled and started {', '.join(p.name for p in written)}")


def main() -> None:
    """The typer CLI (the console script goes through vpnoffload.entry first)."""
    app(prog_name="vpnoffload")
