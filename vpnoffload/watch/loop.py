"""``vpnoffload watch``: the long-running failover process on the VPS.

Lean on purpose (the whole of vpnoffload on the VPS aims at <= 16 MB resident):
``vpnoffload watch`` re-executes itself as ``python -I -S`` (no ``site``), and
this process imports only the stdlib pieces its loop needs (socket, threading,
select) plus ``decide``, ``health``, ``state``, ``snapshot``, ``pagectl`` and
``spawn`` — no config parser, no logging, json, subprocess, pathlib or typing.
The config is read by a short-lived child (:mod:`vpnoffload.lean.snapshot`),
at start and whenever the file changes. Swapping rules (python-iptables,
pyroute2 conntrack) runs in a short-lived child too (:mod:`vpnoffload.watch.swap`).

The friendly-page server is started on demand (:class:`PageKeeper`): when a
web service's active home starts failing, so it listens before the swap to
the page, and stopped :data:`PAGE_LINGER` s after every service is back home.
It runs detached: if this process dies, the rules stay exactly as they were,
so forwarding (or the page) keeps working; on start it reconciles them with
real health.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from vpnoffload.errors import BackendError, NotSetUpError, VpnOffloadError
from vpnoffload.fallback import copies, listeners
from vpnoffload import runfiles
from vpnoffload.lean import logcap, options, ovpn, say, sdnotify, spawn
from vpnoffload.watch import evidence, pace, supervise
from vpnoffload.watch.decide import Watchdog, probe_namespace_prober
from vpnoffload.watch.health import tunnel_rx_packets
from vpnoffload.watch.hostfw import HostFirewallWatch
from vpnoffload.fallback.pagectl import PageDaemon
from vpnoffload.watch.flows import FlowEvidence
from vpnoffload.watch.probe import ProbeNamespace
from vpnoffload.lean.snapshot import ConfigView, fetch
from vpnoffload.watchfile import dumps, watch_pid, write_state  # noqa: F401  (re-exported)

TYPE_CHECKING = False  # typing costs ~1 MB resident: annotations stay strings here
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

log = say.Log("vpnoffload.watch")
SWAP_TIMEOUT = 20.0
#: The swap child's line once the rules are committed (``watch.swap.APPLIED``; not imported:
#: that module loads the model and the config parser).
APPLIED = b"applied\n"
PAGE_READY_TIMEOUT = 5.0
#: The swap child's environment on top of ours. python-iptables imports ``distutils.sysconfig`` (for
#: one fallback path); in a venv, setuptools' shim answers that with its own distutils and
#: pkg_resources: ~0.1 s of the child's ~0.25 s of CPU, spent on every warm start, also the ones a
#: passing doubt lets go. The stdlib's distutils (or, from Python 3.12, iptc's sysconfig fallback)
#: serves it as well.
SWAP_ENV = {"SETUPTOOLS_USE_DISTUTILS": "stdlib"}
#: The page server stays this long after the last service left fallback (a flapping home does not restart it).
PAGE_LINGER = 5.0


class PageKeeper:
    """Runs the page server only while a web service needs it (see :meth:`Watchdog.page_needed`)."""

    def __init__(self, daemon: PageDaemon, linger: float = PAGE_LINGER,
                 clock: "Callable[[], float]" = time.monotonic) -> None:
        self.daemon, self.linger, self.clock = daemon, linger, clock
        self._unneeded_since: float | None = None

    def update(self, needed: bool) -> None:
        quiet = getattr(self.daemon, "quiet_held", None)
        if quiet is not None:
            quiet()
        if needed:
            self._unneeded_since = None
            try:
                self.daemon.spawn()  # no-op while it runs; ready() waits for it
            except OSError as exc:
                log.error("cannot start the friendly-page server: %s", exc)
            return
        if not self.daemon.running():
            self._unneeded_since = None
            return
        now = self.clock()
        if self._unneeded_since is None:
            self._unneeded_since = now
        elif now - self._unneeded_since >= self.linger:
            self.daemon.stop()
            self._unneeded_since = None
            log.info("every service is home: friendly-page server stopped")

    def ready(self) -> None:
        """Make sure it listens before visitors are sent to it. A server that cannot start is
        logged, not fatal: the swap still happens (visitors then get a refusal, as with ``reset``)."""
        self._unneeded_since = None
        try:
            self.daemon.spawn()
            self.daemon.wait_ready(PAGE_READY_TIMEOUT)
        except (OSError, BackendError) as exc:
            log.error("friendly-page server not serving: %s", exc)


class SubprocessSwapper:
    """Runs ``python -I -m vpnoffload.watch.swap`` and raises if it fails (the next tick retries).

    ``prepare`` forks the child ahead of time (when a check first fails), so it
    has loaded its libraries by the time the swap is decided; ``cancel`` lets
    it go when the service recovers. Nothing heavy ever enters this process.
    """

    def __init__(self, config_path: str, pages: PageKeeper | None = None) -> None:
        self.config_path = config_path
        self.pages = pages
        #: Set once the watchdog exists: which services serve the page.
        self.page_services: "Callable[[], set[str]]" = set
        #: Called the moment the child says the rules are committed (``Watchdog.committed``).
        self.committed: "Callable[[], None]" = lambda: None
        self._child: spawn.Child | None = None

    def prepare(self) -> None:
        if self._child is None or self._child.poll() is not None:
            self._child = spawn.spawn(spawn.full_argv("vpnoffload.watch.swap", "--config", self.config_path),
                                      stdin=True, stdout=True, stderr=True, env={**os.environ, **SWAP_ENV})

    def cancel(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            try:
                child.communicate(b"", SWAP_TIMEOUT)
            except TimeoutError:
                child.kill()

    def __call__(self, active: "Mapping[str, str | None]", flush: frozenset[str]) -> None:
        if self.pages is not None and any(active.get(n, "") is None for n in self.page_services()):
            self.pages.ready()
        self.prepare()
        child, self._child = self._child, None
        assert child is not None
        line = dumps({"active": dict(active), "flush": sorted(flush)}) + "\n"
        _until_applied(child, line.encode(), SWAP_TIMEOUT, self.committed)
        spawn.finish(child, b"", SWAP_TIMEOUT, "swap")


def _until_applied(child: spawn.Child, decision: bytes, timeout: float, committed: "Callable[[], None]") -> None:
    """Give the swap child its decision and wait (at most ``timeout``) for the line saying the
    rules are committed; call ``committed`` then (the watchdog publishes its new state at once).
    A child that ends without saying so is left to ``spawn.finish`` to judge."""
    import select

    assert child.stdin is not None and child.stdout is not None
    try:
        os.write(child.stdin, decision)
    except BrokenPipeError:
        return
    os.close(child.stdin)
    child.stdin = None
    deadline = time.monotonic() + timeout
    seen = b""
    while APPLIED not in seen and len(seen) < 4096:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select([child.stdout], [], [], left)
        if not ready:
            return
        chunk = os.read(child.stdout, 4096)
        if not chunk:
            return
        seen += chunk
    if APPLIED in seen:
        committed()


def serve(config_path: str, state_dir: str | None = None) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit status."""
    data = fetch(config_path, state_dir)
    if not data["server_running"]:
        raise NotSetUpError("the VPS end is not up: run 'vpnoffload up vps' first")
    where = data["paths"]
    _private_dir(where["run"])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    config = ConfigView(data)
    # The page's ports are ours from now until we exit, or we do not start.
    held = listeners.Held()
    held.hold(config)
    daemon = PageDaemon(where["config"], where["state"], where["run"], where["pages"])
    daemon.held = held
    pages = PageKeeper(daemon)
    swapper = SubprocessSwapper(where["config"], pages)
    # The second check of each home starts in this process's own probe namespace, so it
    # takes the visitors' path (PREROUTING, FORWARD); while there is none, only the direct check counts.
    probe = ProbeNamespace()
    dog = Watchdog(config, swapper, activity=lambda: tunnel_rx_packets(dog.config.tunnel.device),
                   forward=probe_namespace_prober(probe), flows=FlowEvidence())
    swapper.page_services = lambda: {n for n, s in dog.config.services.items() if s.serves_page}
    dog.publish = lambda: _publish(where["watch_state"], dog)
    swapper.committed = dog.committed
    dog.on_doubt = lambda: _doubt(swapper, pages)
    metrics = None
    management = ovpn.Management(os.path.join(where["run"], ovpn.SOCKET_NAME))
    try:
        probe.ensure()
        _read_openvpn(dog, management)
        dog.start(data["believed"])
        pages.update(dog.page_needed())
        if config.watch.metrics:
            from vpnoffload.watch.metrics import start_metrics

            metrics = start_metrics(config.watch.metrics, dog, where["run"])
        sdnotify.notify("READY=1")
        log.warning("watching %d service(s) every %gs", len(config.services), config.watch.interval)
        _loop(where, dog, pages, stop, probe, management)
    finally:
        sdnotify.notify("STOPPING=1")
        management.close()
        probe.close()
        swapper.cancel()
        if metrics is not None:
            metrics.shutdown()
        held.close()
    return 0


def _start_copier(job: bytes) -> spawn.Child:
    """The offline-copy fetcher as a short-lived lean child (its http.client and ssl never stay resident); its job on stdin."""
    child = spawn.spawn(spawn.lean_argv("vpnoffload.fallback.copier"), stdin=True)
    try:
        os.write(child.stdin, job)  # type: ignore[arg-type]  # blocks at most until the child reads it
    except OSError:
        pass  # it died at once: its exit status is reaped on the next tick
    os.close(child.stdin)  # type: ignore[arg-type]
    child.stdin = None
    return child


def _read_openvpn(dog: Watchdog, management: "ovpn.Management | None") -> None:
    """OpenVPN's live client list for this round (published with the round's checks)."""
    if management is None:
        return
    clients = management.clients()
    dog.openvpn = None if clients is None else {"clients": clients, "read_at": time.time()}


def _loop(where: dict[str, str], dog: Watchdog, pages: PageKeeper, stop: threading.Event,
          probe: "ProbeNamespace | None" = None, management: "ovpn.Management | None" = None) -> None:
    host_firewall = HostFirewallWatch(where["run"], time.monotonic())  # puts back openings a host reload wiped
    # Refreshes the offline copies while home is healthy; a copier left running when we stop
    # finishes on its own (each fetch is bounded by its timeouts).
    kept = copies.CopySchedule(where["run"], _start_copier)
    seen = _mtime(where["config"])
    # Each home's own counts and each service's refusals (watch/evidence.py); the tunnel
    # device's counters too, which mean one home's traffic only when there is one home.
    silence = evidence.make(dog, lambda: dog.config.tunnel.device, time.monotonic)
    dog.silence = silence
    while not stop.is_set():
        started = time.monotonic()
        for line in host_firewall.tick(started):
            log.warning("host firewall: %s", line)
        supervise.keep_server(where)  # restarts a killed OpenVPN server where no systemd would
        # Its own log too: each packet without the tls-crypt key writes two lines (lean/logcap.py).
        logcap.cap(os.path.join(where["run"], runfiles.openvpn_log(runfiles.SERVER)))
        if probe is not None:
            probe.ensure()  # made again (every RETRY s) if it failed, was taken or its link went
        if (mtime := _mtime(where["config"])) != seen:
            seen = mtime
            _reload(where, dog, getattr(pages.daemon, "held", None))
        _read_openvpn(dog, management)
        changed: frozenset[str] = frozenset()
        try:
            changed = dog.tick()
        except VpnOffloadError as exc:
            log.error("swap failed, will retry: %s", exc)
        pages.update(dog.page_needed())
        try:
            kept.tick(dog.config, dog.active(),
                      lambda n: dog.status[n].healthy and dog.status[n].state == "forwarding")
        except OSError as exc:
            log.error("cannot start the offline-copy fetcher: %s", exc)
        if not changed:  # a swap published already, in the same step
            _publish(where["watch_state"], dog)
        sdnotify.notify("WATCHDOG=1")
        wanted = pace.delay(dog.config.watch.interval, pace.doubtful(dog.status.values()))
        pace.wait(stop, max(0.0, wanted - (time.monotonic() - started)), silence)  # doubt: the next round now


def _doubt(swapper: SubprocessSwapper, pages: PageKeeper) -> None:
    """The tunnel went silent during a round: get the swap child loading and the page server
    listening now, so that a swap decided at the end of the round is one step."""
    try:
        swapper.prepare()
    except OSError as exc:
        log.error("cannot fork the swap child ahead: %s", exc)
    if swapper.page_services():
        pages.update(True)


def _private_dir(path: str) -> None:
    """Make ``path`` (and missing parents) 0700 whatever the umask (umask 000 would give 0777)."""
    old = os.umask(0o077)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    finally:
        os.umask(old)


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _reload(where: dict[str, str], dog: Watchdog, held: "listeners.Held | None" = None) -> None:
    """A changed config file is followed without a restart; a broken one is ignored."""
    try:
        config = ConfigView(fetch(where["config"], where["state"]))
    except VpnOffloadError as exc:
        log.error("config changed but is not valid, keeping the old one: %s", exc)
        return
    dog.reconfigure(config)
    if held is not None:
        try:
            held.hold(config)  # a page service added since start: hold its port too
        except VpnOffloadError as exc:
            log.error("%s", exc)
    log.warning("config reloaded: watching %d service(s)", len(config.services))


def _publish(path: str, dog: Watchdog) -> None:
    data = dog.snapshot()
    data["pid"] = os.getpid()
    try:
        write_state(path, data)
    except OSError as exc:
        log.error("cannot write %s: %s", path, exc)


def run(paths, *, server_up: bool) -> int:  # paths: vpnoffload.paths.Paths (the typer command's way in)
    """Run until SIGTERM/SIGINT in this process (the lean entry execs :func:`main` instead)."""
    if not server_up:
        raise NotSetUpError("the VPS end is not up: run 'vpnoffload up vps' first")
    return serve(str(paths.config), str(paths.state))


def main(argv: list[str] | None = None) -> int:
    """``python -I -S ... vpnoffload.watch.loop --config C [--state-dir S] [-v|--debug]``."""
    from vpnoffload.exits import run_main

    def body() -> int:
        given = options.parse(argv, values=("--config", "--state-dir"), flags=("-v", "--verbose", "--debug"),
                              required=("--config",))
        say.level = say.DEBUG if given.get("--debug") else say.INFO if (
            given.get("-v") or given.get("--verbose")) else say.WARNING
        state = given.get("--state-dir")
        return serve(str(given["--config"]), str(state) if state else None)

    return run_main(body, prog=say.prefix)


if __name__ == "__main__":
    sys.exit(main())
