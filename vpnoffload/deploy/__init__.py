"""``up`` and ``down`` on each end: compose the backends' plans into one plan.

Every step is computed first (validation, desired state, what the system has),
so bad input changes nothing; :func:`vpnoffload.plan.apply` then runs the plan
and rolls back on failure. A second ``up`` finds nothing to do, and ``down``
removes only what vpnoffload owns or recorded adding.
"""

from __future__ import annotations

import contextlib
import filecmp
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpnoffload import fsio
from vpnoffload import record as record_mod
from vpnoffload import users
from vpnoffload.errors import BackendError, NotSetUpError
from vpnoffload.model import Config
from vpnoffload.paths import Paths
from vpnoffload.plan import Action

log = logging.getLogger(__name__)

#: How long ``up home`` waits for the tunnel to connect before giving up (and rolling back).
CONNECT_TIMEOUT = 30.0
SERVER_READY_TIMEOUT = 15.0


@dataclass
class Backends:
    """The OS layer, injectable so unit tests run the real planning on fakes."""

    firewall: Any
    routing: Any
    proc_root: Path = Path("/proc/sys")
    users: Any = users
    tunnel_factory: Callable[..., Any] | None = None
    page_factory: Callable[[Paths], Any] | None = None
    #: The host's own firewall (Docker, ufw, nftables; firewall/host_plan.py); None: leave it alone.
    host: Any = None
    #: The watchdog's visitor-path probe namespace (routing/probe.py); None: none is made.
    probe: Any = None

    @classmethod
    def real(cls) -> "Backends":
        from vpnoffload.firewall import default_backend
        from vpnoffload.firewall.host_plan import HostFirewall
        from vpnoffload.routing import Pyroute2Backend
        from vpnoffload.routing.probe import ProbeNamespace

        return cls(firewall=default_backend(), routing=Pyroute2Backend(), host=HostFirewall(),
                   probe=ProbeNamespace())


# ------------------------------------------------------------------ locking


@contextlib.contextmanager
def exclusive(paths: Paths, timeout: float = 10.0) -> Iterator[None]:
    """One vpnoffload run at a time per state dir: two `up`s must never interleave."""
    from vpnoffload.locks import held

    fsio.make_dir(paths.state, 0o700)  # explicit modes: the umask may be 000
    fsio.make_dir(paths.run, 0o700)
    with held(str(paths.lock), timeout, lambda: f"another vpnoffload run holds {paths.lock}; try again when it is done"):
        yield


# ------------------------------------------------------------------ helpers


def _tunnel(backends: Backends, name: str, conf: Path, workdir: Path, paths: Paths,
            extra_args: tuple[str, ...] = ()) -> Any:
    """OpenVPN under systemd when systemd runs this network namespace, else a daemon we track."""
    if backends.tunnel_factory is not None:
        return backends.tunnel_factory(name=name, config=conf, workdir=workdir, run_dir=paths.run)
    from vpnoffload import tunnel

    if tunnel.systemd_manages_this_netns():
        kind, instance = ("server", "vpnoffload") if name == "server" else ("client", f"vpnoffload-{name.removeprefix('home-')}")
        options = tuple(f"{a[2:]} {b}" for a, b in zip(extra_args[::2], extra_args[1::2]))  # --user x -> user x
        return tunnel.SystemdTunnel(
            name=name, unit=f"openvpn-{kind}@{instance}",
            wrapper=Path(f"/etc/openvpn/{kind}/{instance}.conf"),
            wrapper_text=tunnel.wrapper_text(workdir, conf.name, options),
        )
    return tunnel.DaemonTunnel(name=name, config=conf, workdir=workdir, run_dir=paths.run, extra_args=extra_args)


def _record_path(paths: Paths, end: str) -> Path:
    return paths.run / f"{end}.json"


def _save_record_action(path: Path, rec: record_mod.Record) -> Action:
    before = path.read_bytes() if path.exists() else None

    def undo() -> None:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)

    return Action(f"remember what was changed in {path}", lambda: record_mod.save(path, rec), undo)


def _user_actions(backends: Backends, rec: record_mod.Record) -> list[Action]:
    if backends.users.exists(users.RUN_AS):
        return []

    def do() -> None:
        backends.users.create(users.RUN_AS)
        rec.created_user = users.RUN_AS

    def undo() -> None:
        backends.users.delete(users.RUN_AS)
        rec.created_user = None

    return [Action(f"create system user {users.RUN_AS} for OpenVPN to drop privileges to", do, undo)]


def _user_removal(backends: Backends, rec: record_mod.Record) -> list[Action]:
    name = rec.created_user
    if not name or not backends.users.exists(name):
        return []

    def delete() -> None:
        # Best effort: another OpenVPN (the other end in a lab, a container
        # sharing uids) may still run as this user; that must not fail `down`.
        try:
            backends.users.delete(name)
        except BackendError as exc:
            log.warning("left system user %s in place: %s", name, exc)

    return [Action(f"delete system user {name} (created by up)", delete, None)]


def _sysctl_actions(desired: dict[str, str], backends: Backends, rec: record_mod.Record) -> list[Action]:
    from vpnoffload import sysctl

    actions, previous = sysctl.plan_sysctls(desired, proc_root=backends.proc_root)
    if actions:
        rec.merge_sysctl(previous)
    return actions


# ------------------------------------------------------------------ VPS


def _same_tree(a: Path, b: Path) -> bool:
    if not b.is_dir():
        return False
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def _server_config_actions(config: Config, paths: Paths, tunnel: Any) -> list[Action]:
    """Render into a scratch dir; install (and restart OpenVPN) only when something changed."""
    from vpnoffload import pki as pki_mod
    from vpnoffload.render import openvpn as render

    pki = pki_mod.Pki.open(paths.pki)
    scratch = _scratch(paths)
    render.render_vps(config, pki, scratch, status_path=paths.run / "openvpn-server.status", run_as=users.RUN_AS,
                      set_mode=True)
    return _install_actions(scratch, paths.server_dir, tunnel, "OpenVPN server config", "OpenVPN server",
                            SERVER_READY_TIMEOUT)


def page_server(paths: Paths, backends: Backends) -> Any:
    if backends.page_factory is not None:
        return backends.page_factory(paths)
    from vpnoffload.watch.pagectl import PageDaemon

    return PageDaemon.for_paths(paths)


def _page_actions(config: Config, paths: Paths, daemon: Any, needed: bool = False) -> list[Action]:
    """The friendly pages, rendered now (not during an outage), and the server that sends them:
    restarted if it runs and they changed, started only when ``needed`` (a running watchdog
    keeps a web service on fallback); otherwise the watchdog starts it when it is needed."""
    from vpnoffload.render import pages

    scratch = _scratch(paths)
    pages.render_pages(config, scratch)
    # What the server listens on is part of what it was started with: a change restarts it.
    listen = f"{config.vps.bind_address}:{config.watch.fallback_port} retry-after {config.watch.retry_after}\n"
    listen += "".join(f"{s.name} tls {s.tls_cert} {s.tls_key}\n" for s in config.services.values() if s.page_over_tls)
    if any(s.serves_page for s in config.ipv6_services):
        listen += f"[::]:{config.watch.fallback_port}\n"
    (scratch / "listen.txt").write_text(listen)
    return _install_actions(scratch, paths.pages, daemon, "friendly pages", "friendly-page server", 10.0,
                            start=needed)


def _scratch(paths: Paths) -> Path:
    fsio.make_dir(paths.state, 0o700)
    return Path(tempfile.mkdtemp(prefix=".render.", dir=paths.state))


def _install_actions(scratch: Path, target: Path, daemon: Any, what: str, who: str, timeout: float,
                     start: bool = True) -> list[Action]:
    """Swap ``scratch`` in for ``target`` if it differs, and restart ``daemon`` to match
    (or start it, if it is not running and ``start``)."""
    backup = target.with_name(f".{target.name}.old")
    if _same_tree(scratch, target):
        shutil.rmtree(scratch)
        return [] if daemon.running() or not start else [_start_action(daemon, f"start {who}", timeout)]

    def install() -> None:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(backup, ignore_errors=True)
        if target.exists():
            target.rename(backup)
        scratch.rename(target)

    def restore() -> None:
        shutil.rmtree(target, ignore_errors=True)
        if backup.exists():
            backup.rename(target)

    summary = f"install {what} in {target}"
    if not daemon.running():
        return [Action(summary, install, restore)] + ([_start_action(daemon, f"start {who}", timeout)] if start else [])

    def install_and_restart() -> None:
        install()
        daemon.stop()
        daemon.start()
        daemon.wait_ready(timeout)

    def restore_and_restart() -> None:
        restore()
        daemon.stop()
        daemon.start()

    return [Action(f"{summary} and restart {who}", install_and_restart, restore_and_restart)]


def _start_action(daemon: Any, summary: str, timeout: float) -> Action:
    def do() -> None:
        daemon.start()
        daemon.wait_ready(timeout)

    # Interrupted while waiting for it to be ready: the started process must go too.
    return Action(summary, do, daemon.stop, undo_if_partial=True)


def server_tunnel(paths: Paths, backends: Backends) -> Any:
    return _tunnel(backends, "server", paths.server_dir / "server.conf", paths.server_dir, paths)


def plan_up_vps(config: Config, paths: Paths, backends: Backends) -> list[Action]:
    from vpnoffload import firewall, routing
    from vpnoffload.config import check_files

    check_files(config)
    rec_path = _record_path(paths, "vps")
    rec = record_mod.load(rec_path)
    actions: list[Action] = []
    actions += _user_actions(backends, rec)
    # Filter rules go in before forwarding is switched on, so no window is unfiltered.
    # Keep services the running watchdog has on fallback there: re-running `up`
    # during an outage must not send visitors back to a dead home.
    targets = current_targets(config, paths)
    actions += firewall.plan(backends.firewall, firewall.vps_ruleset(config, active=targets))
    # OpenVPN and the page server bind vps.local_address (1:1 NAT) or vps.address: it must be here.
    from vpnoffload.routing.nat import require_bindable

    require_bindable(config, backends.routing)
    interface = config.vps.interface or backends.routing.find_interface(config.vps.bind_address)
    if backends.host is not None:  # a drop in the host's own firewall would be final: open what we need there
        from vpnoffload.firewall.hostfw import vps_openings

        actions += backends.host.plan_open(vps_openings(config, interface), rec)
    address_actions, owned = routing.plan_addresses(
        backends.routing, routing.vps_addresses(config, interface), [tuple(a) for a in rec.addresses])
    actions += address_actions
    rec.addresses = [list(a.as_record()) for a in owned]
    actions += _sysctl_actions(_vps_sysctls(config, interface, backends), backends, rec)
    if backends.probe is not None:  # where the watchdog checks the visitors' path from (issue 13)
        actions += backends.probe.plan_up()
    actions += _server_config_actions(config, paths, server_tunnel(paths, backends))
    on_page = any(home is None and config.services[name].serves_page for name, home in targets.items())
    actions += _page_actions(config, paths, page_server(paths, backends), needed=on_page)
    actions += _forget_stale_watch_state(paths)
    if actions:  # the record may change while the plan runs (a user created, an old sysctl read)
        actions.append(_save_record_action(rec_path, rec))
    return actions


def _vps_sysctls(config: Config, interface: str, backends: Backends) -> dict[str, str]:
    """IPv4 forwarding always; IPv6 forwarding (and RA kept on) only for IPv6 services."""
    from vpnoffload import sysctl

    desired = sysctl.vps_sysctls()
    if config.ipv6_services:
        desired |= sysctl.vps_ipv6_sysctls(interface, proc_root=backends.proc_root)
    return desired


def current_targets(config: Config, paths: Paths) -> dict[str, str | None]:
    """Where a running watchdog sends each service (a home, or None: fallback).

    Only a live watchdog's view counts: with none running, `up vps` puts every
    service back on its first home, as a fresh start would.
    """
    from vpnoffload.watch.state import believed_targets, read_state, watch_pid

    if watch_pid(paths) is None:
        return {}
    believed = believed_targets(read_state(paths.watch_state))
    return {n: h for n, h in believed.items()
            if n in config.services and (h is None or h in config.services[n].homes)}


def _forget_stale_watch_state(paths: Paths) -> list[Action]:
    """With no watchdog running, `up vps` just put every service back home: the
    dead watchdog's last word no longer describes the rules (status reads it)."""
    from vpnoffload.watch.state import watch_pid

    if watch_pid(paths) is not None or not paths.watch_state.exists():
        return []
    return [Action(f"forget the stopped watchdog's state {paths.watch_state}",
                   lambda: paths.watch_state.unlink(missing_ok=True), None)]


def _stop_watchdog_actions(paths: Paths) -> list[Action]:
    """`down vps` stops a running watchdog first, or its next swap would write the chains back."""
    from vpnoffload.procs import terminate
    from vpnoffload.watch.state import watch_pid

    pid = watch_pid(paths)
    actions = []
    if pid is not None:
        actions.append(Action(f"stop the watchdog (pid {pid}; under systemd: systemctl stop vpnoffload-watch)",
                              lambda: terminate(pid, kill=False), None))
    if paths.watch_state.exists():
        actions.append(Action(f"forget the watchdog's state {paths.watch_state}",
                              lambda: paths.watch_state.unlink(missing_ok=True), None))
    return actions


def plan_down_vps(paths: Paths, backends: Backends) -> list[Action]:
    """Undo `up vps`. Needs no valid config: only owned names and the record."""
    from vpnoffload import firewall, routing, sysctl

    rec_path = _record_path(paths, "vps")
    rec = record_mod.load(rec_path)
    actions: list[Action] = _stop_watchdog_actions(paths)
    tunnel = server_tunnel(paths, backends)
    if tunnel.running():
        actions.append(Action("stop OpenVPN server", tunnel.stop, None))
    pages = page_server(paths, backends)
    if pages.running():
        actions.append(Action("stop friendly-page server", pages.stop, None))
    actions += sysctl.restore_actions(rec.sysctl, proc_root=backends.proc_root)
    actions += routing.plan_remove_addresses(backends.routing, [tuple(a) for a in rec.addresses])
    if backends.probe is not None:
        actions += backends.probe.plan_down()
    actions += firewall.plan(backends.firewall, firewall.empty_ruleset())
    if backends.host is not None:
        actions += backends.host.plan_close(rec)
    actions += _user_removal(backends, rec)
    if rec_path.exists():
        actions.append(Action(f"forget {rec_path}", lambda: rec_path.unlink(missing_ok=True), None))
    return actions


# ------------------------------------------------------------------ home


def home_tunnel(paths: Paths, backends: Backends, home: str, profile: Path) -> Any:
    # The profile is portable (it names no local user); drop privileges from the command line.
    return _tunnel(backends, f"home-{home}", profile.absolute(), profile.absolute().parent, paths,
                   extra_args=("--user", users.RUN_AS, "--group", users.RUN_AS))


def plan_up_home(config: Config, paths: Paths, backends: Backends, home: str, profile: Path) -> list[Action]:
    from vpnoffload import firewall, routing

    if not profile.is_file():
        raise NotSetUpError(f"no client profile at {profile}: copy the one 'vpnoffload render home' wrote on the VPS (or pass --profile)")
    rec_path = _record_path(paths, f"home-{home}")
    rec = record_mod.load(rec_path)
    actions: list[Action] = []
    # Accept only the configured ports on the tunnel before the tunnel exists.
    actions += firewall.plan(backends.firewall, firewall.home_ruleset(config, home))
    if backends.host is not None:
        from vpnoffload.firewall.hostfw import home_openings

        actions += backends.host.plan_open(home_openings(config, home), rec)
    actions += _user_actions(backends, rec)
    tunnel = home_tunnel(paths, backends, home, profile)
    desired = routing.home_routing(config, home)
    device = config.tunnel.device
    rp_filter = f"net.ipv4.conf.{device}.rp_filter"
    if tunnel.running() and backends.routing.has_device(device):
        actions += routing.plan_routing(backends.routing, desired)
        actions += _sysctl_actions({rp_filter: "2"}, backends, rec)
    else:
        # The routes and rp_filter need the tun device, which exists once OpenVPN
        # connected; the plan is made now (so --dry-run shows it) and runs after.
        actions.append(_start_action(tunnel, f"start OpenVPN client for {home} and wait until connected", CONNECT_TIMEOUT))
        address = config.homes[home].address
        actions.append(Action(f"wait until {device} has {address}",
                              lambda: backends.routing.wait_for_address(device, address, timeout=CONNECT_TIMEOUT)))
        actions += routing.plan_routing(backends.routing, desired)
        actions.append(_late_sysctl(rp_filter, "2", backends, rec))
    if actions:  # the record may change while the plan runs (a user created, an old sysctl read)
        actions.append(_save_record_action(rec_path, rec))
    return actions


def _late_sysctl(key: str, value: str, backends: Backends, rec: record_mod.Record) -> Action:
    from vpnoffload import sysctl

    return sysctl.set_once_present(key, value, rec.sysctl, proc_root=backends.proc_root)


def plan_down_home(paths: Paths, backends: Backends, home: str, profile: Path) -> list[Action]:
    from vpnoffload import firewall, routing, sysctl

    rec_path = _record_path(paths, f"home-{home}")
    rec = record_mod.load(rec_path)
    actions: list[Action] = []
    actions += routing.plan_routing_down(backends.routing)
    # Restore sysctls while the tun device (and so its rp_filter) still exists.
    actions += sysctl.restore_actions(rec.sysctl, proc_root=backends.proc_root)
    tunnel = home_tunnel(paths, backends, home, profile)
    if tunnel.running():
        actions.append(Action(f"stop OpenVPN client for {home}", tunnel.stop, None))
    actions += firewall.plan(backends.firewall, firewall.empty_ruleset())
    if backends.host is not None:
        actions += backends.host.plan_close(rec)
    actions += _user_removal(backends, rec)
    if rec_path.exists():
        actions.append(Action(f"forget {rec_path}", lambda: rec_path.unlink(missing_ok=True), None))
    return actions


def cleanup_scratch(paths: Paths) -> None:
    """Remove render scratch dirs left by a dry run or a failed plan."""
    if paths.state.is_dir():
        for leftover in paths.state.glob(".render.*"):
            shutil.rmtree(leftover, ignore_errors=True)
