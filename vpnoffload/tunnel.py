"""The OpenVPN process on either end: start, wait until usable, stop.

Two supervisors share one small interface (``deploy.common.TunnelDaemon``). :class:`DaemonTunnel` starts
``openvpn --daemon`` itself and tracks it by pidfile in the state dir; that is
what network namespaces and containers (no systemd) get. :class:`SystemdTunnel`
hands the same rendered config to Debian's ``openvpn-server@``/``openvpn-client@``
units when systemd runs this network namespace.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vpnoffload import fsio, plan, proc, runfiles
from vpnoffload.lean.logcap import LIMIT as LOG_LIMIT  # stdlib only
from vpnoffload.errors import BackendError, PrerequisiteError

if TYPE_CHECKING:
    from vpnoffload.paths import Paths

#: OpenVPN prints this once the tunnel is usable (server: listening; client: connected).
READY_MARK = "Initialization Sequence Completed"


def connected_clients(status_file: Path, max_age: float = 30.0) -> dict[str, dict[str, str]]:
    """Common name -> CLIENT_LIST columns, from the status-version 3 file the VPS's OpenVPN
    writes (``status`` in templates/server.conf.j2).

    A file older than ``max_age`` seconds (OpenVPN rewrites it every 2 s) means
    OpenVPN is not updating it: nobody counts as connected.
    """
    import csv

    try:
        if time.time() - status_file.stat().st_mtime > max_age:
            return {}
        text = status_file.read_text(errors="replace")
    except OSError:
        return {}
    header: list[str] = []
    clients: dict[str, dict[str, str]] = {}
    for row in csv.reader(text.splitlines(), delimiter="\t"):
        if len(row) > 1 and row[0] == "HEADER" and row[1] == "CLIENT_LIST":
            header = row[1:]
        elif row and row[0] == "CLIENT_LIST" and header:
            entry = dict(zip(header, row))
            clients[entry.get("Common Name", "")] = entry
    return clients


def openvpn_binary() -> str:
    path = shutil.which("openvpn") or next((p for p in ("/usr/sbin/openvpn", "/sbin/openvpn") if os.path.exists(p)), None)
    if path is None:
        raise PrerequisiteError("openvpn is not installed: apt-get install openvpn")
    return path


@dataclass
class DaemonTunnel:
    """``openvpn --daemon`` started and tracked by vpnoffload (pidfile + log in ``run_dir``)."""

    name: str  # "server" or "home-<name>"; names the pidfile, log and syslog tag
    config: Path  # the .conf / .ovpn file
    workdir: Path  # openvpn runs with --cd here, so relative file names in the config work
    run_dir: Path
    extra_args: tuple[str, ...] = ()  # e.g. --user/--group for a profile that does not drop privileges itself
    log_limit: int = LOG_LIMIT  # no file OpenVPN writes (its log above all) grows past this

    @property
    def pidfile(self) -> Path:
        return self.run_dir / runfiles.openvpn_pid(self.name)

    @property
    def logfile(self) -> Path:
        return self.run_dir / runfiles.openvpn_log(self.name)

    def pid(self) -> int | None:
        """The pid of our openvpn, or None. A stale pidfile (reused pid) does not count."""
        return runfiles.pid_of(self.pidfile, program=b"openvpn", args=(str(self.config).encode(),))

    def running(self) -> bool:
        return self.pid() is not None

    def left_behind(self) -> bool:
        """A pidfile of an OpenVPN that died (killed, crashed): ``stop`` removes it."""
        return self.pidfile.exists()

    def start(self) -> None:
        from vpnoffload.lean import logcap

        fsio.make_dir(self.run_dir, 0o700)
        self.pidfile.unlink(missing_ok=True)
        # Appended, so the watchdog can cut it while OpenVPN writes (lean/logcap.py: packets
        # without the tls-crypt key each log two lines); the last run's log is kept as .1.
        # Bounded without the watchdog too: OpenVPN can grow no file past logcap.LIMIT
        # (RLIMIT_FSIZE; a write past it fails, OpenVPN goes on), so the log and its .1
        # hold at most 2 x LIMIT whether or not anything ever cuts them.
        logcap.rotate(str(self.logfile))
        argv = [
            openvpn_binary(), "--cd", str(self.workdir), "--config", str(self.config),
            "--daemon", f"vpnoffload-{self.name}", "--writepid", str(self.pidfile),
            "--log-append", str(self.logfile), *self.extra_args,
        ]
        result = proc.run(argv, timeout=30, check=False, max_file_size=self.log_limit)
        if not result.ok:
            raise BackendError(f"openvpn did not start: {self._last_error(result.stderr)}")
        self._wait_for_pid(timeout=5)

    def _wait_for_pid(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running():
                return
            plan.raise_if_interrupted()
            time.sleep(0.05)
        raise BackendError(f"openvpn exited right after starting: {self._last_error('')}")

    def wait_ready(self, timeout: float) -> None:
        """Wait until OpenVPN logs that the tunnel is usable; fail early if it died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_MARK in self._log():
                return
            if not self.running():
                raise BackendError(f"openvpn stopped: {self._last_error('')}")
            plan.raise_if_interrupted()
            time.sleep(0.05)  # the log is small; a finer look saves ~50 ms of each up on average
        raise BackendError(f"openvpn was not ready after {timeout:g} s (see {self.logfile})")

    def stop(self, timeout: float = 10) -> None:
        from vpnoffload.procs import terminate

        pid = self.pid()
        # A start interrupted (SIGTERM, Ctrl-C) after OpenVPN forked but before it wrote its
        # pidfile leaves a daemon that only its command line names: find it by its pidfile argument.
        pids = [pid] if pid is not None else runfiles.scan(
            program=b"openvpn", args=(b"--writepid", os.fsencode(self.pidfile)))
        for each in pids:
            terminate(each, timeout)
        self.pidfile.unlink(missing_ok=True)

    def _log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def _last_error(self, stderr: str) -> str:
        lines = [ln for ln in (stderr + "\n" + self._log()).splitlines() if ln.strip()]
        for line in reversed(lines):
            if any(w in line for w in ("ERROR", "Error", "error", "Options error", "Exiting")):
                return line.strip()
        return lines[-1].strip() if lines else f"no output (see {self.logfile})"


def systemd_manages_this_netns() -> bool:
    """True when systemd is PID 1 and we share its network namespace.

    Inside ``ip netns exec`` or a container, units would start OpenVPN in the
    wrong namespace (or nowhere), so vpnoffload then runs the daemon itself.
    """
    if not Path("/run/systemd/system").is_dir():
        return False
    try:
        return os.readlink("/proc/self/ns/net") == os.readlink("/proc/1/ns/net")
    except PermissionError:
        # PID 1's namespaces need CAP_SYS_PTRACE, which the sandboxed watchdog unit
        # lacks; a process systemd started as a service (INVOCATION_ID) is in its netns.
        return bool(os.environ.get("INVOCATION_ID"))
    except OSError:
        return False


@dataclass
class SystemdTunnel:
    """Debian's templated units: ``openvpn-server@NAME`` runs /etc/openvpn/server/NAME.conf
    (``openvpn-client@NAME``: /etc/openvpn/client/NAME.conf).

    vpnoffload installs there only a two-line wrapper that ``cd``s into the
    rendered directory and includes the real config, so the files stay in one
    place whichever supervisor runs them. ``stop`` removes the wrapper again.
    """

    name: str
    unit: str  # e.g. "openvpn-server@vpnoffload"
    wrapper: Path | None = None  # e.g. /etc/openvpn/server/vpnoffload.conf
    wrapper_text: str = ""

    def _systemctl(self, *args: str, check: bool = True) -> proc.Result:
        return proc.run(["systemctl", *args], timeout=60, check=check)

    def running(self) -> bool:
        return self._systemctl("is-active", "--quiet", self.unit, check=False).returncode == 0

    def left_behind(self) -> bool:
        """The wrapper config of a unit whose OpenVPN died (a failed unit is not active):
        ``stop`` removes it and resets the unit."""
        return self.wrapper is not None and self.wrapper.exists()

    def start(self) -> None:
        if self.wrapper is not None:
            fsio.make_dir(self.wrapper.parent, 0o755)
            fsio.write_atomic(self.wrapper, self.wrapper_text, 0o644)
        # Started, never enabled: only `up` (at boot, the vpnoffload-vps/-home unit) starts
        # OpenVPN, so after a power cut it cannot come up before our rules are back.
        # --no-block: a client unit is "active" only once connected; wait_ready bounds that wait.
        self._systemctl("start", "--no-block", self.unit)

    def stop(self) -> None:
        self._systemctl("disable", "--now", self.unit, check=False)
        # A unit whose OpenVPN died stays "failed" (systemctl --failed, a degraded system) after
        # stopping: down leaves no trace of it.
        self._systemctl("reset-failed", self.unit, check=False)
        if self.wrapper is not None:
            self.wrapper.unlink(missing_ok=True)

    def wait_ready(self, timeout: float) -> None:
        # The units are Type=notify: OpenVPN reports READY once initialised.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running():
                return
            time.sleep(0.2)
        raise BackendError(f"{self.unit} is not active after {timeout:g} s: see journalctl -u {self.unit}")


def wrapper_text(workdir: Path, config_name: str, extra: tuple[str, ...] = ()) -> str:
    """The config a systemd unit runs: into the rendered directory, then the real config.

    Both paths are quoted as OpenVPN arguments (a space or a quote in the state
    directory must not split the line or add a directive)."""
    from vpnoffload.render.openvpn import ovpn_quote

    lines = ["# Installed by vpnoffload; removed by 'vpnoffload down'.", f"cd {ovpn_quote(workdir, '--state-dir')}",
             f"config {ovpn_quote(config_name, '--state-dir')}"]
    return "\n".join([*lines, *extra]) + "\n"


def restart_server(paths: Paths, ready_timeout: float = 15.0) -> bool:
    """Start the VPS's daemon-mode server again exactly as ``up vps`` does (same argv, pidfile,
    log), under the run lock so a running ``up``/``down`` wins. False: nothing to do (running
    already, or ``down vps`` removed the config). The watchdog's keeper calls this in a child."""
    from vpnoffload.locks import held

    tunnel = server_daemon(paths)
    with held(str(paths.lock), 2.0, lambda: f"another vpnoffload run holds {paths.lock}; the next tick retries"):
        if tunnel.running() or not tunnel.config.is_file():
            return False
        tunnel.start()
        tunnel.wait_ready(ready_timeout)
        return True


def server_running(paths: Paths) -> bool:
    """Is the VPS end's OpenVPN running? (The same check `up vps` makes.)"""
    if systemd_manages_this_netns() and SystemdTunnel(runfiles.SERVER, runfiles.SERVER_UNIT).running():
        return True
    return server_daemon(paths).running()


def server_daemon(paths: Paths, extra_args: tuple[str, ...] = ()) -> DaemonTunnel:
    """The VPS end's ``openvpn --daemon``: the one place that says which config, directory and pidfile it has."""
    return DaemonTunnel(runfiles.SERVER, paths.server_conf, paths.server_dir, paths.run, extra_args)
