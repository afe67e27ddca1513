"""The watchdog keeps the VPS's OpenVPN server running where no systemd restarts it.

Under systemd the server runs as ``openvpn-server@vpnoffload`` with ``Restart=``;
without it (namespaces, containers) ``up vps`` starts ``openvpn --daemon`` with a
pidfile in ``STATE/run`` (:class:`vpnoffload.tunnel.DaemonTunnel`). Each tick
the watchdog looks whether that pidfile still names a live openvpn; if it does
not, a short-lived child (``python -I -m vpnoffload.watch.supervise``) starts
it again exactly as ``up vps`` does (same argv, pidfile, log, under the run
lock), with backoff between failed attempts. Visitors are meanwhile on the
friendly page: the health checks find the tunnel gone on their own.

What it did is published in ``run/server-keeper.json`` (restarts, last restart
and failure, on the wall clock for ``status``); backoff runs on the monotonic
clock, so a clock step neither hurries nor stalls it.

Only a server the watchdog found running as our daemon at its first tick is
kept: under systemd (no such pidfile) this does nothing. This module is
imported by the lean watchdog: stdlib ``os``/``time`` and the lean watch
modules only; the child's heavy imports stay inside :func:`main`.
"""

from __future__ import annotations

import os
import sys
import time

from vpnoffload import runfiles
from vpnoffload.lean import say, spawn
from vpnoffload.watchfile import write_state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

log = say.Log("vpnoffload.watch.supervise")
#: Seconds between failed restarts: doubled from FIRST_BACKOFF up to MAX_BACKOFF.
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0
#: A restart child still running after this long is killed (start + ready wait is 5 + 15 s).
CHILD_TIMEOUT = 40.0
STATE_FILE = runfiles.SERVER_KEEPER_STATE


pidfile_names_openvpn = runfiles.openvpn_runs


class ServerKeeper:
    """Restarts the daemon-mode OpenVPN server when it is gone; ``tick`` never blocks."""

    def __init__(self, config_path: str, state_dir: str, run_dir: str,
                 clock: "Callable[[], float]" = time.monotonic, wall: "Callable[[], float]" = time.time,
                 start: "Callable[[list[str]], spawn.Child] | None" = None) -> None:
        self.config_path, self.state_dir, self.run_dir = config_path, state_dir, run_dir
        server_conf = runfiles.server_conf(state_dir)
        self.alive: "Callable[[], bool]" = lambda: pidfile_names_openvpn(
            os.path.join(run_dir, runfiles.openvpn_pid(runfiles.SERVER)), server_conf)
        self.clock, self.wall = clock, wall
        self.start = start or (lambda argv: spawn.spawn(argv, log=os.path.join(run_dir, runfiles.SERVER_KEEPER_LOG)))
        self.enabled: bool | None = None  # decided at the first tick
        self.child: spawn.Child | None = None
        self.child_started = 0.0
        self.backoff = FIRST_BACKOFF
        self.next_try = 0.0
        self.stats: dict[str, object] = {"restarts": 0, "failures": 0, "last_restart": None,
                                         "last_failure": None, "down_since": None}

    def tick(self) -> None:
        if self.enabled is None:
            self.enabled = self.alive()
            if self.enabled:
                log.info("keeping the OpenVPN server running (no systemd here)")
        if not self.enabled:
            return
        now = self.clock()
        if self.child is not None:
            self._reap(now)
            return
        if self.alive():
            if self.stats["down_since"] is not None:
                self.stats["down_since"] = None
                self._publish()
            return
        if self.stats["down_since"] is None:
            self.stats["down_since"] = self.wall()
            log.error("the OpenVPN server is not running: restarting it")
            self._publish()
        if now < self.next_try:
            return
        argv = spawn.full_argv("vpnoffload.watch.supervise", "--config", self.config_path,
                               "--state-dir", self.state_dir)
        try:
            self.child, self.child_started = self.start(argv), now
        except OSError as exc:
            self._failed(now, f"cannot start the restart child: {exc}")

    def _reap(self, now: float) -> None:
        assert self.child is not None
        code = self.child.poll()
        if code is None:
            if now - self.child_started < CHILD_TIMEOUT:
                return
            self.child.kill()
            code = -9
        self.child.close()
        self.child = None
        if code == 0 and self.alive():
            self.stats["restarts"] = int(self.stats["restarts"]) + 1  # type: ignore[call-overload]
            self.stats["last_restart"] = self.wall()
            self.stats["down_since"] = None
            self.backoff, self.next_try = FIRST_BACKOFF, now
            log.warning("OpenVPN server restarted (restart %s)", self.stats["restarts"])
            self._publish()
        else:
            self._failed(now, f"restart failed (exit {code}; see {self.run_dir}/server-keeper.log)")

    def _failed(self, now: float, why: str) -> None:
        self.stats["failures"] = int(self.stats["failures"]) + 1  # type: ignore[call-overload]
        self.stats["last_failure"] = self.wall()
        self.next_try = now + self.backoff
        log.error("OpenVPN server: %s; next try in %gs", why, self.backoff)
        self.backoff = min(MAX_BACKOFF, self.backoff * 2)
        self._publish()

    def _publish(self) -> None:
        try:
            write_state(os.path.join(self.run_dir, STATE_FILE), dict(self.stats, pid=os.getpid()))
        except OSError as exc:
            log.error("cannot write %s: %s", STATE_FILE, exc)


_keepers: dict[str, ServerKeeper] = {}


def keep_server(where: "dict[str, str]") -> None:
    """The watchdog's one call per tick (``where``: the snapshot's paths)."""
    keeper = _keepers.get(where["run"])
    if keeper is None:
        keeper = _keepers[where["run"]] = ServerKeeper(where["config"], where["state"], where["run"])
    keeper.tick()


def read_stats(run_dir: "str | os.PathLike[str]") -> dict[str, object] | None:
    """What the watchdog published about restarts (None: it never had to keep the server)."""
    from vpnoffload.watchfile import read_state

    return read_state(os.path.join(os.fspath(run_dir), STATE_FILE))


def main(argv: list[str] | None = None) -> int:
    """``python -I -m vpnoffload.watch.supervise --config C [--state-dir S]``: one restart."""
    from vpnoffload.exits import run_main
    from vpnoffload.lean import options

    def body() -> int:
        given = options.parse(argv, values=("--config", "--state-dir"), required=("--config",))
        from vpnoffload.paths import Paths
        from vpnoffload.tunnel import restart_server

        restart_server(Paths.resolve(str(given["--config"]), str(given.get("--state-dir") or "")))
        return 0

    return run_main(body, prog="vpnoffload-supervise")


if __name__ == "__main__":
    sys.exit(main())
