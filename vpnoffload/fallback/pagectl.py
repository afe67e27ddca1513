"""Starting and stopping the friendly-page server (``run/pageserver.pid``, ``run/pageserver.log``).

Used by the watchdog (it starts the server when a web service is about to go
on fallback and stops it when all are home again, so steady state costs no
second interpreter) and by ``up vps`` / ``down vps`` (restart on changed pages,
stop). Lean like the watchdog: no pathlib, no subprocess.

The server runs detached (its own session) so that it outlives a watchdog that
dies mid-outage. It writes its pid to the pidfile once it listens; a pid is
only believed while its command line names the page server module.
"""

from __future__ import annotations

import os
import signal
import time

from vpnoffload import runfiles
from vpnoffload.errors import BackendError
from vpnoffload.lean import spawn

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the watchdog imports this)
if TYPE_CHECKING:
    from vpnoffload.paths import Paths

MODULE = "vpnoffload.fallback.pageserver"


class PageDaemon:
    """The page server of one state dir; the interface of ``vpnoffload.procs.PythonDaemon``."""

    name = "pageserver"

    def __init__(self, config: str, state: str, run_dir: str, pages_dir: str) -> None:
        self.config, self.state, self.run_dir, self.pages_dir = config, state, run_dir, pages_dir
        self.pidfile = os.path.join(run_dir, runfiles.PAGE_SERVER_PID)
        self.logfile = os.path.join(run_dir, runfiles.PAGE_SERVER_LOG)
        self._child: spawn.Child | None = None

    @classmethod
    def for_paths(cls, paths: Paths) -> PageDaemon:
        return cls(str(paths.config), str(paths.state), str(paths.run), str(paths.pages))

    def argv(self) -> list[str]:
        return spawn.lean_argv(MODULE, "--config", self.config, "--state-dir", self.state,
                               "--pages", self.pages_dir, "--ready", self.pidfile)

    def pid(self) -> int | None:
        self._reap()
        return runfiles.pid_of(self.pidfile, contains=(MODULE.encode(),))

    def running(self) -> bool:
        return self.pid() is not None

    def spawn(self) -> None:
        """Start it without waiting (the watchdog goes on checking); :meth:`wait_ready` waits."""
        if self.running() or (self._child is not None and self._child.poll() is None):
            return
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass
        self._child = spawn.spawn(self.argv(), log=self.logfile, detach=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start it and return once it listens (BackendError if it exits or is not ready in time)."""
        self.spawn()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            child = self._child
            if child is not None and child.poll() is not None:
                self._child = None
                raise BackendError(f"{self.name} exited at start: {self._last_line()}")
            if self.running():
                return
            if child is None:
                raise BackendError(f"{self.name} is not running")
            if time.monotonic() >= deadline:
                raise BackendError(f"{self.name} was not ready after {timeout:g} s (see {self.logfile})")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM it, wait up to ``timeout`` s, then SIGKILL; forget the pidfile."""
        pids = {p for p in (self.pid(), self._child.pid if self._child and self._child.poll() is None else None) if p}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(self._gone(pid) is False for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in pids:
            if not self._gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._child is not None:
            try:
                self._child.wait(5.0)
            except TimeoutError:
                pass
            self._child = None
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass

    def reload(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def _gone(self, pid: int) -> bool:
        self._reap()
        return runfiles.ours(pid) is None  # a zombie waiting for its parent counts as gone

    def _reap(self) -> None:
        """Collect our own child once it exited (else it stays a zombie while the watchdog runs)."""
        if self._child is not None:
            self._child.poll()

    def _last_line(self) -> str:
        try:
            with open(self.logfile, errors="replace") as fh:
                lines = [ln for ln in fh.read().splitlines() if ln.strip()]
        except OSError:
            lines = []
        return lines[-1] if lines else f"no output (see {self.logfile})"
