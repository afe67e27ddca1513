"""A bounded wait for an exclusive flock, shared by vpnoffload's own run lock and
the xtables lock that every iptables user takes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator

from vpnoffload.errors import BackendError


@contextlib.contextmanager
def held(path: str, timeout: float, busy: Callable[[], str], *, mode: int = os.O_RDWR) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created 0600 if missing; a symlink there is refused,
    never followed); after ``timeout`` seconds of waiting raise BackendError with the text ``busy()`` returns.
    ``mode`` ``O_RDONLY | O_DIRECTORY``: lock an existing directory, creating nothing."""
    create = 0 if mode & os.O_DIRECTORY else os.O_CREAT
    try:
        fd = os.open(path, mode | create | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror or exc
        raise BackendError(f"cannot open the lock {path}: {why}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BackendError(busy()) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing drops the flock


#: How long an edit waits for another one (an edit takes well under a second;
#: issuing a certificate a little more).
EDIT_TIMEOUT = 30.0


def edit_lock_path(config: "os.PathLike[str] | str") -> str:
    """What every config and PKI edit locks: the directory of the config file's real location
    (a symlinked config and its target share one lock). A directory, not a lock file: an edit
    leaves nothing behind (not even when it fails), and there is no file name another user
    could plant a symlink at."""
    return os.path.dirname(os.path.realpath(config))


@contextlib.contextmanager
def editing(config: "os.PathLike[str] | str", timeout: float = EDIT_TIMEOUT) -> Iterator[None]:
    """Hold the edit lock of ``config``: parallel ``service add`` / ``pki issue`` run one after another,
    each reading what the previous one wrote (none is lost, no address is handed out twice)."""
    path = edit_lock_path(config)
    with held(path, timeout, lambda: f"another vpnoffload edit holds {path}; try again when it is done",
              mode=os.O_RDONLY | os.O_DIRECTORY):
        yield
