"""The primitives of config validation: one value, one dotted field name.

Each function takes the raw value (from TOML or a command-line option) and
the field it came from, and returns the checked value or raises
:class:`ConfigError` naming that field. Messages repeat at most ~60
characters of a bad value (:func:`vpnoffload.names.shown`). Every pattern is
applied with ``re.fullmatch`` (``re.match`` with ``$`` lets a trailing newline
through), and numbers written as text must be plain ASCII digits
(``str.isdigit`` also says yes to '²', Arabic-Indic and full-width digits).
"""

from __future__ import annotations

import ipaddress
import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from vpnoffload import names
from vpnoffload.errors import ConfigError
from vpnoffload.model import Check, Home
from vpnoffload.names import shown

HOSTNAME_RE = re.compile(r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
HTTP_PATH_RE = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,1023}")
INTERFACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
#: Whole numbers written as text: ASCII digits only, and short enough that
#: int() never meets Python's 4300-digit limit.
DIGITS_RE = re.compile(r"[0-9]{1,10}")

DEFAULT_SUBNET = "10.88.0.0/24"
DEFAULT_PORT = 1194
DEFAULT_PROTO = "udp"

#: IANA's global unicast space: the only IPv6 addresses visitors on the internet can reach.
GLOBAL_UNICAST6 = IPv6Network("2000::/3")


def field_of(prefix: str, key: Any) -> str:
    """``prefix.key`` for messages, with a huge or odd key cut short."""
    text = key if isinstance(key, str) and len(key) <= names.SHOWN_CHARS and key.isprintable() else shown(key)
    return f"{prefix}.{text}"


def check_name(value: Any, field: str) -> str:
    """A home or service name (the one rule in :mod:`vpnoffload.names`, reserved names refused)."""
    return names.check_name(value, field)


def check_port(value: Any, field: str) -> int:
    if isinstance(value, str):
        if not DIGITS_RE.fullmatch(value):
            raise ConfigError(f"{shown(value)} is not a port number (1-65535, ASCII digits)", field=field)
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ConfigError(f"{shown(value)} is not a port number (1-65535)", field=field)
    return value


def check_proto(value: Any, field: str) -> str:
    if value not in ("tcp", "udp"):
        raise ConfigError(f"{shown(value)} is not a protocol: use 'tcp' or 'udp'", field=field)
    return str(value)


def ip(value: Any) -> IPv4Address | IPv6Address | None:
    """``value`` as an IP address of either family, or None when it is not one."""
    try:
        return ipaddress.ip_address(value) if isinstance(value, str) and value.isascii() else None
    except ValueError:
        return None


def check_address(value: Any, field: str) -> IPv4Address:
    addr = ip(value)
    if addr is None:
        raise ConfigError(f"{shown(value)} is not an IPv4 address", field=field)
    if not isinstance(addr, IPv4Address):
        raise ConfigError(f"{value!r} is an IPv6 address; an IPv4 address is needed here", field=field)
    if addr.is_loopback or addr.is_multicast or addr.is_unspecified or addr == IPv4Address("255.255.255.255"):
        raise ConfigError(f"{value} cannot be used here (loopback, multicast or unspecified)", field=field)
    return addr


def check_address6(value: Any, field: str) -> IPv6Address:
    """An IPv6 address that can face the internet (inside 2000::/3, not link-local/ULA/mapped)."""
    addr = ip(value)
    if not isinstance(addr, IPv6Address):
        raise ConfigError(f"{shown(value)} is not an IPv6 address", field=field)
    if addr.scope_id is not None:
        raise ConfigError(f"{shown(value)} has a zone (%...); give a global address without one", field=field)
    if addr not in GLOBAL_UNICAST6:
        raise ConfigError(f"{value} is not a global unicast IPv6 address (link-local, unique local, loopback, "
                          "multicast and IPv4-mapped addresses cannot be reached by visitors)", field=field)
    return addr


def _network(value: Any, field: str, wanted: str) -> IPv4Network | IPv6Network:
    if not isinstance(value, str) or not value.isascii():
        raise ConfigError(f"{shown(value)} is not {wanted}", field=field)
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(value, strict=False)
            raise ConfigError(f"{value} has host bits set; did you mean {fixed}?", field=field) from None
        raise ConfigError(f"{shown(value)} is not {wanted}", field=field) from None


def check_subnet6(value: Any, field: str) -> IPv6Network:
    """The tunnel's IPv6 subnet: /64 to /112 (OpenVPN's server-ipv6 needs room for its pool)."""
    net = _network(value, field, "an IPv6 subnet like fd00:88::/64")
    if not isinstance(net, IPv6Network):
        raise ConfigError(f"{shown(value)} is not an IPv6 subnet like fd00:88::/64", field=field)
    if not 64 <= net.prefixlen <= 112:
        raise ConfigError(f"{value} must have a prefix length between /64 and /112", field=field)
    if net.is_link_local or net.is_multicast or net.is_loopback or net.network_address.ipv4_mapped is not None:
        raise ConfigError(f"{value} cannot be a tunnel subnet (use a unique local one like fd00:88::/64)", field=field)
    return net


def check_subnet(value: Any, field: str) -> IPv4Network:
    net = _network(value, field, "a CIDR subnet like 10.88.0.0/24")
    if not isinstance(net, IPv4Network):
        raise ConfigError(f"{value} is IPv6; the tunnel subnet must be IPv4", field=field)
    if net.prefixlen > 29 or net.prefixlen < 8:
        raise ConfigError(f"{value} must have a prefix length between /8 and /29", field=field)
    return net


def check_hostname(value: Any, field: str) -> str:
    if not isinstance(value, str) or not HOSTNAME_RE.fullmatch(value.lower()):
        raise ConfigError(f"{shown(value)} is not a fully qualified host name like blog.example.org", field=field)
    return value.lower()


def check_check(value: Any, field: str) -> Check:
    if value == "tcp":
        return Check("tcp")
    if isinstance(value, str) and value.startswith("http:"):
        path = value[5:] or "/"
        if HTTP_PATH_RE.fullmatch(path):
            return Check("http", path)
    raise ConfigError(f"{shown(value)} is not a check: use 'tcp' or 'http:/path'", field=field)


def check_interface(value: Any, field: str) -> str:
    if not isinstance(value, str) or not INTERFACE_RE.fullmatch(value):
        raise ConfigError(f"{shown(value)} is not an interface name", field=field)
    return value


def number(value: Any, field: str, *, integer: bool, minimum: float, maximum: float) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not minimum <= value <= maximum:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{shown(value)} must be {kind} from {minimum:g} to {maximum:g}", field=field)
    return value


def _text(value: Any) -> str | None:
    """A listen/target value as text: TOML strings and integers only."""
    if isinstance(value, bool):
        return None
    return str(value) if isinstance(value, (int, str)) else None


def parse_listen(value: Any, vps_address: IPv4Address, field: str) -> tuple[IPv4Address | IPv6Address, int]:
    """'80', '203.0.113.10:80' or '[2001:db8::80]:80' -> (address, port); a bare
    port means the VPS address."""
    text = _text(value)
    if not text:
        raise ConfigError(f"{shown(value)} is not [ADDRESS:]PORT", field=field)
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise ConfigError(f"{shown(value)} is not [IPV6-ADDRESS]:PORT like [2001:db8::80]:80", field=field)
        return check_address6(host, field), check_port(port, field)
    if text.count(":") > 1:
        raise ConfigError(f"{shown(value)}: put an IPv6 address in brackets, like [2001:db8::80]:80", field=field)
    if ":" in text:
        host, _, port = text.rpartition(":")
        return check_address(host, field), check_port(port, field)
    return vps_address, check_port(text, field)


def parse_target(value: Any, homes: dict[str, Home], field: str) -> tuple[str, int]:
    """'8080' or 'home:8080' -> (home name, port); a bare port means the first home."""
    text = _text(value) or ""
    if ":" in text:
        name, _, port = text.rpartition(":")
        check_name(name, field)
        if name not in homes:
            known = ", ".join(homes) or "none"
            raise ConfigError(f"unknown home box {name!r} (known: {known})", field=field)
        return name, check_port(port, field)
    if not text:
        raise ConfigError(f"{shown(value)} is not [HOME:]PORT", field=field)
    return next(iter(homes)), check_port(text, field)


def optional_file(value: Any, field: str) -> Path | None:
    """An absolute path. Whether the file exists is checked by `up vps` (see
    deploy.check_files): the home box shares this config without those files."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or not value.isprintable() or len(value) > 4096:
        raise ConfigError(f"{shown(value)} must be an absolute path (printable characters)", field=field)
    return Path(value)


def local_endpoint(value: Any, field: str) -> str:
    """IPV4:PORT where the VPS's own sites move to (loopback is the usual choice)."""
    text = value if isinstance(value, str) else ""
    host, _, port = text.rpartition(":")
    if not isinstance(ip(host), IPv4Address):
        raise ConfigError(f"{shown(value)} is not IPV4:PORT like 127.0.0.1:8443", field=field)
    check_port(port, field)
    return text


def fallback_port(value: Any, field: str = "watch.fallback_port") -> int:
    port = check_port(value, field)
    if port == 65535:  # the TLS page listens on the next port
        raise ConfigError("65535 leaves no room for the TLS page on the next port", field=field)
    return port


def metrics(value: Any, field: str) -> str | None:
    """Metrics are for the VPS's own Prometheus: loopback addresses only."""
    if value is None:
        return None
    text = value if isinstance(value, str) else ""
    host, _, port = text.rpartition(":")
    address = ip(host)
    if address is None or not address.is_loopback:
        raise ConfigError(f"{shown(value)} must be a loopback ADDRESS:PORT like 127.0.0.1:9477", field=field)
    check_port(port, field)
    return text


#: Most kept pages per service (each is a file and, while serving, an open fd of the page server).
MAX_OFFLINE_PATHS = 100


def offline_copy(value: Any, field: str) -> tuple[str, ...]:
    """``offline_copy = ["/", "/about.html"]``: request targets (origin-form, as a visitor's
    browser sends them) that the VPS keeps a copy of. No fragments, no ``..`` segments, no duplicates."""
    if not isinstance(value, list) or len(value) > MAX_OFFLINE_PATHS:
        raise ConfigError(f"must be a list of at most {MAX_OFFLINE_PATHS} paths like \"/\" or \"/about.html\"",
                          field=field)
    paths: list[str] = []
    for item in value:
        if not isinstance(item, str) or not HTTP_PATH_RE.fullmatch(item) or "#" in item:
            raise ConfigError(f"{shown(item)} is not a path like /about.html", field=field)
        if ".." in item.partition("?")[0].split("/"):
            raise ConfigError(f"{shown(item)} has a '..' segment", field=field)
        if item in paths:
            raise ConfigError(f"{shown(item)} is listed twice", field=field)
        paths.append(item)
    return tuple(paths)
