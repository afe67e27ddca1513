"""The home box's OpenVPN client kept running where no systemd restarts it.

Under systemd the client runs as ``openvpn-client@vpnoffload-HOME`` with
``Restart=``. Without it, ``up home`` starts ``openvpn --daemon`` and, as its
last step, this keeper: a lean ``python -I -S`` loop (~9 MB, stdlib only) that
once a second looks whether the client's pidfile still names a live openvpn.
When it does not, the keeper runs ``vpnoffload up home`` again, with the same
config, state dir, home and profile: a killed client takes its tun device and
so the policy routes with it, and ``up home`` is the one thing that puts all
of them back exactly (it is idempotent, takes the run lock, and records what it
changed, so ``down home`` still undoes exactly). Failed attempts back off
(1 s doubling to 30 s) on the monotonic clock; everything is logged to
``run/home-keeper-HOME.log``.

It also keeps the home box's own firewall open for vpnoffload
(:func:`firewall_watch`): when ufw, Docker, firewalld or an ``nft -f``
rewrites the host's rules, the openings ``up home`` recorded are put back
within seconds, as the VPS's watchdog does there (:mod:`vpnoffload.watch.hostfw`).

``down home`` stops the keeper first (SIGTERM: it stops a running ``up home``
child, which rolls back, and exits), then the client as before.

Under systemd there is no daemon keeper: ``install-service home`` installs
``vpnoffload-home-keeper.service`` (:mod:`vpnoffload.deploy.units`), which runs
this module with ``--watch-only``: the host-firewall watch (:func:`watch_firewall`)
and, with ``--restart-unit``, :class:`UnitRestarter`. Debian's ``openvpn-client@``
has no ``Restart=``, and a restarted client alone would not bring back the policy
routes (they went with its tun device). So when the client's tun device is gone
and systemd says its unit is not running, the keeper asks systemd to restart the
home's own unit (``systemctl restart --no-block vpnoffload-home``): its ``down
home`` then ``up home`` put the client, routes and rules back exactly, under
systemd's job queue and the run lock. The keeper never runs ``up home`` itself.
It speaks systemd's notify protocol (ready after the first look, then a
``WATCHDOG=1`` each round) and logs to the journal.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from vpnoffload import runfiles
from vpnoffload.lean import spawn

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a ~9 MB process)
if TYPE_CHECKING:
    from collections.abc import Callable

FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0
#: How often the keeper looks at the client.
EVERY = 1.0
#: An ``up home`` child still running after this long is stopped (it waits up to 30 s to connect).
CHILD_TIMEOUT = 90.0
MODULE = "vpnoffload.homekeeper"


# One check of "is our openvpn still running" for both keepers.
openvpn_alive = runfiles.openvpn_runs


def keeper_pid(run_dir: str, home: str) -> int | None:
    """The running keeper of ``home`` (either mode: the daemon's or the systemd unit's), or None."""
    pidfile = os.path.join(run_dir, runfiles.home_keeper_pid(home))
    return runfiles.pid_of(pidfile, contains=(MODULE.encode(), pidfile.encode()))


def watch_only(pid: int) -> bool:
    """The keeper ``pid`` runs in the systemd unit's mode (the host firewall only)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"--watch-only" in fh.read().split(b"\0")
    except OSError:
        return False


def restart_unit_of(pid: int) -> str | None:
    """The unit the systemd unit's keeper ``pid`` restarts when the client is gone (None: it does not)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            words = fh.read().split(b"\0")
    except OSError:
        return None
    if b"--restart-unit" not in words[:-1]:
        return None
    return words[words.index(b"--restart-unit") + 1].decode(errors="replace") or None


def watch_only_argv(python: str, pidfile: str, end: str, restart: "tuple[str, str, str] | None" = None) -> list[str]:
    """What the systemd unit runs: the lean keeper, host firewall (``end``: "home-NAME") and, with
    ``restart`` = (tun device, client unit, home unit), the home unit restarted when the client is gone."""
    extra = ("--device", restart[0], "--client-unit", restart[1], "--restart-unit", restart[2]) if restart else ()
    return spawn.lean_argv(MODULE, "--watch-only", "--pidfile", pidfile, "--firewall", end, *extra, python=python)


class HomeKeeper:
    """Control of the keeper from ``up home``/``down home`` (the Tunnel-like running/start/stop)."""

    def __init__(self, home: str, run_dir: str, client_pidfile: str, profile: str, up_argv: list[str]) -> None:
        self.home, self.run_dir = home, run_dir
        self.client_pidfile, self.profile, self.up_argv = client_pidfile, profile, up_argv

    @property
    def pidfile(self) -> str:
        return os.path.join(self.run_dir, runfiles.home_keeper_pid(self.home))

    @property
    def logfile(self) -> str:
        return os.path.join(self.run_dir, runfiles.home_keeper_log(self.home))

    def pid(self) -> int | None:
        return keeper_pid(self.run_dir, self.home)

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        """Start it detached (it outlives ``up home``) and wait until it wrote its pidfile."""
        if self.running():
            return
        argv = spawn.lean_argv(MODULE, "--pidfile", self.pidfile, "--client-pidfile", self.client_pidfile,
                               "--profile", self.profile, "--firewall", f"home-{self.home}", "--", *self.up_argv)
        child = spawn.spawn(argv, log=self.logfile, detach=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.running():
                return
            if child.poll() is not None:
                break
            time.sleep(0.02)  # it writes its pidfile ~40 ms after the spawn
        from vpnoffload.errors import BackendError

        raise BackendError(f"the OpenVPN client keeper did not start (see {self.logfile})")

    def stop(self, timeout: float = 20.0) -> None:
        from vpnoffload.procs import terminate

        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout)
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass


def _say(msg: str) -> None:
    try:  # stderr is the keeper's log file
        sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} vpnoffload-home-keeper: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def firewall_watch(run_dir: str, end: str) -> "Callable[[float], list[str]]":
    """The home's host-firewall look (``tick(now)`` -> lines for the log): ``end`` is the record
    ``up home`` keeps its openings in ("home-NAME")."""
    from vpnoffload.watch.hostfw import HostFirewallWatch

    return HostFirewallWatch(run_dir, time.monotonic(), end).tick


#: ``systemctl is-active`` states in which the client is (still) systemd's to run: starting,
#: running, or being stopped by someone (``down home``): never a reason to restart.
CLIENT_ALIVE = frozenset({"active", "activating", "reloading", "deactivating"})


class UnitRestarter:
    """Under systemd: the home unit restarted (by systemd) when the OpenVPN client is gone.

    Why the home unit, not the client's: a killed client takes its tun device and so the
    policy routes with it; the home unit's stop (``down home``) and start (``up home``) put
    client, routes, rules and sysctls back exactly, as the daemon keeper's ``up home`` does.
    A ``Restart=`` drop-in on ``openvpn-client@`` would bring the tunnel back without its routes.

    ``PartOf=`` on the keeper's unit means that restart stops and starts this keeper too, so
    the ask is ``--no-block`` (the job is queued in systemd before we are stopped, and
    nothing of ours waits for it), and the backoff (1 s doubling to 30 s, as the daemon
    keeper's) is kept in ``state_file``: the next keeper, started after a failed ``up home``,
    waits the next step instead of asking again at once. The file goes once the client runs.

    Cheap when all is well: a look at ``/sys/class/net/DEVICE`` each round (the client keeps
    its device across reconnects: ``persist-tun``); ``systemctl is-active`` only when it is gone.
    """

    def __init__(self, device: str, client_unit: str, home_unit: str, state_file: str,
                 run: "Callable[[list[str]], str] | None" = None,
                 device_exists: "Callable[[str], bool] | None" = None) -> None:
        self.device, self.client_unit, self.home_unit, self.state_file = device, client_unit, home_unit, state_file
        self.run = run or _systemctl
        self.device_exists = device_exists or (lambda dev: os.path.exists(f"/sys/class/net/{dev}"))
        self.dead_since: float | None = None

    def client_alive(self) -> bool:
        if self.device_exists(self.device):
            return True
        from vpnoffload.errors import VpnOffloadError

        try:
            state = self.run(["is-active", self.client_unit]).strip()
        except (OSError, VpnOffloadError) as exc:  # cannot tell: do not restart on a guess
            _say(f"cannot ask systemd about {self.client_unit}: {exc}")
            return True
        return state in CLIENT_ALIVE

    def tick(self, now: float) -> list[str]:
        """One look (each round); the lines to log."""
        if self.client_alive():
            self.dead_since = None
            if self._forget():
                return [f"the OpenVPN client ({self.client_unit}) runs again"]
            return []
        if self.dead_since is None:
            self.dead_since = now
        wait = self._load()  # 0 for the first ask; after an ask, its backoff step
        if now < self.dead_since + wait:
            return []
        backoff = min(MAX_BACKOFF, wait * 2) if wait else FIRST_BACKOFF
        self._save(backoff)  # before the restart stops us
        self.dead_since = now
        from vpnoffload.errors import VpnOffloadError

        argv = ["restart", "--no-block", self.home_unit]
        try:
            self.run(argv)
        except (OSError, VpnOffloadError) as exc:
            return [f"the OpenVPN client ({self.client_unit}) is not running; systemctl {' '.join(argv)} "
                    f"failed: {exc}"]
        return [f"the OpenVPN client ({self.client_unit}) is not running: asked systemd to restart "
                f"{self.home_unit} (down home, then up home; if it is still gone, asked again in {backoff:g}s)"]

    def _load(self) -> float:
        try:
            with open(self.state_file) as fh:
                return min(MAX_BACKOFF, max(FIRST_BACKOFF, float(fh.read().strip())))
        except (OSError, ValueError):
            return 0.0

    def _save(self, backoff: float) -> None:
        try:
            with open(self.state_file + ".tmp", "w") as fh:
                fh.write(f"{backoff:g}\n")
            os.replace(self.state_file + ".tmp", self.state_file)
        except OSError as exc:
            _say(f"cannot keep the restart backoff in {self.state_file}: {exc}")

    def _forget(self) -> bool:
        try:
            os.unlink(self.state_file)
            return True
        except OSError:
            return False


def _systemctl(args: list[str]) -> str:
    """``systemctl ARGS`` with the lean spawn; its stdout. ``is-active`` exits 3 for a unit not running."""
    systemctl = next((p for p in ("/usr/bin/systemctl", "/bin/systemctl") if os.path.exists(p)), "systemctl")
    out = spawn.run([systemctl, *args], f"systemctl {' '.join(args)}", 30.0, ok=(0, 3, 4))
    return out.decode(errors="replace")


def keep(client_pidfile: str, profile: str, up_argv: list[str], stopping: "list[bool]",
         clock: "Callable[[], float]" = time.monotonic, sleep: "Callable[[float], None]" = time.sleep,
         start: "Callable[[list[str]], spawn.Child] | None" = None,
         firewall: "Callable[[float], list[str]] | None" = None) -> None:
    """The loop: run ``up_argv`` whenever the client is gone, until ``stopping[0]``; and
    ``firewall(now)`` each round (its lines are logged), while no ``up home`` child runs."""
    from vpnoffload.lean import logcap

    start = start or (lambda argv: spawn.spawn(argv))
    # The client's own log (openvpn-home-NAME.log beside its pidfile) is bounded like the server's.
    client_log = client_pidfile[: -len(".pid")] + ".log" if client_pidfile.endswith(".pid") else None
    backoff, next_try, child, began = FIRST_BACKOFF, 0.0, None, 0.0
    try:
        while not stopping[0]:
            now = clock()
            if firewall is not None and child is None:  # a running `up home` puts them back itself
                for line in firewall(now):
                    _say(f"host firewall: {line}")
            if child is not None:
                code = child.poll()
                if code is None and now - began > CHILD_TIMEOUT:
                    child.kill()
                    code = -9
                if code is not None:
                    child.close()
                    child = None
                    if code == 0 and openvpn_alive(client_pidfile, profile):
                        _say("OpenVPN client and routes are back (up home)")
                        backoff = FIRST_BACKOFF
                    else:
                        _say(f"up home failed (exit {code}); next try in {backoff:g}s")
                        next_try, backoff = now + backoff, min(MAX_BACKOFF, backoff * 2)
            elif not openvpn_alive(client_pidfile, profile) and now >= next_try:
                _say("the OpenVPN client is not running: running up home again")
                try:
                    child, began = start(up_argv), now
                except OSError as exc:
                    _say(f"cannot run up home: {exc}")
                    next_try, backoff = now + backoff, min(MAX_BACKOFF, backoff * 2)
            if client_log is not None:
                logcap.cap(client_log)
            sleep(EVERY)
    finally:
        if child is not None and child.poll() is None:
            # `down home` is stopping us: an `up home` half-way rolls back on SIGTERM.
            os.kill(child.pid, signal.SIGTERM)
            try:
                child.wait(30)
            except TimeoutError:
                child.kill()


def watch_firewall(firewall: "Callable[[float], list[str]]", stopping: "list[bool]",
                   clock: "Callable[[], float]" = time.monotonic, sleep: "Callable[[float], None]" = time.sleep,
                   notify: "Callable[[str], object] | None" = None,
                   restarter: "Callable[[float], list[str]] | None" = None) -> None:
    """The ``--watch-only`` loop: ``firewall(now)`` and ``restarter(now)`` (:meth:`UnitRestarter.tick`)
    each round (their lines logged), until ``stopping[0]``. Nothing here starts a process but
    their own children (the firewall look's, ``systemctl``): no ``up home`` ever."""
    from vpnoffload.lean import sdnotify

    tell = notify or sdnotify.notify
    ready = False
    while not stopping[0]:
        now = clock()
        for line in restarter(now) if restarter is not None else ():
            _say(line)
        for line in firewall(now):
            _say(f"host firewall: {line}")
        if not ready:  # after the first look: a wiped opening found at start is already back
            tell("READY=1")
            ready = True
        tell("WATCHDOG=1")  # WatchdogSec= in the unit: a hung keeper is restarted
        sleep(EVERY)
    tell("STOPPING=1")


def main(argv: list[str]) -> int:
    """``python -I -S ... vpnoffload.homekeeper --pidfile P --client-pidfile C --profile F [--firewall home-NAME]
    -- UP-ARGV``, or under systemd ``... --watch-only --pidfile P --firewall home-NAME``."""
    from vpnoffload.exits import run_main

    return run_main(lambda: _main(argv), prog="vpnoffload-home-keeper")


def _main(argv: list[str]) -> int:
    from vpnoffload.lean import options

    if "--watch-only" in argv:
        # No client options and no command: this mode cannot be told to run `up home`.
        opts = options.parse(argv, values=("--pidfile", "--firewall", "--device", "--client-unit", "--restart-unit"),
                             flags=("--watch-only",), required=("--pidfile", "--firewall"))
    else:
        opts = options.parse(argv, values=("--pidfile", "--client-pidfile", "--profile", "--firewall"),
                             required=("--pidfile", "--client-pidfile", "--profile"), rest=True)
    stopping = [False]

    def stop(*_: object) -> None:
        stopping[0] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with _SignalledNap() as nap:
        return _keep_until_stopped(opts, stopping, nap)


def _keep_until_stopped(opts: dict[str, object], stopping: list[bool], nap: "Callable[[float], None]") -> int:
    pidfile = str(opts["--pidfile"])
    _write_pidfile(pidfile)
    end = opts.get("--firewall")
    firewall = firewall_watch(os.path.dirname(os.path.abspath(pidfile)), str(end)) if end else None
    try:
        if firewall is not None and opts.get("--watch-only"):
            _say(f"keeping the host firewall's openings of {end} in place (systemd runs the OpenVPN client)")
            restarter = _restarter(opts, pidfile)
            watch_firewall(firewall, stopping, sleep=nap, restarter=restarter.tick if restarter else None)
        else:
            client_pidfile, profile = str(opts["--client-pidfile"]), str(opts["--profile"])
            up_argv = [str(word) for word in opts["--"]]  # type: ignore[attr-defined]
            _say(f"keeping the OpenVPN client running ({client_pidfile})")
            keep(client_pidfile, profile, up_argv, stopping, sleep=nap, firewall=firewall)
    finally:
        _say("stopped")
        _remove_pidfile(pidfile)
    return 0


class _SignalledNap:
    """A sleep that SIGTERM and SIGINT cut short. ``down home`` waits for this keeper to be gone,
    and a ``time.sleep(EVERY)`` resumes after the signal handler ran (PEP 475): up to a second,
    half a second on average, of every ``down home``. The handler's signal also writes a byte
    to a pipe (``signal.set_wakeup_fd``) that the sleep waits on; the byte is read, so a later
    nap sleeps again. On leaving, the process's wakeup fd is what it was and the pipe is closed.
    (A class, not contextlib: the keeper stays a small process.)"""

    def __enter__(self) -> "Callable[[float], None]":
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.write_end, False)
        self.before = signal.set_wakeup_fd(self.write_end)
        return self.nap

    def nap(self, seconds: float) -> None:
        import select

        if select.select([self.read_end], [], [], seconds)[0]:
            os.read(self.read_end, 512)

    def __exit__(self, *_: object) -> None:
        signal.set_wakeup_fd(self.before)
        os.close(self.read_end)
        os.close(self.write_end)


def _restarter(opts: dict[str, object], pidfile: str) -> UnitRestarter | None:
    """The ``--watch-only`` keeper's restart of the home unit, when its unit gave the three names."""
    names = [opts.get(name) for name in ("--device", "--client-unit", "--restart-unit")]
    if not all(names):
        return None
    device, client, home_unit = (str(name) for name in names)
    _say(f"asking systemd to restart {home_unit} whenever {client} is gone")
    return UnitRestarter(device, client, home_unit, pidfile[: -len(".pid")] + ".restart"
                         if pidfile.endswith(".pid") else pidfile + ".restart")


def _write_pidfile(pidfile: str) -> None:
    with open(pidfile + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(pidfile + ".tmp", pidfile)


def _remove_pidfile(pidfile: str) -> None:
    """A stopped keeper leaves no pidfile (status reads it; a reused pid is ruled out anyway)."""
    try:
        with open(pidfile) as fh:
            if fh.read().strip() != str(os.getpid()):
                return  # a newer keeper's
        os.unlink(pidfile)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
