"""Small Python daemons vpnoffload starts itself (the friendly-page server).

Started detached (own session, so the CLI can exit), tracked by a pidfile the
child writes once it is ready, and told apart from a reused pid by its
command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vpnoffload import fsio
from vpnoffload.errors import BackendError
from vpnoffload.proc import python_argv, safe_cwd


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def terminate(pid: int, timeout: float = 10.0, *, kill: bool = True) -> None:
    """SIGTERM ``pid`` and wait up to ``timeout`` s for it to go; then SIGKILL it if ``kill``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    if kill and alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class PythonDaemon:
    name: str  # names the pidfile and log: run/<name>.pid, run/<name>.log
    module: str  # run as ``python -I -m module ARGS --ready PIDFILE`` from / (nothing imported from a cwd)
    args: tuple[str, ...]
    run_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if self.module.encode() in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = 10.0) -> None:
        fsio.make_dir(self.run_dir, 0o700)
        self.pidfile.unlink(missing_ok=True)
        with open(self.logfile, "ab") as log:
            proc = subprocess.Popen(
                python_argv(self.module, *self.args, "--ready", str(self.pidfile)), cwd=safe_cwd(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running():
                return
            if proc.poll() is not None:
                raise BackendError(f"{self.name} exited at start: {self._last_line()}")
            time.sleep(0.05)
        proc.kill()
        raise BackendError(f"{self.name} was not ready after {timeout:g} s (see {self.logfile})")

    def wait_ready(self, timeout: float) -> None:
        """``start`` returns only once the daemon is ready; nothing more to wait for."""

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout)
        self.pidfile.unlink(missing_ok=True)

    def reload(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def _last_line(self) -> str:
        try:
            lines = [ln for ln in self.logfile.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        return lines[-1] if lines else f"no output (see {self.logfile})"
