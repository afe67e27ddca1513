"""The files vpnoffload keeps while it runs: their names, and the one check that a pidfile names our process.

Everything here lives in the run dir (``STATE/run``, :attr:`vpnoffload.paths.Paths.run`)
except the OpenVPN server's rendered config (``STATE/server/server.conf``). The
lean processes (watchdog, page server, keepers) import this module too, so it
is stdlib ``os`` only and names are plain strings: callers join them to a
``Path`` or a ``str`` directory as they hold it.
"""

from __future__ import annotations

import os

# ------------------------------------------------------------------ names in the run dir

#: The watchdog's published view (``vpnoffload.watchfile``), read by ``status`` and ``up vps``.
WATCH_STATE = "watch.json"
#: The run lock ``up``/``down`` and the keepers take (``vpnoffload.locks``).
LOCK = "lock"
#: Friendly pages rendered ahead of an outage, one per web service.
PAGES = "pages"
#: Offline copies of the home sites (``vpnoffload.fallback.copies``).
COPIES = "copies"
#: The page server's pidfile (written once it listens) and log.
PAGE_SERVER_PID, PAGE_SERVER_LOG = "pageserver.pid", "pageserver.log"
#: What the watchdog's server keeper did (restarts), and its restart children's log.
SERVER_KEEPER_STATE, SERVER_KEEPER_LOG = "server-keeper.json", "server-keeper.log"
#: What the watchdog's host-firewall reconcile put back (read by ``status``).
HOSTFW_STATUS = "hostfw.json"
#: OpenVPN's status file on the VPS (the connected homes).
OPENVPN_SERVER_STATUS = "openvpn-server.status"
#: OpenVPN's management socket on the VPS (``vpnoffload.lean.ovpn``: the live client list).
OPENVPN_SERVER_MANAGEMENT = "openvpn-server.mgmt"


def record(end: str) -> str:
    """What ``up END`` changed, so ``down END`` undoes exactly that (``vps.json``, ``home.json``)."""
    return f"{end}.json"


def openvpn_pid(tunnel: str) -> str:
    """The pidfile of a daemon-mode OpenVPN (``tunnel``: ``server`` or ``home-NAME``)."""
    return f"openvpn-{tunnel}.pid"


def openvpn_log(tunnel: str) -> str:
    return f"openvpn-{tunnel}.log"


def home_keeper_pid(home: str) -> str:
    return f"home-keeper-{home}.pid"


def home_keeper_log(home: str) -> str:
    return f"home-keeper-{home}.log"


# ------------------------------------------------------------------ the OpenVPN server's identity

#: The VPS end's tunnel name: it names the pidfile, the log and the syslog tag.
SERVER = "server"
#: Its rendered directory under the state dir, and the config file there that OpenVPN runs.
SERVER_DIR, SERVER_CONF = "server", "server.conf"
#: Debian's templated unit that runs it when systemd manages this network namespace.
SERVER_UNIT = "openvpn-server@vpnoffload"


def server_conf(state_dir: str) -> str:
    return os.path.join(state_dir, SERVER_DIR, SERVER_CONF)


# ------------------------------------------------------------------ is the pidfile's process ours?


def read_pid(pidfile: "str | os.PathLike[str]") -> int | None:
    """The pid a pidfile holds (None: no file, or not a number)."""
    try:
        with open(pidfile) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def ours(pid: int | None, *, program: bytes = b"", args: tuple[bytes, ...] = (),
         contains: tuple[bytes, ...] = ()) -> int | None:
    """``pid`` if it is a live process of ours, else None.

    A pidfile outlives its process and the kernel reuses pids, so a pid counts
    only while ``/proc/PID/cmdline`` still shows our process: its program's name
    ends with ``program``, each of ``args`` is one of its arguments, and each of
    ``contains`` occurs in the command line. A zombie (exited, not yet reaped)
    counts as gone.
    """
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        with open(f"/proc/{pid}/stat") as fh:
            zombie = fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return None
    argv = cmdline.split(b"\0")
    if zombie or not argv[0].endswith(program) or not all(a in argv for a in args):
        return None
    return pid if all(c in cmdline for c in contains) else None


def pid_of(pidfile: "str | os.PathLike[str]", *, program: bytes = b"", args: tuple[bytes, ...] = (),
           contains: tuple[bytes, ...] = ()) -> int | None:
    """The pid in ``pidfile`` if it is a live process of ours (see :func:`ours`), else None."""
    return ours(read_pid(pidfile), program=program, args=args, contains=contains)


def scan(*, program: bytes, args: tuple[bytes, ...]) -> list[int]:
    """Every live process of ours (see :func:`ours`) with ``args`` among its arguments, found
    without a pidfile: for a daemon interrupted before it wrote one."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and ours(int(entry), program=program, args=args) is not None:
            found.append(int(entry))
    return found


def openvpn_runs(pidfile: "str | os.PathLike[str]", config: "str | os.PathLike[str]") -> bool:
    """``pidfile`` names a live openvpn running ``config`` (the check of DaemonTunnel and both keepers)."""
    return pid_of(pidfile, program=b"openvpn", args=(os.fsencode(config),)) is not None
