"""A bounded wait for an exclusive flock, shared by vpnoffload's own run lock and
the xtables lock that every iptables user takes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator

from vpnoffload.errors import BackendError


@contextlib.contextmanager
def held(path: str, timeout: float, busy: Callable[[], str], *, mode: int = os.O_RDWR) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created 0600 if missing); after ``timeout``
    seconds of waiting raise BackendError with the text ``busy()`` returns."""
    try:
        fd = os.open(path, mode | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackendError(f"cannot open the lock {path}: {exc.strerror or exc}") from exc
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
    """The lock every config and PKI edit holds: beside the config file's real location
    (a symlinked config and its target share one lock)."""
    real = os.path.realpath(config)
    return os.path.join(os.path.dirname(real), f".{os.path.basename(real)}.lock")


@contextlib.contextmanager
def editing(config: "os.PathLike[str] | str", timeout: float = EDIT_TIMEOUT) -> Iterator[None]:
    """Hold the edit lock of ``config``: parallel ``service add`` / ``pki issue`` run one after another,
    each reading what the previous one wrote (none is lost, no address is handed out twice)."""
    path = edit_lock_path(config)
    with held(path, timeout, lambda: f"another vpnoffload edit holds {path}; try again when it is done"):
        yield
