"""``vpnoffload watch``: the long-running failover process on the VPS.

Resident imports are limited to the stdlib plus ``config``, ``health`` and
``watchdog``. Swapping rules (python-iptables, pyroute2 conntrack) runs in a
short-lived child process; the friendly page is served by its own small
process (``pageserver``) that ``up vps`` starts.
If this process dies, the rules stay exactly as they were, so forwarding (or
the page) keeps working; on start it reconciles them with real health.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from vpnoffload import config as cfg
from vpnoffload.watch import sdnotify
from vpnoffload.errors import BackendError, NotSetUpError, VpnOffloadError
from vpnoffload.paths import Paths
from vpnoffload.watch.decide import Watchdog, believed_targets, read_state, write_state

log = logging.getLogger("vpnoffload.watch")
SWAP_TIMEOUT = 20.0


class SubprocessSwapper:
    """Runs ``python -m vpnoffload.watch.swap`` and raises if it fails (the next tick retries).

    ``prepare`` forks the child ahead of time (when a check first fails), so it
    has loaded its libraries by the time the swap is decided; ``cancel`` lets
    it go when the service recovers. Nothing heavy ever enters this process.
    """

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._child: subprocess.Popen[str] | None = None

    def prepare(self) -> None:
        if self._child is None or self._child.poll() is not None:
            argv = [sys.executable, "-m", "vpnoffload.watch.swap", "--config", str(self.paths.config)]
            self._child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, text=True)

    def cancel(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            try:
                child.communicate(input="", timeout=SWAP_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def __call__(self, active: Mapping[str, str | None], flush: frozenset[str]) -> None:
        self.prepare()
        child, self._child = self._child, None
        assert child is not None
        line = json.dumps({"active": dict(active), "flush": sorted(flush)}) + "\n"
        try:
            _, err = child.communicate(input=line, timeout=SWAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise BackendError(f"swap did not finish within {SWAP_TIMEOUT:g} s") from None
        if child.returncode != 0:
            raise BackendError((err.strip().splitlines() or ["swap failed"])[-1])


def run(paths: Paths, *, server_running: bool) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit status."""
    config = cfg.load(paths.config)
    if not server_running:
        raise NotSetUpError("the VPS end is not up: run 'vpnoffload up vps' first")
    paths.run.mkdir(parents=True, exist_ok=True)
    metrics = None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        from vpnoffload.watch.health import tunnel_rx_packets

        dog = Watchdog(config, SubprocessSwapper(paths),
                       activity=lambda: tunnel_rx_packets(config.tunnel.device))
        dog.start(believed_targets(read_state(paths.watch_state)))
        _publish(paths, dog)
        if config.watch.metrics:
            from vpnoffload.watch.metrics import MetricsServer

            metrics = MetricsServer(config.watch.metrics, dog)
            metrics.start()
        sdnotify.notify("READY=1")
        log.warning("watching %d service(s) every %gs", len(config.services), config.watch.interval)
        _loop(paths, dog, stop)
    finally:
        sdnotify.notify("STOPPING=1")
        if metrics is not None:
            metrics.shutdown()
    return 0


#: Publish the state file at least this often (and at once on every swap); not
#: every tick, so the disk is not written twice a second.
PUBLISH_EVERY = 5.0


def _loop(paths: Paths, dog: Watchdog, stop: threading.Event) -> None:
    published = time.monotonic()
    seen = _mtime(paths.config)
    while not stop.is_set():
        started = time.monotonic()
        if (mtime := _mtime(paths.config)) != seen:
            seen = mtime
            _reload(paths, dog)
        changed: frozenset[str] = frozenset()
        try:
            changed = dog.tick()
        except VpnOffloadError as exc:
            log.error("swap failed, will retry: %s", exc)
        if changed or started - published >= PUBLISH_EVERY:
            _publish(paths, dog)
            published = started
        sdnotify.notify("WATCHDOG=1")
        stop.wait(max(0.0, dog.config.watch.interval - (time.monotonic() - started)))


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _reload(paths: Paths, dog: Watchdog) -> None:
    """A changed config file is followed without a restart; a broken one is ignored."""
    try:
        config = cfg.load(paths.config)
    except VpnOffloadError as exc:
        log.error("config changed but is not valid, keeping the old one: %s", exc)
        return
    dog.reconfigure(config)
    log.warning("config reloaded: watching %d service(s)", len(config.services))


def _publish(paths: Paths, dog: Watchdog) -> None:
    data = dog.snapshot()
    data["pid"] = os.getpid()
    try:
        write_state(paths.watch_state, data)
    except OSError as exc:
        log.error("cannot write %s: %s", paths.watch_state, exc)


def server_running(paths: Paths) -> bool:
    """Is the VPS end's OpenVPN running? (The same check `up vps` makes, without its imports.)"""
    from vpnoffload.tunnel import DaemonTunnel, SystemdTunnel, systemd_manages_this_netns

    if systemd_manages_this_netns() and SystemdTunnel("server", "openvpn-server@vpnoffload").running():
        return True
    return DaemonTunnel("server", paths.server_dir / "server.conf", paths.server_dir, paths.run).running()


def watch_pid(paths: Paths) -> int | None:
    """The pid of a running watchdog for this state dir, from its state file."""
    data = read_state(paths.watch_state) or {}
    pid = data.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"vpnoffload" in cmdline and b"watch" in cmdline else None
