"""A bound on a log file that another process appends to (OpenVPN's own log without systemd).

Every packet that reaches OpenVPN without the tls-crypt key writes two lines
(~160 bytes), and ``mute`` does not help: the two lines are of different
kinds, so they are never "the same message in a row". Without systemd (whose
journal is bounded) that is a disk anyone on the internet can fill. So
vpnoffload's own OpenVPN daemon runs with :data:`LIMIT` as its file size limit
(``tunnel.DaemonTunnel``): the log can never outgrow it, whatever else runs.
And OpenVPN appends (``--log-append``: every write goes to the current end), so
the watchdog and the home keeper call :func:`cap` every round: a log past
``limit`` bytes has its last quarter kept in ``LOG.1`` and is emptied, which
keeps the newest lines rather than the first 4 MiB. Stdlib only, for the lean
processes.
"""

from __future__ import annotations

import os

#: The most OpenVPN's log may hold before it is cut (its ``.1`` keeps the last quarter).
LIMIT = 4 * 1024 * 1024


def rotate(path: str) -> None:
    """Before a new OpenVPN starts appending: the previous run's log becomes ``path.1``."""
    try:
        os.replace(path, f"{path}.1")
    except FileNotFoundError:
        pass


def cap(path: str, limit: int = LIMIT) -> bool:
    """Cut ``path`` once it is over ``limit`` bytes; True if it was cut. Errors are not
    the watchdog's concern: a log it cannot cut is left as it is."""
    try:
        if os.stat(path).st_size <= limit:
            return False
        keep = max(1, limit // 4)
        with open(path, "rb") as fh:
            fh.seek(-keep, os.SEEK_END)
            tail = fh.read(keep)
        tail = tail[tail.find(b"\n") + 1:] if b"\n" in tail else tail  # whole lines only
        part = f"{path}.1.tmp"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, tail)
        finally:
            os.close(fd)
        os.replace(part, f"{path}.1")
        os.truncate(path, 0)  # the writer appends (O_APPEND): its next line starts the file again
        with open(path, "ab") as fh:
            fh.write(b"vpnoffload: log cut at %d bytes; its last lines are in %s.1\n" % (limit, os.path.basename(path).encode()))
        return True
    except OSError:
        return False
