"""config.checks, one primitive at a time: exactly what is accepted, up to which bound, and the
exact one-line message (with its field) for what is not. Written against the survivors of a
mutation run (docs/testing.md): a message that names the wrong value or no field, or a bound one
off, must fail here."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from vpnoffload.config import checks
from vpnoffload.errors import ConfigError
from vpnoffload.model import Check, Home

F = "x.y"  # the field every check below is asked about
HOMES = {"home": Home("home", IPv4Address("198.51.100.2")), "attic": Home("attic", IPv4Address("198.51.100.3"))}


def refused(call, *args, **kw) -> str:
    """The exact text of the ConfigError ``call`` raises (``field: message``); its field must be F."""
    with pytest.raises(ConfigError) as caught:
        call(*args, **kw)
    assert caught.value.field == F
    return str(caught.value)


def test_field_of_cuts_odd_keys_short() -> None:
    assert checks.field_of("homes", "home") == "homes.home"
    assert checks.field_of("homes", "a" * 60) == "homes." + "a" * 60
    assert checks.field_of("homes", "a" * 61) == "homes." + checks.shown("a" * 61)
    assert checks.field_of("homes", "a\nb") == "homes.'a\\nb'"
    assert checks.field_of("homes", 7) == "homes.7"
    assert checks.field_of("homes", ("a",)) == "homes.('a',)"


@pytest.mark.parametrize(("value", "port"), [(1, 1), (65535, 65535), ("1", 1), ("65535", 65535), ("0080", 80)])
def test_ports_accepted_up_to_the_bounds(value, port) -> None:
    assert checks.check_port(value, F) == port


@pytest.mark.parametrize(("value", "message"), [
    (0, "x.y: 0 is not a port number (1-65535)"),
    (65536, "x.y: 65536 is not a port number (1-65535)"),
    ("65536", "x.y: 65536 is not a port number (1-65535)"),
    (True, "x.y: True is not a port number (1-65535)"),
    (80.0, "x.y: 80.0 is not a port number (1-65535)"),
    ("8a", "x.y: '8a' is not a port number (1-65535, ASCII digits)"),
    ("²", "x.y: '²' is not a port number (1-65535, ASCII digits)"),
])
def test_ports_refused(value, message) -> None:
    assert refused(checks.check_port, value, F) == message


def test_proto() -> None:
    assert checks.check_proto("udp", F) == "udp" and checks.check_proto("tcp", F) == "tcp"
    assert refused(checks.check_proto, "TCP", F) == "x.y: 'TCP' is not a protocol: use 'tcp' or 'udp'"


def test_ip_of_either_family_or_none() -> None:
    assert checks.ip("192.0.2.1") == IPv4Address("192.0.2.1")
    assert checks.ip("2001:db8::1") == IPv6Address("2001:db8::1")
    for bad in (None, 3232235777, "192.0.2.one", "１92.0.2.1", b"192.0.2.1"):
        assert checks.ip(bad) is None, bad


@pytest.mark.parametrize(("value", "message"), [
    ("nope", "x.y: 'nope' is not an IPv4 address"),
    ("2001:db8::1", "x.y: '2001:db8::1' is an IPv6 address; an IPv4 address is needed here"),
    ("127.0.0.1", "x.y: 127.0.0.1 cannot be used here (loopback, multicast or unspecified)"),
    ("224.0.0.1", "x.y: 224.0.0.1 cannot be used here (loopback, multicast or unspecified)"),
    ("0.0.0.0", "x.y: 0.0.0.0 cannot be used here (loopback, multicast or unspecified)"),
    ("255.255.255.255", "x.y: 255.255.255.255 cannot be used here (loopback, multicast or unspecified)"),
])
def test_ipv4_addresses_refused(value, message) -> None:
    assert refused(checks.check_address, value, F) == message


def test_ipv4_address_accepted() -> None:
    assert checks.check_address("203.0.113.10", F) == IPv4Address("203.0.113.10")


@pytest.mark.parametrize(("value", "message"), [
    ("192.0.2.1", "x.y: '192.0.2.1' is not an IPv6 address"),
    ("fe80::1%eth0", "x.y: 'fe80::1%eth0' has a zone (%...); give a global address without one"),
    ("fd00::1", "x.y: fd00::1 is not a global unicast IPv6 address (link-local, unique local, loopback, "
                "multicast and IPv4-mapped addresses cannot be reached by visitors)"),
])
def test_ipv6_addresses_refused(value, message) -> None:
    assert refused(checks.check_address6, value, F) == message


@pytest.mark.parametrize(("value", "message"), [
    (24, "x.y: 24 is not a CIDR subnet like 10.88.0.0/24"),
    ("１0.0.0.0/24", "x.y: '１0.0.0.0/24' is not a CIDR subnet like 10.88.0.0/24"),
    ("10.88.0.1/24", "x.y: 10.88.0.1/24 has host bits set; did you mean 10.88.0.0/24?"),
    ("10.88.0.0/33", "x.y: '10.88.0.0/33' is not a CIDR subnet like 10.88.0.0/24"),
    ("fd00:88::/64", "x.y: fd00:88::/64 is IPv6; the tunnel subnet must be IPv4"),
    ("10.0.0.0/7", "x.y: 10.0.0.0/7 must have a prefix length between /8 and /29"),
    ("10.88.0.0/30", "x.y: 10.88.0.0/30 must have a prefix length between /8 and /29"),
])
def test_ipv4_subnets_refused(value, message) -> None:
    assert refused(checks.check_subnet, value, F) == message


@pytest.mark.parametrize("value", ["10.0.0.0/8", "10.88.0.0/29"])
def test_ipv4_subnets_accepted_at_the_bounds(value) -> None:
    assert checks.check_subnet(value, F) == IPv4Network(value)


@pytest.mark.parametrize(("value", "message"), [
    ("10.88.0.0/24", "x.y: '10.88.0.0/24' is not an IPv6 subnet like fd00:88::/64"),
    ("fd00:88::/63", "x.y: fd00:88::/63 must have a prefix length between /64 and /112"),
    ("fd00:88::/113", "x.y: fd00:88::/113 must have a prefix length between /64 and /112"),
    ("fe80::/64", "x.y: fe80::/64 cannot be a tunnel subnet (use a unique local one like fd00:88::/64)"),
    ("ff00::/64", "x.y: ff00::/64 cannot be a tunnel subnet (use a unique local one like fd00:88::/64)"),
    ("::1/128", "x.y: ::1/128 must have a prefix length between /64 and /112"),
    ("::ffff:0:0/96", "x.y: ::ffff:0:0/96 cannot be a tunnel subnet (use a unique local one like fd00:88::/64)"),
])
def test_ipv6_subnets_refused(value, message) -> None:
    assert refused(checks.check_subnet6, value, F) == message


@pytest.mark.parametrize("value", ["fd00:88::/64", "fd00:88::/112"])
def test_ipv6_subnets_accepted_at_the_bounds(value) -> None:
    assert checks.check_subnet6(value, F) == IPv6Network(value)


def test_hostname_lowercased_or_refused() -> None:
    assert checks.check_hostname("Blog.Example.ORG", F) == "blog.example.org"
    assert refused(checks.check_hostname, "blog", F) == \
        "x.y: 'blog' is not a fully qualified host name like blog.example.org"


def test_checks() -> None:
    assert checks.check_check("tcp", F) == Check("tcp")
    assert checks.check_check("http:", F) == Check("http", "/")
    assert checks.check_check("http:/health?x=1", F) == Check("http", "/health?x=1")
    for bad in ("http:health", "udp", None, "http:/a b"):
        assert refused(checks.check_check, bad, F) == \
            f"x.y: {checks.shown(bad)} is not a check: use 'tcp' or 'http:/path'"


def test_interface() -> None:
    assert checks.check_interface("eth0", F) == "eth0" and checks.check_interface("a" * 15, F) == "a" * 15
    assert refused(checks.check_interface, "a" * 16, F) == f"x.y: {checks.shown('a' * 16)} is not an interface name"


def test_numbers_within_inclusive_bounds() -> None:
    assert checks.number(1, F, integer=True, minimum=1, maximum=5) == 1
    assert checks.number(5, F, integer=True, minimum=1, maximum=5) == 5
    assert checks.number(0.5, F, integer=False, minimum=0.5, maximum=2) == 0.5
    assert checks.number(2, F, integer=False, minimum=0.5, maximum=2) == 2
    whole = {"integer": True, "minimum": 1, "maximum": 5}
    assert refused(checks.number, 6, F, **whole) == "x.y: 6 must be a whole number from 1 to 5"
    assert refused(checks.number, 0, F, **whole) == "x.y: 0 must be a whole number from 1 to 5"
    assert refused(checks.number, 1.5, F, integer=True, minimum=1, maximum=5) == \
        "x.y: 1.5 must be a whole number from 1 to 5"
    assert refused(checks.number, True, F, integer=False, minimum=0, maximum=5) == \
        "x.y: True must be a number from 0 to 5"
    assert refused(checks.number, 2.5, F, integer=False, minimum=0.5, maximum=2) == \
        "x.y: 2.5 must be a number from 0.5 to 2"


VPS = IPv4Address("203.0.113.10")


def test_listen_forms() -> None:
    assert checks.parse_listen(80, VPS, F) == (VPS, 80)
    assert checks.parse_listen("80", VPS, F) == (VPS, 80)
    assert checks.parse_listen("203.0.113.11:22", VPS, F) == (IPv4Address("203.0.113.11"), 22)
    assert checks.parse_listen("[2001:db8::80]:443", VPS, F) == (IPv6Address("2001:db8::80"), 443)


@pytest.mark.parametrize(("value", "message"), [
    (True, "x.y: True is not [ADDRESS:]PORT"),
    ("", "x.y: '' is not [ADDRESS:]PORT"),
    (1.5, "x.y: 1.5 is not [ADDRESS:]PORT"),
    ("[2001:db8::80]443", "x.y: '[2001:db8::80]443' is not [IPV6-ADDRESS]:PORT like [2001:db8::80]:80"),
    ("2001:db8::80:443", "x.y: '2001:db8::80:443': put an IPv6 address in brackets, like [2001:db8::80]:80"),
    ("203.0.113.11:0", "x.y: 0 is not a port number (1-65535)"),
    ("nope:80", "x.y: 'nope' is not an IPv4 address"),
    ("a:b:80", "x.y: 'a:b:80': put an IPv6 address in brackets, like [2001:db8::80]:80"),
    ("[2001:db8::80]:80]:90", "x.y: '80]:90' is not a port number (1-65535, ASCII digits)"),
])
def test_listen_refused(value, message) -> None:
    assert refused(checks.parse_listen, value, VPS, F) == message


def test_target_forms() -> None:
    assert checks.parse_target("8080", HOMES, F) == ("home", 8080)
    assert checks.parse_target(8080, HOMES, F) == ("home", 8080)
    assert checks.parse_target("attic:22", HOMES, F) == ("attic", 22)


@pytest.mark.parametrize(("value", "homes", "message"), [
    ("cellar:80", HOMES, "x.y: unknown home box 'cellar' (known: home, attic)"),
    ("cellar:80", {}, "x.y: unknown home box 'cellar' (known: none)"),
    ("", HOMES, "x.y: '' is not [HOME:]PORT"),
    (False, HOMES, "x.y: False is not [HOME:]PORT"),
    ("attic:0", HOMES, "x.y: 0 is not a port number (1-65535)"),
    ("0", HOMES, "x.y: 0 is not a port number (1-65535)"),
    ("Attic:80", HOMES, "x.y: 'Attic' is not a valid name: use 1-32 lowercase letters, digits, '-' or '_', "
                        "starting with a letter or digit"),
    ("home:80:90", HOMES, "x.y: 'home:80' is not a valid name: use 1-32 lowercase letters, digits, '-' or '_', "
                          "starting with a letter or digit"),
])
def test_target_refused(value, homes, message) -> None:
    assert refused(checks.parse_target, value, homes, F) == message


def test_optional_file() -> None:
    assert checks.optional_file(None, F) is None
    assert checks.optional_file("/etc/x.pem", F) == Path("/etc/x.pem")
    assert checks.optional_file("/" + "a" * 4095, F) == Path("/" + "a" * 4095)
    for bad in ("x.pem", "/a\nb", 7, "/" + "a" * 4096):
        assert refused(checks.optional_file, bad, F) == \
            f"x.y: {checks.shown(bad)} must be an absolute path (printable characters)"


def test_local_endpoint() -> None:
    assert checks.local_endpoint("127.0.0.1:8443", F) == "127.0.0.1:8443"
    for bad in ("[::1]:8443", "localhost:8443", 8443):
        assert refused(checks.local_endpoint, bad, F) == \
            f"x.y: {checks.shown(bad)} is not IPV4:PORT like 127.0.0.1:8443"
    assert refused(checks.local_endpoint, "127.0.0.1:0", F) == "x.y: 0 is not a port number (1-65535)"
    assert refused(checks.local_endpoint, "127.0.0.1:80:90", F) == \
        "x.y: '127.0.0.1:80:90' is not IPV4:PORT like 127.0.0.1:8443"


def test_fallback_port_leaves_room_for_the_tls_page() -> None:
    assert checks.fallback_port(65534, F) == 65534
    assert checks.fallback_port("8503", F) == 8503
    assert refused(checks.fallback_port, 65535, F) == "x.y: 65535 leaves no room for the TLS page on the next port"
    assert refused(checks.fallback_port, "x", F) == "x.y: 'x' is not a port number (1-65535, ASCII digits)"
    with pytest.raises(ConfigError) as caught:
        checks.fallback_port(65535)
    assert caught.value.field == "watch.fallback_port"


def test_metrics_loopback_only() -> None:
    assert checks.metrics(None, F) is None
    assert checks.metrics("127.0.0.1:9477", F) == "127.0.0.1:9477"
    assert checks.metrics("::1:9477", F) == "::1:9477"
    for bad in ("0.0.0.0:9477", "192.0.2.1:9477", 9477, "nope:9477"):
        assert refused(checks.metrics, bad, F) == \
            f"x.y: {checks.shown(bad)} must be a loopback ADDRESS:PORT like 127.0.0.1:9477"
    assert refused(checks.metrics, "127.0.0.1:0", F) == "x.y: 0 is not a port number (1-65535)"


def test_offline_copy_paths() -> None:
    assert checks.offline_copy([], F) == ()
    assert checks.offline_copy(["/", "/about.html?x=1"], F) == ("/", "/about.html?x=1")
    assert len(checks.offline_copy([f"/{i}" for i in range(checks.MAX_OFFLINE_PATHS)], F)) == 100
    too_many = [f"/{i}" for i in range(checks.MAX_OFFLINE_PATHS + 1)]
    for bad in ("/", too_many):
        assert refused(checks.offline_copy, bad, F) == \
            'x.y: must be a list of at most 100 paths like "/" or "/about.html"'
    assert refused(checks.offline_copy, ["about"], F) == "x.y: 'about' is not a path like /about.html"
    assert refused(checks.offline_copy, ["/a#b"], F) == "x.y: '/a#b' is not a path like /about.html"
    assert refused(checks.offline_copy, ["/a/../b"], F) == "x.y: '/a/../b' has a '..' segment"
    assert checks.offline_copy(["/a?x=/../b"], F) == ("/a?x=/../b",)  # '..' in the query is no segment
    assert refused(checks.offline_copy, ["/", "/"], F) == "x.y: '/' is listed twice"
