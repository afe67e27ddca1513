"""The offline copies on disk: where they live, their index, and when to refresh them.

Layout, under the state directory::

    STATE/run/copies/<service>/index            marshal: what is kept, and the last fetch's result
    STATE/run/copies/<service>/<hash>-<rand>    one body per kept path (the name never comes from the path)

The service name has passed :func:`vpnoffload.names.check_name` (no ``/``, no
dots first); a body's file name is a hash of the request path plus a random
suffix, so no path a visitor or home sends can name a file, and a refreshed body
is a new file: the index is switched atomically after it is complete, and a
page server still holding the old one keeps serving it whole.

Lean (os, marshal, time): the watchdog imports this to schedule the copier
child (:mod:`vpnoffload.fallback.copier`, which does the fetching) and the page
server to open the bodies. ``hashlib`` is imported only where names are made.
"""

from __future__ import annotations

import marshal
import os
import time

from vpnoffload import runfiles

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from vpnoffload.lean.snapshot import ConfigView

INDEX = "index"
FORMAT = 1
#: The first fetch after ``watch`` starts (well within 15 s, so a fresh install soon has copies),
#: leaving the first checks time to settle.
FIRST_AFTER = 3.0
#: A copier child that runs longer than this is killed (a failed fetch keeps the old copy).
COPIER_TIMEOUT = 120.0


def copies_dir(run: str) -> str:
    return os.path.join(run, runfiles.COPIES)


def service_dir(run: str, service: str) -> str:
    if not service or "/" in service or service.startswith("."):
        raise ValueError(f"not a service name: {service!r}")  # checked names never get here
    return os.path.join(copies_dir(run), service)


def body_name(path: str) -> str:
    """A fresh file name for the body of request path ``path``: a hash, never the path itself."""
    import hashlib  # only the copier names files

    return f"{hashlib.sha256(path.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}-{os.urandom(4).hex()}"


def safe_name(name: object) -> bool:
    """A body name as :func:`body_name` makes them (what the page server opens, whatever an index says)."""
    if not isinstance(name, str) or len(name) != 41 or name[32] != "-":
        return False
    return all(c in "0123456789abcdef" for c in name[:32] + name[33:])


def empty_index() -> dict[str, Any]:
    return {"format": FORMAT, "pages": {}, "last_fetch": None, "result": None}


def read_index(run: str, service: str) -> dict[str, Any]:
    """The index of ``service`` (an empty one when there is none or it cannot be read)."""
    try:
        with open(os.path.join(service_dir(run, service), INDEX), "rb") as fh:
            data = marshal.loads(fh.read())
    except (OSError, EOFError, ValueError, TypeError):
        return empty_index()
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("pages"), dict):
        return empty_index()
    return data


def write_index(run: str, service: str, index: dict[str, Any]) -> None:
    """Write the index atomically (a temp file, fsync, rename): readers see the old one or the new one."""
    directory = service_dir(run, service)
    tmp = os.path.join(directory, f".{INDEX}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, marshal.dumps(index))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(directory, INDEX))


def summary(run: str, service: str, now: float | None = None) -> dict[str, Any]:
    """What ``status`` and the metrics show of one service's copies: how many, their age, the last fetch."""
    index = read_index(run, service)
    fetched = [p.get("fetched") or 0 for p in index["pages"].values()]
    now = time.time() if now is None else now
    return {"kept": len(fetched), "bytes": sum(p.get("size", 0) for p in index["pages"].values()),
            "oldest_age": round(now - min(fetched)) if fetched else None,
            "last_fetch": index.get("last_fetch"), "result": index.get("result")}


# ------------------------------------------------------------------ the page server's side


class Kept:
    """One kept page, opened while the page server may still read the state directory (as root)."""

    __slots__ = ("fd", "size", "content_type", "fetched", "html", "last_modified")

    def __init__(self, fd: int, size: int, content_type: str, fetched: float, last_modified: str | None) -> None:
        self.fd, self.size, self.content_type, self.fetched = fd, size, content_type, fetched
        self.html = content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml")
        self.last_modified = last_modified

    def __del__(self) -> None:
        # Closed when the last holder lets go (CPython frees at once): a page replaced on reload
        # stays readable for the connections still streaming it, and its fd number is not reused under them.
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


def open_kept(run: str, service: str, paths: Iterable[str]) -> dict[str, Kept]:
    """The kept pages of ``service`` among ``paths`` (the configured ones), each with an open fd.

    Bodies are opened now so the page server can drop root afterwards; an
    index entry naming an odd file, or a body whose size is not the recorded
    one, is skipped (that path gets the friendly page)."""
    index = read_index(run, service)["pages"]
    directory = service_dir(run, service)
    kept: dict[str, Kept] = {}
    for path in paths:
        entry = index.get(path)
        if not isinstance(entry, dict) or not safe_name(entry.get("file")):
            continue
        try:
            fd = os.open(os.path.join(directory, entry["file"]), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        if os.fstat(fd).st_size != entry.get("size"):
            os.close(fd)
            continue
        kept[path] = Kept(fd, entry["size"], str(entry.get("type") or "application/octet-stream"),
                          float(entry.get("fetched") or 0), entry.get("last_modified"))
    return kept


# ------------------------------------------------------------------ the watchdog's side


class CopySchedule:
    """Runs the copier child now and then, for the services that are forwarded home.

    ``due`` services: those with kept paths whose active home is healthy. The
    first run is :data:`FIRST_AFTER` s after start, then one every ``every``
    seconds; one child at a time, never waited for in the loop (polled each
    tick, killed after :data:`COPIER_TIMEOUT`).
    """

    def __init__(self, run: str, start: Callable[[bytes], object], clock: Callable[[], float] = time.monotonic) -> None:
        """``start(job)``: spawn the copier with ``job`` (a marshal blob) on its stdin; returns a
        :class:`vpnoffload.lean.spawn.Child`-like object (``poll``, ``kill``)."""
        self.run, self.start, self.clock = run, start, clock
        self.next_at = clock() + FIRST_AFTER
        self.child: object = None
        self.started_at = 0.0

    def job(self, config: ConfigView, active: dict[str, str | None]) -> dict[str, Any] | None:
        """What the copier gets: every service with kept paths that is forwarded to a home now."""
        services = []
        for svc in config.services.values():
            home = active.get(svc.name)
            if not svc.offline_copy or home is None or home not in config.homes:
                continue
            host = svc.hostname or svc.listen_address
            if svc.listen_port not in (80, 443):
                host = f"{host}:{svc.listen_port}"
            services.append({"name": svc.name, "address": config.homes[home].address,
                             "port": svc.target_port, "host": host, "tls": bool(svc.page_over_tls),
                             "paths": list(svc.offline_copy)})
        if not services:
            return None
        keep = [s.name for s in config.services.values() if s.offline_copy]
        return {"run": self.run, "max_bytes": config.watch.offline_copy_max_bytes,
                "timeout": max(2.0, float(config.watch.timeout) * 5), "services": services, "counted": keep}

    def tick(self, config: ConfigView, active: dict[str, str | None], healthy: Callable[[str], bool]) -> bool:
        """Reap or kill a running child; start one when due. True when one was started."""
        now = self.clock()
        if self.child is not None:
            if self.child.poll() is None:  # type: ignore[attr-defined]
                if now - self.started_at < COPIER_TIMEOUT:
                    return False
                self.child.kill()  # type: ignore[attr-defined]
            self.child = None
        if now < self.next_at:
            return False
        self.next_at = now + float(config.watch.offline_copy_every)
        job = self.job(config, {n: h for n, h in active.items() if h is not None and healthy(n)})
        if job is None:
            return False
        self.child = self.start(marshal.dumps(job))
        self.started_at = now
        return True

    def stop(self) -> None:
        if self.child is not None:
            self.child.kill()  # type: ignore[attr-defined]
            self.child = None
