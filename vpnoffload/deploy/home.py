"""``up home`` and ``down home``: the plans of a home box."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from vpnoffload import record as record_mod
from vpnoffload import users
from vpnoffload.errors import NotSetUpError
from vpnoffload.model import Config
from vpnoffload.paths import Paths
from vpnoffload.plan import Action

from vpnoffload.deploy.common import (
    Daemon,
    CONNECT_TIMEOUT, Backends, closing_actions, record_path, save_record_action, start_action, sysctl_actions,
    tunnel_for, user_actions,
)

if TYPE_CHECKING:
    from vpnoffload.homekeeper import HomeKeeper

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ home


def home_tunnel(paths: Paths, backends: Backends, home: str, profile: Path) -> Daemon:
    # The profile is portable (it names no local user); drop privileges from the command line.
    return tunnel_for(backends, f"home-{home}", profile.absolute(), profile.absolute().parent, paths,
                   extra_args=("--user", users.RUN_AS, "--group", users.RUN_AS))


def plan_up_home(config: Config, paths: Paths, backends: Backends, home: str, profile: Path) -> list[Action]:
    from vpnoffload import firewall, routing

    if not profile.is_file():
        raise NotSetUpError(f"no client profile at {profile}: copy the one 'vpnoffload render home' wrote on the VPS (or pass --profile)")
    rec_path = record_path(paths, f"home-{home}")
    rec = record_mod.load(rec_path)
    actions: list[Action] = []
    # Accept only the configured ports on the tunnel before the tunnel exists.
    actions += firewall.plan(backends.firewall, firewall.home_ruleset(config, home))
    if backends.host is not None:
        from vpnoffload.firewall.host.openings import home_openings

        actions += backends.host.plan_open(home_openings(config, home), rec)
    actions += user_actions(backends, rec)
    tunnel = home_tunnel(paths, backends, home, profile)
    desired = routing.home_routing(config, home)
    device = config.tunnel.device
    rp_filter = f"net.ipv4.conf.{device}.rp_filter"
    if tunnel.running() and backends.routing.has_device(device):
        actions += routing.plan_routing(backends.routing, desired)
        actions += sysctl_actions({rp_filter: "2"}, backends, rec)
    else:
        # The routes and rp_filter need the tun device, which exists once OpenVPN
        # connected; the plan is made now (so --dry-run shows it) and runs after.
        actions.append(start_action(tunnel, f"start OpenVPN client for {home} and wait until connected", CONNECT_TIMEOUT))
        address = config.homes[home].address
        actions.append(Action(f"wait until {device} has {address}",
                              lambda: backends.routing.wait_for_address(device, address, timeout=CONNECT_TIMEOUT)))
        actions += routing.plan_routing(backends.routing, desired)
        actions.append(_late_sysctl(rp_filter, "2", backends, rec))
    keeper = home_keeper(paths, tunnel, home, profile)
    if keeper is not None and not keeper.running():
        # Last: it runs `up home` again whenever the client dies (no systemd Restart= here).
        actions.append(Action(f"keep the OpenVPN client for {home} running (restarts it with up home)",
                              keeper.start, keeper.stop))
    if actions:  # the record may change while the plan runs (a user created, an old sysctl read)
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
    actions: list[Action] = []
    tunnel = home_tunnel(paths, backends, home, profile)
    keeper = home_keeper(paths, tunnel, home, profile)
    if keeper is not None and keeper.running():  # first, or it would start the client again
        actions.append(Action(f"stop the OpenVPN client keeper for {home}", keeper.stop, None))
    actions += routing.plan_routing_down(backends.routing)
    # Restore sysctls while the tun device (and so its rp_filter) still exists.
    actions += sysctl.restore_actions(rec.sysctl, proc_root=backends.proc_root)
    if tunnel.running():
        actions.append(Action(f"stop OpenVPN client for {home}", tunnel.stop, None))
    return actions + closing_actions(backends, rec, rec_path)


