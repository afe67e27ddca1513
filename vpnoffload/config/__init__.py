"""Load, validate and edit the one TOML config file.

Validation is total: :func:`parse` either returns a :class:`~vpnoffload.model.Config`
or raises :class:`ConfigError` naming the field (``services.blog.listen``) and
the problem. The CLI edits the file with tomlkit so the user's comments stay,
and every edit is validated as a whole before it is written atomically.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
import tomllib
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from vpnoffload.errors import ConfigError, NotSetUpError
from vpnoffload.model import Check, Config, Home, Proxy, Service, Tunnel, Vps, Watch

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
HTTP_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$")
INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

DEFAULT_SUBNET = "10.88.0.0/24"
DEFAULT_PORT = 1194
DEFAULT_PROTO = "udp"

_KEYS: dict[str, set[str]] = {
    "": {"vps", "tunnel", "homes", "services", "watch", "proxy"},
    "vps": {"address", "interface"},
    "tunnel": {"subnet", "subnet6", "port", "proto"},
    "home": {"address", "address6"},
    "service": {"listen", "target", "homes", "proto", "check", "hostname", "fallback", "page", "tls_cert", "tls_key", "via"},
    "watch": {"interval", "timeout", "fall", "rise", "fallback_port", "retry_after", "metrics"},
    "proxy": {"server", "local_https", "local_http", "connect_timeout"},
}


# ---------------------------------------------------------------- primitives
# Each takes the raw value and the dotted field name, and raises ConfigError.


def check_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ConfigError(
            f"{value!r} is not a valid name: use 1-32 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit",
            field=field,
        )
    return value


def check_port(value: Any, field: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ConfigError(f"{value!r} is not a port number (1-65535)", field=field)
    return value


def check_proto(value: Any, field: str) -> str:
    if value not in ("tcp", "udp"):
        raise ConfigError(f"{value!r} is not a protocol: use 'tcp' or 'udp'", field=field)
    return value


def _ip(value: Any) -> IPv4Address | IPv6Address | None:
    """``value`` as an IP address of either family, or None when it is not one."""
    try:
        return ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        return None


def check_address(value: Any, field: str) -> IPv4Address:
    addr = _ip(value)
    if addr is None:
        raise ConfigError(f"{value!r} is not an IPv4 address", field=field)
    if not isinstance(addr, IPv4Address):
        raise ConfigError(f"{value!r} is an IPv6 address; an IPv4 address is needed here", field=field)
    if addr.is_loopback or addr.is_multicast or addr.is_unspecified or addr == IPv4Address("255.255.255.255"):
        raise ConfigError(f"{value} cannot be used here (loopback, multicast or unspecified)", field=field)
    return addr


#: IANA's global unicast space: the only IPv6 addresses visitors on the internet can reach.
GLOBAL_UNICAST6 = IPv6Network("2000::/3")


def check_address6(value: Any, field: str) -> IPv6Address:
    """An IPv6 address that can face the internet (inside 2000::/3, not link-local/ULA/mapped)."""
    addr = _ip(value)
    if not isinstance(addr, IPv6Address):
        raise ConfigError(f"{value!r} is not an IPv6 address", field=field)
    if addr.scope_id is not None:
        raise ConfigError(f"{value} has a zone (%...); give a global address without one", field=field)
    if addr not in GLOBAL_UNICAST6:
        raise ConfigError(f"{value} is not a global unicast IPv6 address (link-local, unique local, loopback, "
                          "multicast and IPv4-mapped addresses cannot be reached by visitors)", field=field)
    return addr


def check_subnet6(value: Any, field: str) -> IPv6Network:
    """The tunnel's IPv6 subnet: /64 to /112 (OpenVPN's server-ipv6 needs room for its pool)."""
    try:
        net = ipaddress.ip_network(value, strict=True) if isinstance(value, str) else None
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(value, strict=False)
            raise ConfigError(f"{value} has host bits set; did you mean {fixed}?", field=field) from None
        net = None
    if not isinstance(net, IPv6Network):
        raise ConfigError(f"{value!r} is not an IPv6 subnet like fd00:88::/64", field=field)
    if not 64 <= net.prefixlen <= 112:
        raise ConfigError(f"{value} must have a prefix length between /64 and /112", field=field)
    if net.is_link_local or net.is_multicast or net.is_loopback or net.network_address.ipv4_mapped is not None:
        raise ConfigError(f"{value} cannot be a tunnel subnet (use a unique local one like fd00:88::/64)", field=field)
    return net


def check_subnet(value: Any, field: str) -> IPv4Network:
    if not isinstance(value, str):
        raise ConfigError(f"{value!r} is not a CIDR subnet like 10.88.0.0/24", field=field)
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(value, strict=False)
            raise ConfigError(f"{value} has host bits set; did you mean {fixed}?", field=field) from None
        raise ConfigError(f"{value!r} is not a CIDR subnet like 10.88.0.0/24", field=field) from None
    if not isinstance(net, IPv4Network):
        raise ConfigError(f"{value} is IPv6; the tunnel subnet must be IPv4", field=field)
    if net.prefixlen > 29 or net.prefixlen < 8:
        raise ConfigError(f"{value} must have a prefix length between /8 and /29", field=field)
    return net


def check_hostname(value: Any, field: str) -> str:
    if not isinstance(value, str) or not HOSTNAME_RE.match(value.lower()):
        raise ConfigError(f"{value!r} is not a fully qualified host name like blog.example.org", field=field)
    return value.lower()


def check_check(value: Any, field: str) -> Check:
    if value == "tcp":
        return Check("tcp")
    if isinstance(value, str) and value.startswith("http:"):
        path = value[5:] or "/"
        if HTTP_PATH_RE.match(path):
            return Check("http", path)
    raise ConfigError(f"{value!r} is not a check: use 'tcp' or 'http:/path'", field=field)


def _number(value: Any, field: str, *, integer: bool, minimum: float, maximum: float) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not minimum <= value <= maximum:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{value!r} must be {kind} from {minimum:g} to {maximum:g}", field=field)
    return value


def parse_listen(value: Any, vps_address: IPv4Address, field: str) -> tuple[IPv4Address | IPv6Address, int]:
    """'80', '203.0.113.10:80' or '[2001:db8::80]:80' -> (address, port); a bare
    port means the VPS address."""
    text = str(value) if isinstance(value, (int, str)) else None
    if text is None or not text:
        raise ConfigError(f"{value!r} is not [ADDRESS:]PORT", field=field)
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise ConfigError(f"{value!r} is not [IPV6-ADDRESS]:PORT like [2001:db8::80]:80", field=field)
        return check_address6(host, field), check_port(port, field)
    if text.count(":") > 1:
        raise ConfigError(f"{value!r}: put an IPv6 address in brackets, like [2001:db8::80]:80", field=field)
    if ":" in text:
        host, _, port = text.rpartition(":")
        return check_address(host, field), check_port(port, field)
    return vps_address, check_port(text, field)


def parse_target(value: Any, homes: dict[str, Home], field: str) -> tuple[str, int]:
    """'8080' or 'home:8080' -> (home name, port); a bare port means the first home."""
    text = str(value) if isinstance(value, (int, str)) else ""
    if ":" in text:
        name, _, port = text.rpartition(":")
        check_name(name, field)
        if name not in homes:
            known = ", ".join(homes) or "none"
            raise ConfigError(f"unknown home box {name!r} (known: {known})", field=field)
        return name, check_port(port, field)
    if not text:
        raise ConfigError(f"{value!r} is not [HOME:]PORT", field=field)
    return next(iter(homes)), check_port(text, field)


# ---------------------------------------------------------------- the whole file


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
            raise ConfigError(f"unknown key {key!r} in {where} (allowed: {allowed})", field=f"{field}.{key}".strip("."))


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
    address = check_address(raw["address"], "vps.address")
    interface = raw.get("interface")
    if interface is not None and (not isinstance(interface, str) or not INTERFACE_RE.match(interface)):
        raise ConfigError(f"{interface!r} is not an interface name", field="vps.interface")
    return Vps(address=address, interface=interface)


def _parse_tunnel(raw: dict[str, Any], vps: Vps) -> Tunnel:
    _no_unknown(raw, "tunnel", "tunnel")
    subnet = check_subnet(raw.get("subnet", DEFAULT_SUBNET), "tunnel.subnet")
    if vps.address in subnet:
        raise ConfigError(f"{subnet} contains the VPS address {vps.address}; pick another subnet", field="tunnel.subnet")
    port = check_port(raw.get("port", DEFAULT_PORT), "tunnel.port")
    proto = check_proto(raw.get("proto", DEFAULT_PROTO), "tunnel.proto")
    subnet6 = check_subnet6(raw["subnet6"], "tunnel.subnet6") if "subnet6" in raw else None
    return Tunnel(subnet=subnet, port=port, proto=proto, subnet6=subnet6)  # type: ignore[arg-type]


def _parse_homes(raw: dict[str, Any], tunnel: Tunnel) -> dict[str, Home]:
    if not raw:
        raise ConfigError("at least one home box is needed", field="homes")
    homes: dict[str, Home] = {}
    seen: dict[IPv4Address, str] = {}
    for name, body in raw.items():
        field = f"homes.{name}"
        check_name(name, field)
        if not isinstance(body, dict):
            raise ConfigError("must be a table", field=field)
        _no_unknown(body, "home", field)
        address = check_address(body.get("address", ""), f"{field}.address")
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
        address6 = _ip(raw)
        if not isinstance(address6, IPv6Address):
            raise ConfigError(f"{raw!r} is not an IPv6 address", field=field)
    else:
        offset = int(address) - int(tunnel.subnet.network_address)
        address6 = tunnel.subnet6.network_address + offset
    if address6 not in tunnel.subnet6 or address6 == tunnel.subnet6.network_address:
        raise ConfigError(f"{address6} is not a host address in the tunnel subnet6 {tunnel.subnet6}", field=field)
    if address6 == tunnel.server_address6:
        raise ConfigError(f"{address6} is the VPS's own IPv6 tunnel address", field=field)
    return address6


def _parse_services(raw: dict[str, Any], vps: Vps, tunnel: Tunnel, homes: dict[str, Home]) -> dict[str, Service]:
    services: dict[str, Service] = {}
    listens: dict[tuple[IPv4Address, int, str], list[str]] = {}
    for name, body in raw.items():
        field = f"services.{name}"
        check_name(name, field)
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
    address, port = parse_listen(body["listen"], vps.address, f"{field}.listen")
    home, target_port = parse_target(body["target"], homes, f"{field}.target")
    backups = ()
    if "homes" in body:
        home, backups = _parse_homes_list(body["homes"], body["target"], homes, f"{field}.homes")
    proto = check_proto(body.get("proto", "tcp"), f"{field}.proto")
    check = check_check(body.get("check", "tcp"), f"{field}.check")
    if check.kind == "http" and proto != "tcp":
        raise ConfigError("an http check needs proto 'tcp'", field=f"{field}.check")
    hostname = body.get("hostname")
    if hostname is not None:
        hostname = check_hostname(hostname, f"{field}.hostname")
    page = _optional_file(body.get("page"), f"{field}.page")
    tls_cert = _optional_file(body.get("tls_cert"), f"{field}.tls_cert")
    tls_key = _optional_file(body.get("tls_key"), f"{field}.tls_key")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("tls_cert and tls_key go together", field=f"{field}.{'tls_key' if tls_key is None else 'tls_cert'}")
    # A web service gets the friendly page by default; anything else a fast reset.
    web = check.kind == "http" or port == 80 or tls_cert is not None
    fallback = body.get("fallback", "page" if web and proto == "tcp" else "reset")
    if fallback not in ("page", "reset"):
        raise ConfigError(f"{fallback!r} is not a fallback: use 'page' or 'reset'", field=f"{field}.fallback")
    if fallback == "page" and proto != "tcp":
        raise ConfigError("the friendly page needs proto 'tcp'", field=f"{field}.fallback")
    via = body.get("via", "dnat")
    if via not in ("dnat", "proxy"):
        raise ConfigError(f"{via!r} is not a path: use 'dnat' (kernel forwarding) or 'proxy' "
                          "(the VPS's web server routes by host name)", field=f"{field}.via")
    svc = Service(
        name=name, listen_address=address, listen_port=port, home=home, target_port=target_port,
        proto=proto, check=check, hostname=hostname, fallback=fallback,  # type: ignore[arg-type]
        page=page, tls_cert=tls_cert, tls_key=tls_key, backups=backups, via=via,
    )
    if via == "proxy":
        _check_proxy(svc, field)
    return svc


def _parse_homes_list(value: Any, target: Any, homes: dict[str, Home], field: str) -> tuple[str, tuple[str, ...]]:
    """``homes = ["a", "b"]``: the ordered home boxes of a service; ``target`` is then a bare port."""
    if not isinstance(value, list) or not value:
        raise ConfigError("must be a non-empty list of home box names, in order of preference", field=field)
    names = [check_name(v, field) for v in value]
    for name in names:
        if name not in homes:
            raise ConfigError(f"unknown home box {name!r} (known: {', '.join(homes)})", field=field)
    if len(set(names)) != len(names):
        raise ConfigError("names a home box twice", field=field)
    if ":" in str(target):
        raise ConfigError("with 'homes', give target as a bare port (the same port on every home box)",
                          field=field.replace(".homes", ".target"))
    return names[0], tuple(names[1:])


def _optional_file(value: Any, field: str) -> Path | None:
    """An absolute path. Whether the file exists is checked by `up vps` (see
    deploy.check_files): the home box shares this config without those files."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{value!r} must be an absolute path", field=field)
    return Path(value)


def check_files(config: Config) -> None:
    """The friendly-page template and TLS files must be readable on the VPS."""
    for svc in config.services.values():
        for key in ("page", "tls_cert", "tls_key"):
            path = getattr(svc, key)
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"{path} does not exist or cannot be read", field=f"services.{svc.name}.{key}")


def _parse_watch(raw: dict[str, Any]) -> Watch:
    _no_unknown(raw, "watch", "watch")
    base = Watch()
    return Watch(
        interval=_number(raw.get("interval", base.interval), "watch.interval", integer=False, minimum=0.1, maximum=3600),
        timeout=_number(raw.get("timeout", base.timeout), "watch.timeout", integer=False, minimum=0.1, maximum=300),
        fall=_number(raw.get("fall", base.fall), "watch.fall", integer=True, minimum=1, maximum=100),
        rise=_number(raw.get("rise", base.rise), "watch.rise", integer=True, minimum=1, maximum=100),
        fallback_port=_fallback_port(raw.get("fallback_port", base.fallback_port)),
        retry_after=_number(raw.get("retry_after", base.retry_after), "watch.retry_after", integer=True, minimum=1, maximum=86400),
        metrics=_metrics(raw.get("metrics"), "watch.metrics"),
    )


def _parse_proxy(raw: dict[str, Any]) -> Proxy:
    _no_unknown(raw, "proxy", "proxy")
    base = Proxy()
    server = raw.get("server", base.server)
    if server not in ("nginx", "haproxy"):
        raise ConfigError(f"{server!r} is not a web server vpnoffload renders for: use 'nginx' or 'haproxy'",
                          field="proxy.server")
    return Proxy(
        server=server,
        local_https=_local_endpoint(raw.get("local_https", base.local_https), "proxy.local_https"),
        local_http=_local_endpoint(raw.get("local_http", base.local_http), "proxy.local_http"),
        connect_timeout=_number(raw.get("connect_timeout", base.connect_timeout), "proxy.connect_timeout",
                                integer=True, minimum=1, maximum=60),
    )


def _local_endpoint(value: Any, field: str) -> str:
    """IPV4:PORT where the VPS's own sites move to (loopback is the usual choice)."""
    text = value if isinstance(value, str) else ""
    host, _, port = text.rpartition(":")
    try:
        ok = isinstance(ipaddress.ip_address(host), IPv4Address)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{value!r} is not IPV4:PORT like 127.0.0.1:8443", field=field)
    check_port(port, field)
    return text


def _fallback_port(value: Any) -> int:
    port = check_port(value, "watch.fallback_port")
    if port == 65535:  # the TLS page listens on the next port
        raise ConfigError("65535 leaves no room for the TLS page on the next port", field="watch.fallback_port")
    return port


def _metrics(value: Any, field: str) -> str | None:
    """Metrics are for the VPS's own Prometheus: loopback addresses only."""
    if value is None:
        return None
    text = str(value)
    host, _, port = text.rpartition(":")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"{text!r} must be a loopback ADDRESS:PORT like 127.0.0.1:9477", field=field)
    check_port(port, field)
    return text


# ---------------------------------------------------------------- files


def parse_text(text: str, source: str = "config") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", field=source) from None
    return parse(data)


def load(path: Path) -> Config:
    """Read and validate the config file; NotSetUpError when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotSetUpError(f"no config file at {path}; run 'vpnoffload init' first (or pass -c)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", field=str(path)) from None
    return parse_text(text, str(path))


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via a temp file in the same directory and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def edit(path: Path, change: Callable[[Any], None]) -> Config:
    """Apply ``change`` to the tomlkit document, validate the result whole, then write it.

    The file stays untouched when the current file or the result is invalid.
    """
    import tomlkit

    load(path)  # the file as it is must be valid before we touch it
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    change(doc)
    text = tomlkit.dumps(doc)
    config = parse_text(text, str(path))
    write_atomic(path, text, mode=path.stat().st_mode & 0o777)
    return config


def initial_text(vps_address: str, subnet: str, port: int, proto: str, home: str, subnet6: str | None = None) -> str:
    """The config ``init`` writes, with comments that explain each field."""
    import tomlkit

    net = check_subnet(subnet, "--tunnel-subnet")
    doc = tomlkit.document()
    doc.add(tomlkit.comment("vpnoffload configuration. Edit by hand or with 'vpnoffload service add'."))
    doc.add(tomlkit.nl())
    vps = tomlkit.table()
    vps.add(tomlkit.comment("The VPS's public IPv4 address; services listen here unless they name another."))
    vps.add("address", vps_address)
    doc.add("vps", vps)
    tunnel = tomlkit.table()
    tunnel.add(tomlkit.comment("The OpenVPN tunnel between the VPS (first address of the subnet) and the home boxes."))
    tunnel.add("subnet", str(net))
    if subnet6 is not None:
        tunnel.add(tomlkit.comment("IPv6 inside the tunnel, for services listening on IPv6 ([2001:db8::80]:80); each"))
        tunnel.add(tomlkit.comment("home's address6 defaults to the one with its IPv4 address's host number."))
        tunnel.add("subnet6", str(check_subnet6(subnet6, "--tunnel-subnet6")))
    tunnel.add("port", port)
    tunnel.add("proto", proto)
    doc.add("tunnel", tunnel)
    homes = tomlkit.table(is_super_table=True)
    home_table = tomlkit.table()
    home_table.add("address", str(net.network_address + 2))
    homes.add(home, home_table)
    doc.add("homes", homes)
    doc.add("services", tomlkit.table(is_super_table=True))
    return tomlkit.dumps(doc)


def next_home_address(config: Config) -> IPv4Address:
    """The lowest free host address in the tunnel subnet for a new home box."""
    used = {config.tunnel.server_address} | {h.address for h in config.homes.values()}
    for host in config.tunnel.subnet.hosts():
        if host not in used:
            return host
    raise ConfigError(f"the tunnel subnet {config.tunnel.subnet} is full", field="tunnel.subnet")
