"""The config as the lean VPS processes see it: built by a short-lived child, read as plain data.

Parsing the TOML config costs ~5 MB resident (tomllib, ipaddress, dataclasses,
pathlib, the model). The watchdog and the page server run for months, so they
never import the config code: they run ``python -I -m vpnoffload.lean.snapshot``
(:func:`fetch`), which loads and validates the config with the real parser and
writes what the hot loops need as one ``marshal`` blob (plain dicts, lists,
strings and numbers; ``marshal`` is built in, ``json`` would add ``re``).
A broken config makes the child exit non-zero with the usual one-line error.

The answer is read into small classes with the attribute names of
``vpnoffload.model`` (:class:`ConfigView` and friends), so the decision logic
works unchanged on either.
"""

from __future__ import annotations

import marshal
import sys

from vpnoffload.errors import ConfigError, NotSetUpError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~1 MB in a lean process)
if TYPE_CHECKING:
    from typing import Any

    from vpnoffload.model import Config
    from vpnoffload.paths import Paths

FETCH_TIMEOUT = 30.0
#: Bumped when the blob's shape changes (a lean process and a newer snapshot must agree).
FORMAT = 1


# ------------------------------------------------------------------ the child (full imports)


def build(config: Config, paths: Paths, *, with_pages: bool = False) -> dict[str, Any]:
    """The plain-data snapshot of ``config`` (and of the files at ``paths`` the lean processes read)."""
    from vpnoffload import watchfile
    from vpnoffload.tunnel import server_running

    data = config_data(config)
    data.update({
        "paths": {"config": str(paths.config), "state": str(paths.state), "run": str(paths.run),
                  "watch_state": str(paths.watch_state), "pages": str(paths.pages)},
        "server_running": server_running(paths),
        "believed": watchfile.believed_targets(watchfile.read_state(paths.watch_state)),
    })
    if with_pages:
        pages = {}
        for svc in config.services.values():
            if svc.serves_page:
                try:
                    pages[svc.name] = (paths.pages / f"{svc.name}.html").read_bytes()
                except OSError as exc:
                    raise NotSetUpError(f"no friendly page for {svc.name} in {paths.pages} "
                                        f"(run 'vpnoffload up vps'): {exc.strerror}") from None
        data["pages"] = pages
    return data


def config_data(config: Config) -> dict[str, Any]:
    """What the lean processes read of ``config`` itself, as plain data (no files, no paths)."""
    import socket

    def key(address: object) -> str:
        # The page server names a destination as inet_ntop does (SO_ORIGINAL_DST).
        text = str(address)
        family = socket.AF_INET6 if ":" in text else socket.AF_INET
        return socket.inet_ntop(family, socket.inet_pton(family, text))

    services = []
    for svc in config.services.values():
        services.append({
            "name": svc.name, "homes": list(svc.homes), "target_port": svc.target_port,
            "check_kind": svc.check.kind, "check_path": svc.check.path, "hostname": svc.hostname,
            "fallback": svc.fallback, "serves_page": svc.serves_page, "page_over_tls": svc.page_over_tls,
            "ipv6": svc.ipv6 and svc.via == "dnat", "listen_address": key(svc.listen_address),
            "listen_port": svc.listen_port, "via": svc.via, "proto": svc.proto,
            # What visitors' packets carry on arrival: the private address on a 1:1-NAT cloud.
            "local_address": key(config.vps.local_of(svc.listen_address)),
            "tls_cert": str(svc.tls_cert) if svc.tls_cert else None, "tls_key": str(svc.tls_key) if svc.tls_key else None,
            # Kept pages only where the VPS itself keeps them: proxy services are nginx's.
            "offline_copy": list(svc.offline_copy) if svc.via == "dnat" else [], "offline_banner": svc.offline_banner,
            # The metrics read the drop counters of services with access rules (lean/accessdrops.py).
            "restricts": svc.access.restricts,
        })
    w = config.watch
    return {
        "format": FORMAT,
        "vps_address": str(config.vps.address),
        "vps_local_address": str(config.vps.bind_address),  # what the page server binds (1:1 NAT: the private one)
        "tunnel_device": config.tunnel.device,
        "watch": {"interval": float(w.interval), "timeout": float(w.timeout), "fall": w.fall, "rise": w.rise,
                  "metrics": w.metrics, "fallback_port": w.fallback_port, "retry_after": w.retry_after,
                  "offline_copy_every": float(w.offline_copy_every), "offline_copy_max_bytes": w.offline_copy_max_bytes},
        "homes": {name: str(home.address) for name, home in config.homes.items()},
        "services": services,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -I -m vpnoffload.lean.snapshot --config C [--state-dir S] [--pages]``: the blob on stdout."""
    from vpnoffload import config as cfg
    from vpnoffload.exits import run_main
    from vpnoffload.lean import options
    from vpnoffload.paths import Paths

    def body() -> int:
        given = options.parse(argv, values=("--config", "--state-dir"), flags=("--pages",), required=("--config",))
        paths = Paths.resolve(str(given["--config"]), str(given.get("--state-dir") or ""))
        paths.check()  # --state-dir on a FIFO or a device is bad input, not "the VPS end is not up"
        blob = marshal.dumps(build(cfg.load(paths.config), paths, with_pages=bool(given.get("--pages"))))
        sys.stdout.buffer.write(blob)
        return 0

    return run_main(body)


# ------------------------------------------------------------------ the lean side


def fetch(config: str, state: str | None = None, *, with_pages: bool = False) -> dict[str, Any]:
    """Run the snapshot child and return its blob. Raises the child's error kind
    (ConfigError for a bad config, NotSetUpError, ...) with its message."""
    from vpnoffload.lean import spawn

    args = ["--config", config] + (["--state-dir", state] if state else []) + (["--pages"] if with_pages else [])
    out = spawn.run(spawn.full_argv("vpnoffload.lean.snapshot", *args), "reading the config", FETCH_TIMEOUT,
                    timeout_kind=ConfigError)
    try:
        data = marshal.loads(out)
    except (EOFError, ValueError, TypeError):
        raise ConfigError("the config snapshot could not be read") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError("the config snapshot has another format (restart the watchdog after an upgrade)")
    return data


class CheckView:
    __slots__ = ("kind", "path")

    def __init__(self, kind: str, path: str) -> None:
        self.kind, self.path = kind, path


class ServiceView:
    """What the watchdog and page server read of a ``model.Service``."""

    __slots__ = ("name", "homes", "home", "backups", "target_port", "check", "hostname", "fallback", "serves_page",
                 "page_over_tls", "ipv6", "listen_address", "listen_port", "via", "tls_cert", "tls_key",
                 "offline_copy", "offline_banner", "local_address", "proto", "restricts")

    def __init__(self, d: dict[str, Any]) -> None:
        self.name, self.homes = d["name"], tuple(d["homes"])
        self.home, self.backups = self.homes[0], self.homes[1:]
        self.target_port, self.check = d["target_port"], CheckView(d["check_kind"], d["check_path"])
        self.hostname, self.fallback, self.serves_page = d["hostname"], d["fallback"], d["serves_page"]
        self.page_over_tls, self.ipv6 = d["page_over_tls"], d["ipv6"]
        self.listen_address, self.listen_port = d["listen_address"], d["listen_port"]
        self.via = d.get("via", "dnat")  # the forward check is for DNATed services only
        self.tls_cert, self.tls_key = d["tls_cert"], d["tls_key"]
        self.offline_copy, self.offline_banner = tuple(d.get("offline_copy", ())), d.get("offline_banner", True)
        self.local_address = d.get("local_address", self.listen_address)
        self.proto = d.get("proto", "tcp")  # the visitor-path check is a TCP connect: TCP services only
        self.restricts = bool(d.get("restricts", False))  # has access rules: the metrics count their drops


class HomeView:
    __slots__ = ("name", "address")

    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address


class WatchView:
    __slots__ = ("interval", "timeout", "fall", "rise", "metrics", "fallback_port", "retry_after",
                 "offline_copy_every", "offline_copy_max_bytes")
    _DEFAULTS = {"offline_copy_every": 600.0, "offline_copy_max_bytes": 20 * 1024 * 1024}
    interval: float
    timeout: float
    fall: int
    rise: int
    metrics: str | None
    fallback_port: int
    retry_after: int
    offline_copy_every: float
    offline_copy_max_bytes: int

    def __init__(self, d: dict[str, Any]) -> None:
        for name in self.__slots__:
            setattr(self, name, d[name] if name in d or name not in self._DEFAULTS else self._DEFAULTS[name])


class TunnelView:
    __slots__ = ("device",)

    def __init__(self, device: str) -> None:
        self.device = device


class ConfigView:
    """The watchdog's and page server's one config shape: the snapshot, read with ``model.Config``'s
    attribute names (``services``, ``homes``, ``watch``, ``tunnel``). Production builds it from the
    snapshot child's blob; tests from a ``model.Config`` with :meth:`of`, through the same data."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.services = {d["name"]: ServiceView(d) for d in data["services"]}
        self.homes = {name: HomeView(name, address) for name, address in data["homes"].items()}
        self.watch = WatchView(data["watch"])
        self.tunnel = TunnelView(data["tunnel_device"])
        self.vps_address: str = data["vps_address"]
        self.vps_local_address: str = data.get("vps_local_address", self.vps_address)

    @classmethod
    def of(cls, config: Config) -> ConfigView:
        """The view of a parsed config, as the snapshot child would hand it over (for tests and tools)."""
        return cls(config_data(config))

    @property
    def ipv6_services(self) -> list[ServiceView]:
        return [s for s in self.services.values() if s.ipv6]


if __name__ == "__main__":
    sys.exit(main())
