"""The friendly-page server as its own small process (``python -m vpnoffload.watch.pageserver``).

``up vps`` starts it next to OpenVPN and ``down vps`` stops it. It is kept out
of the watchdog so that a watchdog that dies or restarts in the middle of an
outage leaves visitors with the page, not with a refused connection. ``up vps``
restarts it when the pages or what it listens on changed; SIGHUP reloads the
pages in place (for a hand-edited template, after ``python -m vpnoffload.render.pages``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from vpnoffload.errors import BackendError, VpnOffloadError
from vpnoffload.watch.page import Destination, FallbackServer, FallbackServer6
from vpnoffload.model import Config

log = logging.getLogger("vpnoffload.render.pages")


def load_pages(config: Config, pages_dir: Path) -> dict[Destination, bytes]:
    pages: dict[Destination, bytes] = {}
    for svc in config.services.values():
        if svc.serves_page:
            pages[(str(svc.listen_address), svc.listen_port)] = (pages_dir / f"{svc.name}.html").read_bytes()
    return pages


def tls_contexts(config: Config) -> dict[Destination, object] | None:
    services = [s for s in config.services.values() if s.page_over_tls]
    if not services:
        return None
    import ssl  # only when an HTTPS service needs it

    contexts: dict[Destination, object] = {}
    for svc in services:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(svc.tls_cert), str(svc.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise BackendError(f"services.{svc.name}.tls_cert: cannot load certificate and key: {exc}") from None
        contexts[(str(svc.listen_address), svc.listen_port)] = ctx
    return contexts


def start_servers(config: Config, pages: dict[Destination, bytes]) -> list[FallbackServer]:
    host, port = str(config.vps.address), config.watch.fallback_port
    servers: list[FallbackServer] = []
    try:
        servers.append(FallbackServer((host, port), pages, retry_after=config.watch.retry_after))
        contexts = tls_contexts(config)
        if contexts is not None:
            servers.append(FallbackServer((host, port + 1), pages, retry_after=config.watch.retry_after,
                                          tls_contexts=contexts))
        # IPv6 services' visitors are DNATed to their own listen address (on this
        # VPS) at these ports, so one socket on [::] takes them all.
        ipv6 = [s for s in config.ipv6_services if s.serves_page]
        if ipv6:
            host = "::"
            servers.append(FallbackServer6((host, port), pages, retry_after=config.watch.retry_after))
            if contexts is not None and any(s.page_over_tls for s in ipv6):
                servers.append(FallbackServer6((host, port + 1), pages, retry_after=config.watch.retry_after,
                                               tls_contexts=contexts))
    except OSError as exc:
        for s in servers:
            s.server_close()
        raise BackendError(f"cannot listen on {host}:{port} for the friendly page: {exc.strerror or exc}") from None
    for s in servers:
        s.start()
    return servers


RUN_AS = "vpnoffload"


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


def serve(config_path: Path, pages_dir: Path, ready: Path | None = None) -> int:
    from vpnoffload import config as cfg

    config = cfg.load(config_path)
    servers = start_servers(config, load_pages(config, pages_dir))
    stop = threading.Event()
    reload = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    if ready is not None:
        ready.write_text(f"{os.getpid()}\n")
    dropped = drop_privileges()
    log.warning("serving the friendly page on %s:%d%s", config.vps.address, config.watch.fallback_port,
                f" as user {RUN_AS}" if dropped else "")
    try:
        while not stop.wait(0.2):
            if reload.is_set():
                reload.clear()
                if dropped:
                    log.error("running unprivileged: restart the page server to reload (vpnoffload up vps does)")
                    continue
                try:
                    pages = load_pages(cfg.load(config_path), pages_dir)
                except (VpnOffloadError, OSError) as exc:
                    log.error("reload failed, keeping the old pages: %s", exc)
                    continue
                for s in servers:
                    s.set_pages(pages)
                log.warning("pages reloaded")
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpnoffload.watch.pageserver")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--pages", type=Path, required=True)
    parser.add_argument("--ready", type=Path, help="write our pid here once listening")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="vpnoffload-pages: %(message)s")
    try:
        return serve(args.config, args.pages, args.ready)
    except VpnOffloadError as exc:
        print(f"vpnoffload-pages: {exc}", file=sys.stderr)
        return int(exc.exit_status)


if __name__ == "__main__":
    sys.exit(main())
