"""Validate a whole parsed TOML document and build the :class:`~vpnoffload.model.Config`.

Validation is total: :func:`parse` either returns a Config or raises
:class:`ConfigError` naming the field (``services.blog.listen``) and the
problem. The primitives it uses live in :mod:`vpnoffload.config.checks`.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from vpnoffload.config import checks
from vpnoffload.config.access import ACCESS_KEYS, parse_access
from vpnoffload.errors import ConfigError
from vpnoffload.model import MAX_SERVICES, Config, Home, Proxy, Service, Tunnel, Vps, Watch
from vpnoffload.names import shown

_KEYS: dict[str, set[str]] = {
    "": {"vps", "tunnel", "homes", "services", "watch", "proxy"},
    "vps": {"address", "interface", "local_address", "nat"},
    "tunnel": {"subnet", "subnet6", "port", "proto"},
    "home": {"address", "address6"},
    "service": {"listen", "target", "homes", "proto", "check", "hostname", "fallback", "page", "tls_cert", "tls_key", "via",
                "offline_copy", "offline_banner", *ACCESS_KEYS},
    "watch": {"interval", "timeout", "fall", "rise", "fallback_port", "retry_after", "metrics",
              "offline_copy_every", "offline_copy_max_bytes"},
    "proxy": {"server", "local_https", "local_http", "connect_timeout"},
}


def _table(data: dict[str, Any], key: str, field: str, *, required: bool = True) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError("missing section", field=field)
        return {}
    if not isinstance(value, dict):
        raise ConfigError("must be a table", field=field)
    return value


def _no_unknown(data: dict[str, Any], kind: str, field: str) -> None:
    for key in data:
        if key not in _KEYS[kind]:
            where = f"[{field}]" if field else "the top level"
            allowed = ", ".join(sorted(_KEYS[kind]))
            raise ConfigError(f"unknown key {shown(key)} in {where} (allowed: {allowed})",
                              field=checks.field_of(field, key).strip("."))


def parse(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document as a whole and build the Config."""
    _no_unknown(data, "", "")
    vps = _parse_vps(_table(data, "vps", "vps"))
    tunnel = _parse_tunnel(_table(data, "tunnel", "tunnel", required=False), vps)
    homes = _parse_homes(_table(data, "homes", "homes", required=False), tunnel)
    services = _parse_services(_table(data, "services", "services", required=False), vps, tunnel, homes)
    watch = _parse_watch(_table(data, "watch", "watch", required=False))
    proxy = _parse_proxy(_table(data, "proxy", "proxy", required=False))
    return Config(vps=vps, tunnel=tunnel, homes=homes, services=services, watch=watch, proxy=proxy)


def _parse_vps(raw: dict[str, Any]) -> Vps:
    _no_unknown(raw, "vps", "vps")
    if "address" not in raw:
        raise ConfigError("missing (the VPS's public IPv4 address)", field="vps.address")
    address = checks.check_address(raw["address"], "vps.address")
    interface = raw.get("interface")
    if interface is not None:
        checks.check_interface(interface, "vps.interface")
    local = None
    if "local_address" in raw:
        local = checks.check_address(raw["local_address"], "vps.local_address")
        if local == address:
            raise ConfigError(f"{local} is vps.address itself; leave local_address out when the VPS holds its "
                              "public address", field="vps.local_address")
    return Vps(address=address, interface=interface, local_address=local, nat=_parse_nat(raw.get("nat"), address, local))


def _parse_nat(raw: Any, address: IPv4Address, local: IPv4Address | None) -> tuple[tuple[IPv4Address, IPv4Address], ...]:
    """``nat = { "203.0.113.11" = "198.18.0.11" }``: extra public addresses the provider maps 1:1 to
    private ones of this VPS. The VPS's own address is mapped by ``local_address``, not here."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError('must be a table of "PUBLIC" = "PRIVATE" addresses', field="vps.nat")
    pairs: list[tuple[IPv4Address, IPv4Address]] = []
    for key, value in raw.items():
        field = checks.field_of("vps.nat", key)
        public = checks.check_address(key, field)
        private = checks.check_address(value, field)
        if public == address:
            raise ConfigError(f"{public} is vps.address: map it with vps.local_address instead", field=field)
        if private in (address, local) or public == private or any(private == p for _, p in pairs):
            raise ConfigError(f"{private} is already the VPS's address or another mapping's; each public "
                              "address needs its own private one", field=field)
        pairs.append((public, private))
    return tuple(pairs)


def _parse_tunnel(raw: dict[str, Any], vps: Vps) -> Tunnel:
    _no_unknown(raw, "tunnel", "tunnel")
    subnet = checks.check_subnet(raw.get("subnet", checks.DEFAULT_SUBNET), "tunnel.subnet")
    for own in (vps.address, vps.local_address, *(p for pair in vps.nat for p in pair)):
        if own is not None and own in subnet:
            raise ConfigError(f"{subnet} contains the VPS address {own}; pick another subnet", field="tunnel.subnet")
    port = checks.check_port(raw.get("port", checks.DEFAULT_PORT), "tunnel.port")
    proto = checks.check_proto(raw.get("proto", checks.DEFAULT_PROTO), "tunnel.proto")
    subnet6 = checks.check_subnet6(raw["subnet6"], "tunnel.subnet6") if "subnet6" in raw else None
    return Tunnel(subnet=subnet, port=port, proto=proto, subnet6=subnet6)  # type: ignore[arg-type]


def _parse_homes(raw: dict[str, Any], tunnel: Tunnel) -> dict[str, Home]:
    if not raw:
        raise ConfigError("at least one home box is needed", field="homes")
    homes: dict[str, Home] = {}
    seen: dict[IPv4Address, str] = {}
    for name, body in raw.items():
        field = checks.field_of("homes", name)
        checks.check_name(name, field)
        if not isinstance(body, dict):
            raise ConfigError("must be a table", field=field)
        _no_unknown(body, "home", field)
        address = checks.check_address(body.get("address", ""), f"{field}.address")
        usable = address in tunnel.subnet and address not in (tunnel.subnet.network_address, tunnel.subnet.broadcast_address)
        if not usable:
            raise ConfigError(f"{address} is not a host address in the tunnel subnet {tunnel.subnet}", field=f"{field}.address")
        if address == tunnel.server_address:
            raise ConfigError(f"{address} is the VPS's own tunnel address", field=f"{field}.address")
        if address in seen:
            raise ConfigError(f"{address} is already used by home {seen[address]!r}", field=f"{field}.address")
        seen[address] = name
        homes[name] = Home(name=name, address=address, address6=_home_address6(body, address, tunnel, field))
    seen6: dict[IPv6Address, str] = {}
    for name, home in homes.items():
        if home.address6 in seen6:
            raise ConfigError(f"{home.address6} is already used by home {seen6[home.address6]!r}",
                              field=f"homes.{name}.address6")
        if home.address6 is not None:
            seen6[home.address6] = name
    return homes


def _home_address6(body: dict[str, Any], address: IPv4Address, tunnel: Tunnel, field: str) -> IPv6Address | None:
    """The home's IPv6 tunnel address: ``address6`` if given, else the address in
    ``subnet6`` with the same host number as its IPv4 one (198.51.100.2 -> fd00:88::2)."""
    field = f"{field}.address6"
    if tunnel.subnet6 is None:
        if "address6" in body:
            raise ConfigError("an IPv6 tunnel address needs [tunnel] subnet6 (e.g. \"fd00:88::/64\")", field=field)
        return None
    if "address6" in body:
        raw = body["address6"]
        address6 = checks.ip(raw)
        if not isinstance(address6, IPv6Address):
            raise ConfigError(f"{shown(raw)} is not an IPv6 address", field=field)
    else:
        offset = int(address) - int(tunnel.subnet.network_address)
        address6 = tunnel.subnet6.network_address + offset
    if address6 not in tunnel.subnet6 or address6 == tunnel.subnet6.network_address:
        raise ConfigError(f"{address6} is not a host address in the tunnel subnet6 {tunnel.subnet6}", field=field)
    if address6 == tunnel.server_address6:
        raise ConfigError(f"{address6} is the VPS's own IPv6 tunnel address", field=field)
    return address6


def _parse_services(raw: dict[str, Any], vps: Vps, tunnel: Tunnel, homes: dict[str, Home]) -> dict[str, Service]:
    if len(raw) > MAX_SERVICES:  # the conntrack mark has room for this many
        raise ConfigError(f"at most {MAX_SERVICES} services are supported, not {len(raw)}", field="services")
    services: dict[str, Service] = {}
    listens: dict[tuple[IPv4Address, int, str], list[str]] = {}
    for name, body in raw.items():
        field = checks.field_of("services", name)
        checks.check_name(name, field)
        if not isinstance(body, dict):
            raise ConfigError("must be a table", field=field)
        _no_unknown(body, "service", field)
        svc = _parse_service(name, body, field, vps, homes)
        _check_ipv6_service(svc, tunnel, homes, field)
        if svc.listen_address in tunnel.subnet:
            raise ConfigError(f"{svc.listen_address} is inside the tunnel subnet {tunnel.subnet}", field=f"{field}.listen")
        if svc.listen_address == vps.address and svc.listen_port == tunnel.port and svc.proto == tunnel.proto:
            raise ConfigError(f"port {svc.listen_port}/{svc.proto} is the tunnel's own port", field=f"{field}.listen")
        key = (svc.listen_address, svc.listen_port, svc.proto)
        for other in listens.get(key, []):
            _shared_listen(svc, services[other], field)
        listens.setdefault(key, []).append(name)
        services[name] = svc
    return services


def _check_ipv6_service(svc: Service, tunnel: Tunnel, homes: dict[str, Home], field: str) -> None:
    """A service DNATed over IPv6 goes to its homes' IPv6 tunnel addresses: the tunnel needs a subnet6."""
    if not svc.ipv6 or svc.via != "dnat":
        return
    if tunnel.subnet6 is None:
        raise ConfigError(f"listening on IPv6 ({svc.listen}) needs an IPv6 subnet in the tunnel: "
                          "set [tunnel] subnet6, e.g. \"fd00:88::/64\"", field=f"{field}.listen")
    if svc.listen_address in tunnel.subnet6:
        raise ConfigError(f"{svc.listen_address} is inside the tunnel subnet6 {tunnel.subnet6}", field=f"{field}.listen")
    for name in svc.homes:
        if homes[name].address6 is None:  # pragma: no cover - every home has one once subnet6 is set
            raise ConfigError(f"home box {name!r} has no IPv6 tunnel address", field=f"homes.{name}.address6")


def _shared_listen(svc: Service, other: Service, field: str) -> None:
    """Only proxy services share a listen address and port: the web server tells them apart by name."""
    if svc.via != "proxy" or other.via != "proxy":
        raise ConfigError(f"{svc.listen}/{svc.proto} is already used by service {other.name!r} (only "
                          "via = 'proxy' services share one, told apart by hostname)", field=f"{field}.listen")
    if svc.hostname == other.hostname:
        raise ConfigError(f"{svc.hostname} on {svc.listen} is already routed to service {other.name!r}",
                          field=f"{field}.hostname")


def _check_proxy(svc: Service, field: str) -> None:
    """A proxy service is chosen by name on a web port the VPS's web server already serves."""
    if svc.hostname is None:
        raise ConfigError("via = 'proxy' needs a hostname (the web server routes by it)", field=f"{field}.hostname")
    if svc.proto != "tcp":
        raise ConfigError("via = 'proxy' needs proto 'tcp'", field=f"{field}.proto")
    if svc.listen_port not in (80, 443):
        raise ConfigError(f"via = 'proxy' listens on port 80 (HTTP, routed by Host) or 443 "
                          f"(HTTPS, routed by SNI), not {svc.listen_port}", field=f"{field}.listen")


def _parse_service(name: str, body: dict[str, Any], field: str, vps: Vps, homes: dict[str, Home]) -> Service:
    for required in ("listen", "target"):
        if required not in body:
            raise ConfigError("missing", field=f"{field}.{required}")
    address, port = checks.parse_listen(body["listen"], vps.address, f"{field}.listen")
    home, target_port = checks.parse_target(body["target"], homes, f"{field}.target")
    backups = ()
    if "homes" in body:
        home, backups = _parse_homes_list(body["homes"], body["target"], homes, f"{field}.homes")
    proto = checks.check_proto(body.get("proto", "tcp"), f"{field}.proto")
    check = checks.check_check(body.get("check", "tcp"), f"{field}.check")
    if check.kind == "http" and proto != "tcp":
        raise ConfigError("an http check needs proto 'tcp'", field=f"{field}.check")
    hostname = body.get("hostname")
    if hostname is not None:
        hostname = checks.check_hostname(hostname, f"{field}.hostname")
    page = checks.optional_file(body.get("page"), f"{field}.page")
    tls_cert = checks.optional_file(body.get("tls_cert"), f"{field}.tls_cert")
    tls_key = checks.optional_file(body.get("tls_key"), f"{field}.tls_key")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("tls_cert and tls_key go together", field=f"{field}.{'tls_key' if tls_key is None else 'tls_cert'}")
    # A web service gets the friendly page by default; anything else a fast reset.
    web = check.kind == "http" or port == 80 or tls_cert is not None
    fallback = body.get("fallback", "page" if web and proto == "tcp" else "reset")
    if fallback not in ("page", "reset"):
        raise ConfigError(f"{shown(fallback)} is not a fallback: use 'page' or 'reset'", field=f"{field}.fallback")
    if fallback == "page" and proto != "tcp":
        raise ConfigError("the friendly page needs proto 'tcp'", field=f"{field}.fallback")
    via = body.get("via", "dnat")
    if via not in ("dnat", "proxy"):
        raise ConfigError(f"{shown(via)} is not a path: use 'dnat' (kernel forwarding) or 'proxy' "
                          "(the VPS's web server routes by host name)", field=f"{field}.via")
    svc = Service(
        name=name, listen_address=address, listen_port=port, home=home, target_port=target_port,
        proto=proto, check=check, hostname=hostname, fallback=fallback,  # type: ignore[arg-type]
        page=page, tls_cert=tls_cert, tls_key=tls_key, backups=backups, via=via,
        offline_copy=checks.offline_copy(body.get("offline_copy", []), f"{field}.offline_copy"),
        offline_banner=_flag(body.get("offline_banner", True), f"{field}.offline_banner"),
        access=parse_access(body, field),
    )
    if via == "proxy":
        _check_proxy(svc, field)
        if svc.access.restricts:
            key = next(k for k in ACCESS_KEYS if k in body)
            raise ConfigError("access rules apply to via = 'dnat' services (a via = 'proxy' one is reached "
                              "through the VPS's web server: restrict it there)", field=f"{field}.{key}")
    if svc.offline_copy:
        _check_offline_copy(svc, field)
    return svc


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{shown(value)} must be true or false", field=field)
    return value


def _check_offline_copy(svc: Service, field: str) -> None:
    """Kept pages are HTTP: a dnat service that serves the friendly page (it answers from the copy),
    or a proxy service on port 80 (the VPS's web server keeps them; TLS passed through by SNI cannot be)."""
    if svc.via == "proxy":
        if svc.listen_port != 80:
            raise ConfigError("offline_copy on a via = 'proxy' service needs port 80: TLS routed by SNI is "
                              "passed through unread, so nothing can be kept", field=f"{field}.offline_copy")
    elif not svc.serves_page:
        raise ConfigError("offline_copy needs an HTTP(S) service with fallback = 'page' (kept pages are "
                          "served by the friendly-page server)", field=f"{field}.offline_copy")


def _parse_homes_list(value: Any, target: Any, homes: dict[str, Home], field: str) -> tuple[str, tuple[str, ...]]:
    """``homes = ["a", "b"]``: the ordered home boxes of a service; ``target`` is then a bare port."""
    if not isinstance(value, list) or not value:
        raise ConfigError("must be a non-empty list of home box names, in order of preference", field=field)
    names = [checks.check_name(v, field) for v in value]
    for name in names:
        if name not in homes:
            raise ConfigError(f"unknown home box {name!r} (known: {', '.join(homes)})", field=field)
    if len(set(names)) != len(names):
        raise ConfigError("names a home box twice", field=field)
    if ":" in str(target):
        raise ConfigError("with 'homes', give target as a bare port (the same port on every home box)",
                          field=field.replace(".homes", ".target"))
    return names[0], tuple(names[1:])



def check_files(config: Config) -> None:
    """The friendly-page template and TLS files must be readable on the VPS."""
    for svc in config.services.values():
        for key in ("page", "tls_cert", "tls_key", "allow_file", "deny_file"):
            path = getattr(svc.access if key.endswith("_file") else svc, key)
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"{path} does not exist or cannot be read", field=f"services.{svc.name}.{key}")


def _parse_watch(raw: dict[str, Any]) -> Watch:
    _no_unknown(raw, "watch", "watch")
    base = Watch()
    return Watch(
        interval=checks.number(raw.get("interval", base.interval), "watch.interval", integer=False, minimum=0.1, maximum=3600),
        timeout=checks.number(raw.get("timeout", base.timeout), "watch.timeout", integer=False, minimum=0.1, maximum=300),
        fall=checks.number(raw.get("fall", base.fall), "watch.fall", integer=True, minimum=1, maximum=100),
        rise=checks.number(raw.get("rise", base.rise), "watch.rise", integer=True, minimum=1, maximum=100),
        fallback_port=checks.fallback_port(raw.get("fallback_port", base.fallback_port)),
        retry_after=checks.number(raw.get("retry_after", base.retry_after), "watch.retry_after", integer=True, minimum=1, maximum=86400),
        metrics=checks.metrics(raw.get("metrics"), "watch.metrics"),
        offline_copy_every=checks.number(raw.get("offline_copy_every", base.offline_copy_every),
                                         "watch.offline_copy_every", integer=False, minimum=30, maximum=86400),
        offline_copy_max_bytes=checks.number(raw.get("offline_copy_max_bytes", base.offline_copy_max_bytes),
                                             "watch.offline_copy_max_bytes", integer=True, minimum=1024,
                                             maximum=1024 ** 3),
    )


def _parse_proxy(raw: dict[str, Any]) -> Proxy:
    _no_unknown(raw, "proxy", "proxy")
    base = Proxy()
    server = raw.get("server", base.server)
    if server not in ("nginx", "haproxy"):
        raise ConfigError(f"{shown(server)} is not a web server vpnoffload renders for: use 'nginx' or 'haproxy'",
                          field="proxy.server")
    return Proxy(
        server=server,
        local_https=checks.local_endpoint(raw.get("local_https", base.local_https), "proxy.local_https"),
        local_http=checks.local_endpoint(raw.get("local_http", base.local_http), "proxy.local_http"),
        connect_timeout=checks.number(raw.get("connect_timeout", base.connect_timeout), "proxy.connect_timeout",
                                integer=True, minimum=1, maximum=60),
    )
