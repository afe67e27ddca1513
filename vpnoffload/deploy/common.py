"""What both ends' plans share: the OS layer (:class:`Backends`), the run lock, the record,
the system user, sysctls, starting a daemon, and the render scratch dir."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vpnoffload import fsio, runfiles
from vpnoffload import record as record_mod
from vpnoffload import users
from vpnoffload.errors import BackendError
from vpnoffload.firewall.rules import Backend as FirewallBackend
from vpnoffload.paths import Paths
from vpnoffload.plan import Action
from vpnoffload.routing.state import RoutingBackend

if TYPE_CHECKING:
    from vpnoffload.firewall.host.openings import Opening

log = logging.getLogger(__name__)

#: How long ``up home`` waits for the tunnel to connect before giving up (and rolling back).
CONNECT_TIMEOUT = 30.0
SERVER_READY_TIMEOUT = 15.0


class Users(Protocol):
    """The system user OpenVPN drops to (vpnoffload.users)."""

    def exists(self, name: str) -> bool: ...
    def create(self, name: str) -> None: ...
    def delete(self, name: str) -> None: ...


class Daemon(Protocol):
    """A process ``up`` starts and ``down`` stops: OpenVPN on either end, the page server."""

    def running(self) -> bool: ...
    def start(self) -> None: ...
    def wait_ready(self, timeout: float) -> None: ...
    def stop(self) -> None: ...


class TunnelDaemon(Daemon, Protocol):
    """OpenVPN on either end: ``down`` also stops one that died and left something behind."""

    def left_behind(self) -> bool: ...


class HostOpenings(Protocol):
    """Openings in the host's own firewall (vpnoffload.firewall.host.plan.HostFirewall)."""

    def plan_open(self, openings: list[Opening], rec: record_mod.Record) -> list[Action]: ...
    def plan_close(self, rec: record_mod.Record) -> list[Action]: ...


@dataclass
class Backends:
    """The OS layer, injectable so unit tests run the real planning on fakes."""

    firewall: FirewallBackend
    routing: RoutingBackend
    proc_root: Path = Path("/proc/sys")
    users: Users = users  # the module itself is the real implementation
    tunnel_factory: Callable[..., TunnelDaemon] | None = None
    page_factory: Callable[[Paths], Daemon] | None = None
    #: The host's own firewall (Docker, ufw, nftables; firewall/host/plan.py); None: leave it alone.
    host: HostOpenings | None = None

    @classmethod
    def real(cls) -> "Backends":
        from vpnoffload.firewall import default_backend
        from vpnoffload.firewall.host.plan import HostFirewall
        from vpnoffload.routing import Pyroute2Backend

        return cls(firewall=default_backend(), routing=Pyroute2Backend(), host=HostFirewall())


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


def tunnel_for(backends: Backends, name: str, conf: Path, workdir: Path, paths: Paths,
            extra_args: tuple[str, ...] = ()) -> TunnelDaemon:
    """OpenVPN under systemd when systemd runs this network namespace, else a daemon we track."""
    if backends.tunnel_factory is not None:
        return backends.tunnel_factory(name=name, config=conf, workdir=workdir, run_dir=paths.run)
    from vpnoffload import tunnel

    if tunnel.systemd_manages_this_netns():
        kind, instance = ("server", "vpnoffload") if name == runfiles.SERVER else ("client", f"vpnoffload-{name.removeprefix('home-')}")
        options = tuple(f"{a[2:]} {b}" for a, b in zip(extra_args[::2], extra_args[1::2]))  # --user x -> user x
        return tunnel.SystemdTunnel(
            name=name, unit=runfiles.SERVER_UNIT if name == runfiles.SERVER else f"openvpn-{kind}@{instance}",
            wrapper=Path(f"/etc/openvpn/{kind}/{instance}.conf"),
            wrapper_text=tunnel.wrapper_text(workdir, conf.name, options),
        )
    return tunnel.DaemonTunnel(name=name, config=conf, workdir=workdir, run_dir=paths.run, extra_args=extra_args)


def record_path(paths: Paths, end: str) -> Path:
    return paths.record(end)


def save_record_action(path: Path, rec: record_mod.Record) -> Action:
    before = path.read_bytes() if path.exists() else None

    def undo() -> None:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)

    return Action(f"remember what was changed in {path}", lambda: record_mod.save(path, rec), undo)


def user_actions(backends: Backends, rec: record_mod.Record) -> list[Action]:
    if backends.users.exists(users.RUN_AS):
        return []

    def do() -> None:
        backends.users.create(users.RUN_AS)
        rec.created_user = users.RUN_AS

    def undo() -> None:
        backends.users.delete(users.RUN_AS)
        rec.created_user = None

    return [Action(f"create system user {users.RUN_AS} for OpenVPN to drop privileges to", do, undo)]


def user_removal(backends: Backends, rec: record_mod.Record) -> list[Action]:
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


def closing_actions(backends: Backends, rec: record_mod.Record, rec_path: Path,
                    scope: Callable[[str], bool] | None = None,
                    user_removal_actions: list[Action] | None = None) -> list[Action]:
    """The end of either ``down``: our rules (only the chains in ``scope``, when
    given), the host-firewall openings, the user we created, the record."""
    from vpnoffload import firewall

    actions = firewall.plan(backends.firewall, firewall.empty_ruleset(), scope)
    if backends.host is not None:
        actions += backends.host.plan_close(rec)
    actions += user_removal(backends, rec) if user_removal_actions is None else user_removal_actions
    if rec_path.exists():
        actions.append(Action(f"forget {rec_path}", lambda: rec_path.unlink(missing_ok=True), None))
    return actions


def sysctl_actions(desired: dict[str, str], backends: Backends, rec: record_mod.Record) -> list[Action]:
    from vpnoffload import sysctl

    actions, previous = sysctl.plan_sysctls(desired, proc_root=backends.proc_root)
    if actions:
        rec.merge_sysctl(previous)
    return actions


def start_action(daemon: Daemon, summary: str, timeout: float) -> Action:
    def do() -> None:
        daemon.start()
        daemon.wait_ready(timeout)

    # Interrupted while waiting for it to be ready: the started process must go too.
    return Action(summary, do, daemon.stop, undo_if_partial=True)


def scratch_dir(paths: Paths) -> Path:
    fsio.make_dir(paths.state, 0o700)
    return Path(tempfile.mkdtemp(prefix=".render.", dir=paths.state))


def cleanup_scratch(paths: Paths) -> None:
    """Remove render scratch dirs left by a dry run or a failed plan."""
    if paths.state.is_dir():
        for leftover in paths.state.glob(".render.*"):
            shutil.rmtree(leftover, ignore_errors=True)
