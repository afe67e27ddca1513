"""The one way vpnoffload writes a file or makes a directory.

- :func:`write_atomic`: temp file in the same directory (O_EXCL, mode set with
  ``fchmod`` so the umask neither widens nor narrows it), fsync, rename. A
  reader sees the old file or the new one, never half of one, and a private
  key is never readable by anyone else, not even for an instant. The rename
  replaces a symlink at the destination rather than writing through it, unless
  the caller asks to keep the link (the user's own config file).
- :func:`make_dir`: create a directory with exactly the mode asked for; an
  existing directory keeps its mode (it may be shared, e.g. ``/tmp`` or
  ``/etc/nginx``), and ``no_symlink`` refuses one that is a symlink.
- :func:`read_regular`: read a file the user names, refusing FIFOs, devices and
  huge files (``-c /dev/zero`` must not eat the memory, a FIFO must not hang).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from vpnoffload.names import shown
from vpnoffload.errors import ConfigError, VpnOffloadError

#: A config file is a few kilobytes; anything far bigger is not one.
MAX_READ = 1 << 20


def resolve_link(path: Path) -> Path:
    """Where writing "through" ``path`` lands: the final target of a symlink chain, else ``path``."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def write_atomic(path: Path, data: str | bytes, mode: int, *, keep_link: bool = False) -> Path:
    """Replace ``path`` with ``data``, the new file having exactly ``mode``; returns the path written.

    With ``keep_link`` a symlinked ``path`` stays a link and its target is
    replaced (atomically, in the target's directory); without it the link
    itself is replaced by the file, so a planted link never redirects a write.
    The parent directory must exist. OSError becomes VpnOffloadError.
    """
    path = resolve_link(path) if keep_link else Path(path)
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # O_EXCL, 0600
    except OSError as exc:
        raise VpnOffloadError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise VpnOffloadError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


def make_dir(path: Path, mode: int, *, no_symlink: bool = False, parents_mode: int = 0o755) -> Path:
    """Make ``path`` a directory; a new one gets exactly ``mode`` (explicit chmod, whatever the umask).

    Missing parents are made ``parents_mode``. An existing directory is left
    as it is: its mode may be someone else's choice. ``no_symlink`` refuses a
    ``path`` that is a symlink (a write into it would land elsewhere).
    """
    path = Path(path)
    if no_symlink and path.is_symlink():
        raise ConfigError(f"{path} is a symlink; refusing to write through it (make it a plain directory)")
    try:
        if path.is_dir():
            return path
        if os.path.lexists(path):  # a file, a FIFO, a device, a dangling or looping symlink
            raise ConfigError(f"{shown(str(path))} exists and is not a directory")
    except OSError as exc:  # a name too long, a loop in the parents
        raise ConfigError(f"{shown(str(path))} cannot be used as a directory: {exc.strerror or exc}") from None
    missing = [path, *[p for p in path.parents if not p.exists()]]
    try:
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                if not directory.is_dir():
                    raise
                continue
            directory.chmod(mode if directory == path else parents_mode)
    except OSError as exc:
        raise VpnOffloadError(f"cannot create {path}: {exc.strerror or exc}") from None
    return path


def read_regular(path: Path, field: str, *, limit: int = MAX_READ, follow: bool = True) -> str:
    """The UTF-8 text of the regular file ``path`` (at most ``limit`` bytes), else ConfigError.

    Opened non-blocking so a FIFO cannot hang the open; FileNotFoundError is
    passed up unchanged for the caller to explain. ``follow=False`` refuses a
    symlink in the last component (``O_NOFOLLOW``).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise ConfigError("is a symlink; name the file itself", field=field) from None
        raise ConfigError(f"cannot read: {exc.strerror or exc}", field=field) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("not a regular file", field=field)
        if info.st_size > limit:
            raise ConfigError(f"is {info.st_size} bytes; a config is at most {limit} bytes", field=field)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
        if len(raw) > limit:
            raise ConfigError(f"is over {limit} bytes; a config is at most {limit} bytes", field=field)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", field=field) from None
    finally:
        os.close(fd)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", field=field) from None
