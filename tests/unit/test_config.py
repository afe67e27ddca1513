"""Config validation: every kind of bad input names its field and changes nothing."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from vpnoffload import config as cfg
from vpnoffload.errors import ConfigError, NotSetUpError

GOOD = """
[vps]
address = "203.0.113.10"

[tunnel]
subnet = "10.88.0.0/24"
port = 1194
proto = "udp"

[homes.home]
address = "10.88.0.2"

[homes.attic]
address = "10.88.0.3"

[services.blog]
listen = "80"
target = "8080"
check = "http:/health"
hostname = "blog.example.org"

[services.git]
listen = "203.0.113.11:22"
target = "attic:2222"
"""


def parse(text: str):
    return cfg.parse_text(text, "test.toml")


def test_good_config_parses_with_defaults() -> None:
    c = parse(GOOD)
    blog, git = c.services["blog"], c.services["git"]
    assert blog.listen_address == IPv4Address("203.0.113.10") and blog.listen_port == 80
    assert blog.home == "home" and blog.target_port == 8080 and blog.proto == "tcp"
    assert str(blog.check) == "http:/health" and blog.hostname == "blog.example.org"
    assert git.home == "attic" and git.listen_address == IPv4Address("203.0.113.11")
    assert c.tunnel.server_address == IPv4Address("10.88.0.1")
    assert c.dedicated_addresses() == [IPv4Address("203.0.113.11")]
    assert c.watch.fall >= 1


BAD = [
    # (replace this, with this, expected field, words in message)
    ('address = "203.0.113.10"', 'address = "203.0.113.300"', "vps.address", "not an IPv4"),
    ('address = "203.0.113.10"', 'address = "2001:db8::1"', "vps.address", "IPv6"),
    ('address = "203.0.113.10"', 'address = "127.0.0.1"', "vps.address", "loopback"),
    ('subnet = "10.88.0.0/24"', 'subnet = "10.88.0.1/24"', "tunnel.subnet", "host bits"),
    ('subnet = "10.88.0.0/24"', 'subnet = "banana"', "tunnel.subnet", "not a CIDR"),
    ('subnet = "10.88.0.0/24"', 'subnet = "203.0.113.0/24"', "tunnel.subnet", "contains the VPS address"),
    ("port = 1194", "port = 70000", "tunnel.port", "1-65535"),
    ("port = 1194", "port = 0", "tunnel.port", "1-65535"),
    ('proto = "udp"', 'proto = "sctp"', "tunnel.proto", "protocol"),
    ('[homes.home]\naddress = "10.88.0.2"', '[homes.home]\naddress = "10.99.0.2"', "homes.home.address", "tunnel subnet"),
    ('[homes.home]\naddress = "10.88.0.2"', '[homes.home]\naddress = "10.88.0.1"', "homes.home.address", "VPS's own"),
    ('[homes.attic]\naddress = "10.88.0.3"', '[homes.attic]\naddress = "10.88.0.2"', "homes.attic.address", "already used"),
    ("[homes.attic]", '[homes."../etc"]', "homes.../etc", "not a valid name"),
    ("[services.git]", '[services."a;rm -rf"]', "services.a;rm -rf", "not a valid name"),
    ('listen = "80"', 'listen = "99999"', "services.blog.listen", "1-65535"),
    ('listen = "80"', 'listen = "1194"', "services.blog.listen", "no error expected"),  # tcp vs udp tunnel: fine
    ('listen = "80"', 'listen = "10.88.0.9:80"', "services.blog.listen", "inside the tunnel subnet"),
    ('listen = "80"', 'listen = "203.0.113.11:22"', "services.git.listen", "already used"),
    ('target = "8080"', 'target = "garage:8080"', "services.blog.target", "unknown home box"),
    ('target = "8080"', 'target = "home:0"', "services.blog.target", "1-65535"),
    ('check = "http:/health"', 'check = "ping"', "services.blog.check", "not a check"),
    ('hostname = "blog.example.org"', 'hostname = "blog example"', "services.blog.hostname", "host name"),
    ('check = "http:/health"', 'check = "http:/health"\nprot = "tcp"', "services.blog.prot", "unknown key"),
    ('listen = "80"', 'listen = "80"\nproto = "udp"', "services.blog.check", "needs proto 'tcp'"),
]


@pytest.mark.parametrize("old,new,field,words", BAD, ids=[b[2] + ":" + b[3] for b in BAD])
def test_bad_input_names_field(old: str, new: str, field: str, words: str) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    if words == "no error expected":
        parse(text)
        return
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.field == field
    assert words in info.value.message
    assert "\n" not in str(info.value)


def test_tunnel_port_clash_on_same_proto() -> None:
    text = GOOD.replace('listen = "80"', 'listen = "1194"\nproto = "udp"').replace('check = "http:/health"', 'check = "tcp"')
    with pytest.raises(ConfigError, match="tunnel's own port"):
        parse(text)


def test_broken_toml_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse(GOOD + "\n[services.blog\n")
    assert info.value.field == "test.toml" and "not valid TOML" in info.value.message


def test_missing_sections() -> None:
    with pytest.raises(ConfigError, match="missing"):
        parse("[tunnel]\n")
    with pytest.raises(ConfigError, match="at least one home"):
        parse('[vps]\naddress = "203.0.113.10"\n')


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotSetUpError, match="vpnoffload init"):
        cfg.load(tmp_path / "nope.toml")


def test_edit_validates_whole_result_and_keeps_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("# my comment\n" + GOOD)
    before = path.read_bytes()

    def bad(doc) -> None:
        doc["services"]["blog"]["listen"] = "123456"

    with pytest.raises(ConfigError, match=r"services\.blog\.listen: 123456 is not a port number"):
        cfg.edit(path, bad)
    assert path.read_bytes() == before

    def good(doc) -> None:
        doc["services"]["blog"]["listen"] = "8081"

    cfg.edit(path, good)
    text = path.read_text()
    assert "# my comment" in text and 'listen = "8081"' in text
    assert not list(tmp_path.glob(".c.toml.*")), "no temp file left behind"


def test_initial_text_round_trips() -> None:
    c = cfg.parse_text(cfg.initial_text("203.0.113.10", "10.88.0.0/24", 1194, "udp", "home"))
    assert list(c.homes) == ["home"] and str(c.homes["home"].address) == "10.88.0.2"


def test_next_home_address() -> None:
    c = parse(GOOD)
    assert str(cfg.next_home_address(c)) == "10.88.0.4"
