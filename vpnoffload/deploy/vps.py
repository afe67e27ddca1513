"""``up vps`` and ``down vps``: the plans of the VPS end."""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
from pathlib import Path

from vpnoffload import record as record_mod
from vpnoffload import runfiles, users
from vpnoffload.model import Config
from vpnoffload.paths import Paths
from vpnoffload.plan import Action

from vpnoffload.deploy.common import (
    Daemon, TunnelDaemon,
    SERVER_READY_TIMEOUT, Backends, closing_actions, record_path, save_record_action, scratch_dir, start_action,
    sysctl_actions, tunnel_for, user_actions,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ VPS


def _same_tree(a: Path, b: Path) -> bool:
    if not b.is_dir():
        return False
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def _server_config_actions(config: Config, paths: Paths, tunnel: Daemon) -> list[Action]:
    """Render into a scratch dir; install (and restart OpenVPN) only when something changed."""
    from vpnoffload import pki as pki_mod
    from vpnoffload.render import openvpn as render

    pki = pki_mod.Pki.open(paths.pki)
    scratch = scratch_dir(paths)
    from vpnoffload.lean import ovpn

    management = paths.server_management
    render.render_vps(config, pki, scratch, status_path=paths.server_status, run_as=users.RUN_AS,
                      set_mode=True, management_path=management if ovpn.usable(str(management)) else None)
    return _install_actions(scratch, paths.server_dir, tunnel, "OpenVPN server config", "OpenVPN server",
                            SERVER_READY_TIMEOUT)


def page_server(paths: Paths, backends: Backends) -> Daemon:
    if backends.page_factory is not None:
        return backends.page_factory(paths)
    from vpnoffload.fallback.pagectl import PageDaemon

    return PageDaemon.for_paths(paths)


def _page_actions(config: Config, paths: Paths, daemon: Daemon, needed: bool = False) -> list[Action]:
    """The friendly pages, rendered now (not during an outage), and the server that sends them:
    restarted if it runs and they changed, started only when ``needed`` (a running watchdog
    keeps a web service on fallback); otherwise the watchdog starts it when it is needed."""
    from vpnoffload.render import pages

    scratch = scratch_dir(paths)
    pages.render_pages(config, scratch)
    # What the server listens on is part of what it was started with: a change restarts it.
    listen = f"{config.vps.bind_address}:{config.watch.fallback_port} retry-after {config.watch.retry_after}\n"
    listen += "".join(f"{s.name} tls {s.tls_cert} {s.tls_key}\n" for s in config.services.values() if s.page_over_tls)
    if any(s.serves_page for s in config.ipv6_services):
        listen += f"[::]:{config.watch.fallback_port}\n"
    (scratch / "listen.txt").write_text(listen)
    return _install_actions(scratch, paths.pages, daemon, "friendly pages", "friendly-page server", 10.0,
                            start=needed)


def _install_actions(scratch: Path, target: Path, daemon: Daemon, what: str, who: str, timeout: float,
                     start: bool = True) -> list[Action]:
    """Swap ``scratch`` in for ``target`` if it differs, and restart ``daemon`` to match
    (or start it, if it is not running and ``start``)."""
    backup = target.with_name(f".{target.name}.old")
    if _same_tree(scratch, target):
        shutil.rmtree(scratch)
        return [] if daemon.running() or not start else [start_action(daemon, f"start {who}", timeout)]

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
        return [Action(summary, install, restore)] + ([start_action(daemon, f"start {who}", timeout)] if start else [])

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


def server_tunnel(paths: Paths, backends: Backends) -> TunnelDaemon:
    return tunnel_for(backends, runfiles.SERVER, paths.server_conf, paths.server_dir, paths)


def plan_up_vps(config: Config, paths: Paths, backends: Backends) -> list[Action]:
    from vpnoffload import firewall, routing
    from vpnoffload.config import check_files

    check_files(config)
    rec_path = record_path(paths, "vps")
    rec = record_mod.load(rec_path)
    actions: list[Action] = []
    actions += user_actions(backends, rec)
    # Filter rules go in before forwarding is switched on, so no window is unfiltered.
    # Keep services the running watchdog has on fallback there: re-running `up`
    # during an outage must not send visitors back to a dead home.
    targets = current_targets(config, paths)
    desired = firewall.vps_ruleset(config, active=targets)
    for address_set in desired.sets:
        address_set.intervals()  # a bad line in an allow/deny file: ConfigError now, before anything changes
    actions += firewall.plan(backends.firewall, desired)
    # OpenVPN and the page server bind vps.local_address (1:1 NAT) or vps.address: it must be here.
    from vpnoffload.routing.nat import require_bindable

    require_bindable(config, backends.routing)
    interface = config.vps.interface or backends.routing.find_interface(config.vps.bind_address)
    if backends.host is not None:  # a drop in the host's own firewall would be final: open what we need there
        from vpnoffload.firewall.host.openings import vps_openings

        actions += backends.host.plan_open(vps_openings(config, interface), rec)
    address_actions, owned = routing.plan_addresses(
        backends.routing, routing.vps_addresses(config, interface), [tuple(a) for a in rec.addresses])
    actions += address_actions
    rec.addresses = [list(a.as_record()) for a in owned]
    actions += sysctl_actions(_vps_sysctls(config, interface, backends), backends, rec)
    actions += _server_config_actions(config, paths, server_tunnel(paths, backends))
    on_page = any(home is None and config.services[name].serves_page for name, home in targets.items())
    actions += _page_actions(config, paths, page_server(paths, backends), needed=on_page)
    actions += _forget_stale_watch_state(paths)
    if actions:  # the record may change while the plan runs (a user created, an old sysctl read)
        actions.append(save_record_action(rec_path, rec))
    return actions


CONNTRACK_ACCT = "net.netfilter.nf_conntrack_acct"


def _vps_sysctls(config: Config, interface: str, backends: Backends) -> dict[str, str]:
    """IPv4 forwarding always; IPv6 forwarding (and RA kept on) only for IPv6 services."""
    from vpnoffload import sysctl

    desired = sysctl.vps_sysctls()
    # Reply packet counts per connection: the watchdog's evidence that a service's visitors are
    # still answered under load (watch/flows.py). Only where conntrack is loaded and the key can be
    # written (a container's /proc/sys is often read-only: without the counts an answered
    # connection counts once, which is weaker evidence, not a reason to refuse `up`); down restores it.
    acct = sysctl.key_path(CONNTRACK_ACCT, backends.proc_root)
    if acct.exists() and os.access(acct, os.W_OK):
        desired[CONNTRACK_ACCT] = "1"
    if config.ipv6_services:
        desired |= sysctl.vps_ipv6_sysctls(interface, proc_root=backends.proc_root)
    return desired


def current_targets(config: Config, paths: Paths) -> dict[str, str | None]:
    """Where a running watchdog sends each service (a home, or None: fallback).

    Only a live watchdog's view counts: with none running, `up vps` puts every
    service back on its first home, as a fresh start would.
    """
    from vpnoffload.watchfile import believed_targets, read_state, watch_pid

    if watch_pid(paths) is None:
        return {}
    believed = believed_targets(read_state(paths.watch_state))
    return {n: h for n, h in believed.items()
            if n in config.services and (h is None or h in config.services[n].homes)}


def _forget_stale_watch_state(paths: Paths) -> list[Action]:
    """With no watchdog running, `up vps` just put every service back home: the
    dead watchdog's last word no longer describes the rules (status reads it)."""
    from vpnoffload.watchfile import watch_pid

    if watch_pid(paths) is not None or not paths.watch_state.exists():
        return []
    return [Action(f"forget the stopped watchdog's state {paths.watch_state}",
                   lambda: paths.watch_state.unlink(missing_ok=True), None)]


def _stop_watchdog_actions(paths: Paths) -> list[Action]:
    """`down vps` stops a running watchdog first, or its next swap would write the chains back."""
    from vpnoffload.procs import terminate
    from vpnoffload.watchfile import watch_pid

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
    from vpnoffload import routing, sysctl

    rec_path = record_path(paths, "vps")
    rec = record_mod.load(rec_path)
    actions: list[Action] = _stop_watchdog_actions(paths)
    tunnel = server_tunnel(paths, backends)
    if tunnel.running() or tunnel.left_behind():  # a dead server's unit wrapper or pidfile goes too
        actions.append(Action("stop OpenVPN server", tunnel.stop, None))
    if paths.server_management.is_socket():
        # OpenVPN removes it when it stops, unless it no longer may (it dropped root) or was killed.
        actions.append(Action(f"remove OpenVPN's management socket {paths.server_management}",
                              lambda: paths.server_management.unlink(missing_ok=True), None))
    pages = page_server(paths, backends)
    if pages.running():
        actions.append(Action("stop friendly-page server", pages.stop, None))
    actions += sysctl.restore_actions(rec.sysctl, proc_root=backends.proc_root)
    actions += routing.plan_remove_addresses(backends.routing, [tuple(a) for a in rec.addresses])
    return actions + closing_actions(backends, rec, rec_path)


