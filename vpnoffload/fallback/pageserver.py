"""The friendly-page server as its own small process.

Started as ``python -I -S`` (see :mod:`vpnoffload.fallback.pagectl`) by the
watchdog when a web service is about to go on fallback, and stopped again
once every service is back home; ``up vps`` restarts a running one when the
pages or what it listens on changed, and ``down vps`` stops it. It is kept out
of the watchdog so that a watchdog that dies or restarts in the middle of an
outage leaves visitors with the page, not with a refused connection, and so
that it can drop root once its sockets are bound (the watchdog cannot).

Resident: the interpreter, socket, selectors, the pages as bytes (ssl only
for TLS pages). The config is read through :mod:`vpnoffload.lean.snapshot`
(a short-lived child), not imported. SIGHUP reloads the pages in place while
still root (for a hand-edited template, after ``python -m vpnoffload.render.pages``).
"""

from __future__ import annotations

import os
import signal
import sys

from vpnoffload.errors import BackendError, VpnOffloadError
from vpnoffload.fallback import copies
from vpnoffload.lean import say
from vpnoffload.fallback.page import FallbackServer, FallbackServer6
from vpnoffload.fallback.pageloop import MAX_CONNECTIONS, Destination, Loop
from vpnoffload.lean.snapshot import ConfigView, fetch

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~1 MB in a lean process)
if TYPE_CHECKING:
    from typing import Any

log = say.Log("vpnoffload.fallback.pageserver")
RUN_AS = "vpnoffload"


def load_pages(config: ConfigView, pages_dir: str) -> dict[Destination, bytes]:
    """Each page service's rendered page, by the destination its visitors asked for."""
    pages: dict[Destination, bytes] = {}
    for svc in config.services.values():
        if svc.serves_page:
            path = os.path.join(pages_dir, f"{svc.name}.html")
            try:
                with open(path, "rb") as fh:
                    pages[(svc.local_address, svc.listen_port)] = fh.read()  # SO_ORIGINAL_DST: after any 1:1 NAT
            except OSError as exc:
                raise BackendError(f"cannot read the friendly page {path}: {exc.strerror or exc}") from None
    return pages


def load_kept(config: ConfigView) -> tuple[dict[Destination, dict[str, Any]], dict[Destination, bool]]:
    """The offline copies of each page service, opened now (while still root), by destination;
    and whether its HTML copies get the banner."""
    run = config.data["paths"]["run"]
    kept: dict[Destination, dict[str, Any]] = {}
    banners: dict[Destination, bool] = {}
    for svc in config.services.values():
        if svc.serves_page and svc.offline_copy:
            dest = (svc.local_address, svc.listen_port)  # as SO_ORIGINAL_DST reads it (after any 1:1 NAT)
            kept[dest] = copies.open_kept(run, svc.name, svc.offline_copy)
            banners[dest] = bool(svc.offline_banner)
    return kept, banners


def tls_contexts(config: ConfigView) -> dict[Destination, object] | None:
    services = [s for s in config.services.values() if s.page_over_tls]
    if not services:
        return None
    import ssl  # only when an HTTPS service needs it (~5 MB resident)

    contexts: dict[Destination, object] = {}
    for svc in services:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(svc.tls_cert), str(svc.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise BackendError(f"services.{svc.name}.tls_cert: cannot load certificate and key: {exc}") from None
        contexts[(svc.local_address, svc.listen_port)] = ctx
    return contexts


def start_servers(config: ConfigView, pages: dict[Destination, bytes]) -> list[FallbackServer]:
    """Bind every listener: the address the VPS holds (on a 1:1-NAT cloud the private one) at
    fallback_port (+1 for TLS), and [::] for IPv6 services."""
    host, port = config.vps_local_address, config.watch.fallback_port
    retry = config.watch.retry_after
    servers: list[FallbackServer] = []
    try:
        servers.append(FallbackServer((host, port), pages, retry_after=retry))
        contexts = tls_contexts(config)
        if contexts is not None:
            servers.append(FallbackServer((host, port + 1), pages, retry_after=retry, tls_contexts=contexts))
        # IPv6 services' visitors are DNATed to their own listen address (on this
        # VPS) at these ports, so one socket on [::] takes them all.
        ipv6 = [s for s in config.ipv6_services if s.serves_page]
        if ipv6:
            host = "::"
            servers.append(FallbackServer6((host, port), pages, retry_after=retry))
            if contexts is not None and any(s.page_over_tls for s in ipv6):
                servers.append(FallbackServer6((host, port + 1), pages, retry_after=retry, tls_contexts=contexts))
    except OSError as exc:
        for s in servers:
            s.server_close()
        raise BackendError(f"cannot listen on {host}:{port} for the friendly page: {exc.strerror or exc}") from None
    return servers


def drop_privileges(name: str = RUN_AS) -> bool:
    """Once the sockets are bound and the pages and TLS keys loaded, nothing needs
    root: continue as the unprivileged user OpenVPN also uses. False if not root
    or the user does not exist."""
    import pwd

    if os.geteuid() != 0:
        return False
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return False
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    return True


def raise_fd_limit(wanted: int = MAX_CONNECTIONS + 64) -> None:
    """Room for MAX_CONNECTIONS sockets: the usual soft limit (1024) would make accept fail first."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # the cap still holds; accept errors drop the oldest connection instead


def serve(config_path: str, pages_dir: str, ready: str | None = None, state_dir: str | None = None) -> int:
    raise_fd_limit()
    config = ConfigView(fetch(config_path, state_dir))
    servers = start_servers(config, load_pages(config, pages_dir))
    kept, banners = load_kept(config)
    for s in servers:
        s.set_kept(kept, banners)
    del kept  # the servers hold the pages: one replaced on reload closes when nobody streams it
    loop = Loop(servers)
    reload = [False]

    def stop(*_: object) -> None:
        loop.stopped = True

    def hup(*_: object) -> None:
        reload[0] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hup)
    if ready is not None:
        tmp = f"{ready}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        os.replace(tmp, ready)  # a reader never sees a half-written pid
    dropped = drop_privileges()
    log.warning("serving the friendly page on %s:%d%s", config.vps_local_address, config.watch.fallback_port,
                f" as user {RUN_AS}" if dropped else "")

    def on_wakeup() -> None:
        if not reload[0]:
            return
        reload[0] = False
        if dropped:
            log.error("running unprivileged: restart the page server to reload (vpnoffload up vps does)")
            return
        try:
            fresh = ConfigView(fetch(config_path, state_dir))
            pages = load_pages(fresh, pages_dir)
        except VpnOffloadError as exc:
            log.error("reload failed, keeping the old pages: %s", exc)
            return
        kept, banners = load_kept(fresh)
        for s in servers:
            s.set_pages(pages)
            s.set_kept(kept, banners)
        log.warning("pages reloaded")

    try:
        loop.run(on_wakeup)
    finally:
        for s in servers:
            s.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``--config C --pages DIR [--state-dir S] [--ready PIDFILE]``; exit status as the CLI's."""
    from vpnoffload.exits import run_main

    say.prefix = "vpnoffload-pages"

    def body() -> int:
        from vpnoffload.lean import options

        given = options.parse(argv, values=("--config", "--pages", "--ready", "--state-dir"),
                              required=("--config", "--pages"))
        ready, state = given.get("--ready"), given.get("--state-dir")
        return serve(str(given["--config"]), str(given["--pages"]), str(ready) if ready else None,
                     str(state) if state else None)

    return run_main(body, prog=say.prefix)


if __name__ == "__main__":
    sys.exit(main())
