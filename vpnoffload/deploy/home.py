"""``up home`` and ``down home``: the plans of a home box."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from vpnoffload import hometunnels
from vpnoffload import record as record_mod
from vpnoffload import runfiles, users
from vpnoffload.errors import ConfigError, NotSetUpError
from vpnoffload.hometunnels import FIRST, Slot
from vpnoffload.model import Config
from vpnoffload.paths import Paths
from vpnoffload.plan import Action

from vpnoffload.deploy.common import (
    Daemon, TunnelDaemon,
    CONNECT_TIMEOUT, Backends, closing_actions, record_path, save_record_action, start_action, sysctl_actions,
    tunnel_for, user_actions,
)

if TYPE_CHECKING:
    from vpnoffload.homekeeper import HomeKeeper

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ home


def home_tunnel(paths: Paths, backends: Backends, home: str, profile: Path, slot: Slot = FIRST) -> TunnelDaemon:
    # The profile is portable (it names no local user); drop privileges from the command line.
    # A further tunnel of the box gets its own device the same way (the last --dev wins).
    own_dev = () if slot.index == 0 else ("--dev", slot.device)
    return tunnel_for(backends, slot.tunnel_name(home), profile.absolute(), profile.absolute().parent, paths,
                   extra_args=("--user", users.RUN_AS, "--group", users.RUN_AS, *own_dev))


def plan_up_home(config: Config, paths: Paths, backends: Backends, home: str, profile: Path) -> list[Action]:
    from vpnoffload import firewall, routing

    if not profile.is_file():
        raise NotSetUpError(f"no client profile at {profile}: copy the one 'vpnoffload render home' wrote on the VPS (or pass --profile)")
    rec_path = record_path(paths, f"home-{home}")
    rec = record_mod.load(rec_path)
    # Before anything changes: this tunnel's share of the box, clashing with no other config here.
    slot = hometunnels.check_box(paths.config, config)
    if rec.slot is not None and rec.slot != slot.index:
        raise ConfigError(f"this config was set up as {Slot(rec.slot)} and is now {slot} "
                          "(a config was added or moved on this box): run 'vpnoffload down home' first")
    rec.slot = slot.index
    actions: list[Action] = []
    # Accept only the configured ports on the tunnel before the tunnel exists.
    actions += firewall.plan(backends.firewall, firewall.home_ruleset(config, home, slot), slot.owns_chain)
    if backends.host is not None:
        from vpnoffload.firewall.host.openings import home_openings

        actions += backends.host.plan_open(home_openings(config, home, slot.device), rec)
    actions += user_actions(backends, rec)
    tunnel = home_tunnel(paths, backends, home, profile, slot)
    desired = routing.home_routing(config, home, slot)
    device = slot.device
    rp_filter = f"net.ipv4.conf.{device}.rp_filter"
    if tunnel.running() and backends.routing.has_device(device):
        actions += routing.plan_routing(backends.routing, desired, slot.table, slot.priority)
        actions += sysctl_actions({rp_filter: "2"}, backends, rec)
    else:
        # The routes and rp_filter need the tun device, which exists once OpenVPN
        # connected; the plan is made now (so --dry-run shows it) and runs after.
        actions.append(start_action(tunnel, f"start OpenVPN client for {home} and wait until connected", CONNECT_TIMEOUT))
        address = config.homes[home].address
        actions.append(Action(f"wait until {device} has {address}",
                              lambda: backends.routing.wait_for_address(device, address, timeout=CONNECT_TIMEOUT)))
        actions += routing.plan_routing(backends.routing, desired, slot.table, slot.priority)
        actions.append(_late_sysctl(rp_filter, "2", backends, rec))
    keeper = home_keeper(paths, tunnel, home, profile)
    if keeper is not None and not keeper.running():
        # Last: it runs `up home` again whenever the client dies (no systemd Restart= here).
        actions.append(Action(f"keep the OpenVPN client for {home} running (restarts it with up home)",
                              keeper.start, keeper.stop))
    if actions or not rec_path.exists():  # the record may change while the plan runs (a user created, an old sysctl read)
        actions.append(save_record_action(rec_path, rec))
    return actions


def home_keeper(paths: Paths, tunnel: Daemon, home: str, profile: Path) -> HomeKeeper | None:
    """The keeper of a daemon-mode client (vpnoffload.homekeeper); None under systemd or with fakes."""
    from vpnoffload import proc
    from vpnoffload.homekeeper import HomeKeeper
    from vpnoffload.tunnel import DaemonTunnel

    if not isinstance(tunnel, DaemonTunnel):
        return None
    up = proc.python_argv("vpnoffload", "-c", str(paths.config), "--state-dir", str(paths.state),
                          "up", "home", "--home", home, "--profile", str(profile.absolute()))
    return HomeKeeper(home, str(paths.run), str(tunnel.pidfile), str(tunnel.config), up)


def _late_sysctl(key: str, value: str, backends: Backends, rec: record_mod.Record) -> Action:
    from vpnoffload import sysctl

    return sysctl.set_once_present(key, value, rec.sysctl, proc_root=backends.proc_root)


def plan_down_home(paths: Paths, backends: Backends, home: str, profile: Path) -> list[Action]:
    from vpnoffload import routing, sysctl

    rec_path = record_path(paths, f"home-{home}")
    rec = record_mod.load(rec_path)
    slot = _slot_for_down(paths, rec)
    actions: list[Action] = []
    tunnel = home_tunnel(paths, backends, home, profile, slot)
    actions += _stop_keeper_actions(paths, home)
    actions += routing.plan_routing_down(backends.routing, slot.table, slot.priority)
    # Restore sysctls while the tun device (and so its rp_filter) still exists.
    actions += sysctl.restore_actions(rec.sysctl, proc_root=backends.proc_root)
    if tunnel.running() or tunnel.left_behind():  # a dead client's unit wrapper or pidfile goes too
        actions.append(Action(f"stop OpenVPN client for {home}", tunnel.stop, None))
    return actions + closing_actions(backends, rec, rec_path, slot.owns_chain, _user_handover(paths, backends, rec))


def _stop_keeper_actions(paths: Paths, home: str) -> list[Action]:
    """`down home` stops a running keeper first, or it would start the client again or put an
    opening back: the daemon's, or the systemd unit's (as `down vps` stops the watchdog)."""
    from vpnoffload.homekeeper import keeper_pid, watch_only
    from vpnoffload.procs import terminate

    pid = keeper_pid(str(paths.run), home)
    if pid is None:
        return []
    pidfile = paths.run / runfiles.home_keeper_pid(home)
    # The daemon's may be waiting for an `up home` child to roll back; a unit's SIGKILLed
    # keeper would count as failed and be restarted by systemd, so that one is only asked.
    unit = watch_only(pid)

    def stop() -> None:
        terminate(pid, 20.0, kill=not unit)
        pidfile.unlink(missing_ok=True)

    what = (f"stop the home keeper for {home} (pid {pid}; under systemd: systemctl stop vpnoffload-home-keeper)"
            if unit else f"stop the OpenVPN client keeper for {home} (pid {pid})")
    return [Action(what, stop, None)]


def _slot_for_down(paths: Paths, rec: record_mod.Record) -> Slot:
    """The slot ``up`` recorded; without a record, the one the config gives (slot 0 if it does not load)."""
    if rec.slot is not None:
        return Slot(rec.slot)
    from vpnoffload import config as cfg
    from vpnoffload.errors import VpnOffloadError

    try:
        return hometunnels.slot_of(paths.config, cfg.load(paths.config))
    except VpnOffloadError:
        return Slot()


def _user_handover(paths: Paths, backends: Backends, rec: record_mod.Record) -> list[Action]:
    """The system user this tunnel's ``up`` created serves the box's other tunnels too:
    while one of them is up, its record takes the user over (the last ``down`` deletes it)."""
    from vpnoffload.deploy.common import user_removal

    if not rec.created_user:
        return user_removal(backends, rec)
    for other in hometunnels.others(paths.config):
        records = sorted(Paths(other.path, other.path.parent / "state").run.glob("home-*.json"))
        if records:
            target, name = records[0], rec.created_user

            def hand_over(target: Path = target, name: str = name) -> None:
                theirs = record_mod.load(target)
                theirs.created_user = theirs.created_user or name
                record_mod.save(target, theirs)

            return [Action(f"leave system user {name} to the tunnel of {other.path} (still up)", hand_over, None)]
    return user_removal(backends, rec)


