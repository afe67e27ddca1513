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
        return runfiles.pid_of(self.pidfile, contains=(MODULE.encode(), self.pidfile.encode()))

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
            time.sleep(0.05)
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


def keep(client_pidfile: str, profile: str, up_argv: list[str], stopping: "list[bool]",
         clock: "Callable[[], float]" = time.monotonic, sleep: "Callable[[float], None]" = time.sleep,
         start: "Callable[[list[str]], spawn.Child] | None" = None,
         firewall: "Callable[[float], list[str]] | None" = None) -> None:
    """The loop: run ``up_argv`` whenever the client is gone, until ``stopping[0]``; and
    ``firewall(now)`` each round (its lines are logged), while no ``up home`` child runs."""
    start = start or (lambda argv: spawn.spawn(argv))
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
            sleep(EVERY)
    finally:
        if child is not None and child.poll() is None:
            # `down home` is stopping us: an `up home` half-way rolls back on SIGTERM.
            os.kill(child.pid, signal.SIGTERM)
            try:
                child.wait(30)
            except TimeoutError:
                child.kill()


def main(argv: list[str]) -> int:
    """``python -I -S ... vpnoffload.homekeeper --pidfile P --client-pidfile C --profile F [--firewall home-NAME]
    -- UP-ARGV``."""
    from vpnoffload.exits import run_main

    return run_main(lambda: _main(argv), prog="vpnoffload-home-keeper")


def _main(argv: list[str]) -> int:
    from vpnoffload.lean import options

    opts = options.parse(argv, values=("--pidfile", "--client-pidfile", "--profile", "--firewall"),
                         required=("--pidfile", "--client-pidfile", "--profile"), rest=True)
    stopping = [False]

    def stop(*_: object) -> None:
        stopping[0] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pidfile, client_pidfile, profile = (str(opts[name]) for name in ("--pidfile", "--client-pidfile", "--profile"))
    up_argv = [str(word) for word in opts["--"]]  # type: ignore[attr-defined]
    with open(pidfile + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(pidfile + ".tmp", pidfile)
    _say(f"keeping the OpenVPN client running ({client_pidfile})")
    end = opts.get("--firewall")
    firewall = firewall_watch(os.path.dirname(os.path.abspath(pidfile)), str(end)) if end else None
    try:
        keep(client_pidfile, profile, up_argv, stopping, firewall=firewall)
    finally:
        _say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
