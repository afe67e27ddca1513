"""Rendering: golden files for the exact text, then modes, contents and errors.

Rewrite the golden files after an intended template change with
``UPDATE_GOLDEN=1 python -m pytest tests/unit/test_render.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import stat
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from tests.fakes import FakePki
from tests.helpers import golden
from vpnoffload.errors import ConfigError, NotSetUpError
from vpnoffload.model import Config, Home, Tunnel, Vps
from vpnoffload.pki import Pki
from vpnoffload.render.openvpn import (
    ccd_entry,
    client_profile,
    ovpn_quote,
    render_home,
    cpu_has_aes,
    render_vps,
    server_config,
)


def make_config(proto: str = "udp", port: int = 1194) -> Config:
    return Config(
        vps=Vps(address=IPv4Address("203.0.113.1")),
        tunnel=Tunnel(subnet=IPv4Network("198.51.100.0/24"), port=port, proto=proto),  # type: ignore[arg-type]
        homes={
            "home": Home("home", IPv4Address("198.51.100.10")),
            "lab-2": Home("lab-2", IPv4Address("198.51.100.11")),
        },
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def directives(text: str) -> list[str]:
    """Config lines that are directives (no comments, blanks or inline blocks)."""
    text = re.sub(r"<([a-z-]+)>.*?</\1>", "", text, flags=re.S)
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


# ----- golden ---------------------------------------------------------------------------


def test_golden_server_udp() -> None:
    text = server_config(make_config("udp"), status_path=Path("/var/lib/vpnoffload/run/status"), run_as="vpnoffload")
    golden("server-udp.conf", text)


def test_golden_server_tcp_unprivileged_off() -> None:
    golden("server-tcp.conf", server_config(make_config("tcp", 443), status_path=None, run_as=None))


def test_golden_client_udp() -> None:
    golden("home-udp.ovpn", client_profile(make_config("udp"), FakePki(), "home"))  # type: ignore[arg-type]


def test_golden_client_tcp() -> None:
    golden("home-tcp.ovpn", client_profile(make_config("tcp", 443), FakePki(), "home"))  # type: ignore[arg-type]


def test_golden_ccd() -> None:
    config = make_config()
    golden("ccd-home", ccd_entry(config, config.homes["home"]))


# ----- what the settings must be, whatever the golden files say ------------------------------


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_server_hardening(proto: str) -> None:
    lines = directives(server_config(make_config(proto), status_path=Path("/s"), run_as="vpnoffload"))
    for expected in (
        "dev vpnoffload0", "dev-type tun", "topology subnet", "server 198.51.100.0 255.255.255.0",
        f"proto {proto}", "port 1194", "dh none", "tls-crypt tls-crypt.key", "tls-version-min 1.2",
        "data-ciphers AES-256-GCM:CHACHA20-POLY1305", "allow-compression no", "remote-cert-tls client",
        "crl-verify crl.pem", "client-config-dir ccd", "ccd-exclusive", "persist-key", "persist-tun",
        "user vpnoffload", "group vpnoffload", "status /s 2", "status-version 3", "verb 3", "keepalive 2 10",
    ):
        assert expected in lines, expected
    assert ("explicit-exit-notify 1" in lines) == (proto == "udp")
    assert not [line for line in lines if line.startswith("push")]
    assert not [line for line in lines if re.match(r"(comp-lzo|compress)\b", line)]
    assert [line for line in lines if line.startswith("tun-mtu ")] and [line for line in lines if line.startswith("mssfix ")]
    for directive in ("ca", "cert", "key", "crl-verify", "tls-crypt", "client-config-dir"):
        (arg,) = [line.split()[1] for line in lines if line.split()[0] == directive]
        assert not arg.startswith("/"), f"{directive} must be relative to --cd"


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_data_path_is_ready_for_the_kernels_data_channel(proto: str) -> None:
    """OpenVPN turns DCO off for compression, --fragment, non-AEAD ciphers, non-subnet topology, tap."""
    for text in (server_config(make_config(proto), status_path=None, run_as="vpnoffload"),
                 client_profile(make_config(proto), FakePki(), "home")):  # type: ignore[arg-type]
        lines = directives(text)
        assert "allow-compression no" in lines and "dev-type tun" in lines
        assert not [line for line in lines if re.match(r"(comp-lzo|compress|fragment|cipher|ncp-ciphers|"
                                                       r"data-ciphers-fallback|auth|secret|tun-mtu-extra)(\s|$)", line)]
        (ciphers,) = [line.split()[1] for line in lines if line.startswith("data-ciphers ")]
        assert sorted(ciphers.split(":")) == ["AES-256-GCM", "CHACHA20-POLY1305"]
    assert "topology subnet" in directives(server_config(make_config(proto), status_path=None, run_as=None))


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_data_path_options_are_the_measured_ones(proto: str) -> None:
    """Each kept because bench item 6 showed it helps, each left out because it did not
    (docs/architecture.md, "The tunnel's data path")."""
    for text in (server_config(make_config(proto), status_path=None, run_as=None),
                 client_profile(make_config(proto), FakePki(), "home")):  # type: ignore[arg-type]
        lines = directives(text)
        assert "tun-mtu 1500" in lines and "mssfix 1400 mtu" in lines
        assert ("fast-io" in lines) == (proto == "udp")  # writes without polling first: UDP only
        # Measured and left out: bigger socket buffers (slower bulk towards home), a longer tun
        # queue (no drops to prevent, no gain); OpenVPN's defaults apply.
        assert not [line for line in lines if line.split()[0] in ("sndbuf", "rcvbuf", "txqueuelen", "fragment")]


def test_the_vps_cpu_orders_the_ciphers(tmp_path: Path) -> None:
    """The server takes the first of its own list that the home offers: its CPU decides."""
    def ciphers(**kw: bool) -> str:
        lines = directives(server_config(make_config(), status_path=None, run_as=None, **kw))
        return next(line for line in lines if line.startswith("data-ciphers "))

    assert ciphers() == ciphers(aes=True) == "data-ciphers AES-256-GCM:CHACHA20-POLY1305"
    assert ciphers(aes=False) == "data-ciphers CHACHA20-POLY1305:AES-256-GCM"
    cpuinfo = tmp_path / "cpuinfo"
    for text, aes in (("processor\t: 0\nflags\t\t: fpu sse2 aes avx2 vaes\n", True),
                      ("processor\t: 0\nflags\t\t: fpu sse2 avx2\n", False),
                      ("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n", False),  # a Raspberry Pi 4
                      ("processor\t: 0\nFeatures\t: fp asimd aes pmull sha1 sha2 crc32\n", True),
                      ("processor\t: 0\n", True)):
        cpuinfo.write_text(text)
        assert cpu_has_aes(cpuinfo) is aes, text
    assert cpu_has_aes(tmp_path / "missing") is True
    pki = Pki.create(tmp_path / "pki")
    for aes, first in ((False, "CHACHA20-POLY1305"), (True, "AES-256-GCM")):
        render_vps(make_config(), pki, tmp_path / f"server-{aes}", run_as=None, aes=aes)
        assert f"data-ciphers {first}:" in (tmp_path / f"server-{aes}" / "server.conf").read_text()


def test_server_without_status_or_user() -> None:
    lines = directives(server_config(make_config(), status_path=None, run_as=None))
    assert not [line for line in lines if line.split()[0] in {"user", "group", "status", "status-version"}]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_client_hardening(proto: str) -> None:
    text = client_profile(make_config(proto, 443), FakePki(), "home")  # type: ignore[arg-type]
    lines = directives(text)
    for expected in (
        "client", "nobind", f"remote 203.0.113.1 443 {proto}", "resolv-retry infinite", "remote-cert-tls server",
        "verify-x509-name server name", "tls-version-min 1.2", "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
        "allow-compression no", "auth-nocache", "route-nopull", 'pull-filter ignore "redirect-gateway"',
        "persist-tun", "dev vpnoffload0",
    ):
        assert expected in lines, expected
    assert ("explicit-exit-notify 1" in lines) == (proto == "udp")
    for block, body in (("ca", "FAKE-CA-CERT"), ("cert", "FAKE-CERT-home"), ("key", "FAKE-KEY-home"), ("tls-crypt", "00")):
        assert re.search(rf"<{block}>\n-----BEGIN [^\n]+-----\n{body}", text), block


def test_ovpn_quote() -> None:
    assert ovpn_quote("vpnoffload") == "vpnoffload"
    assert ovpn_quote("/run/vpnoffload/status") == "/run/vpnoffload/status"
    assert ovpn_quote("/a b/c") == '"/a b/c"'
    assert ovpn_quote('a"b\\c') == '"a\\"b\\\\c"'
    for bad in ("", "a\nb", "a\rb", "a\0b"):
        with pytest.raises(ConfigError, match="cannot be written into an OpenVPN config"):
            ovpn_quote(bad)


def test_status_path_with_newline_cannot_inject_directives() -> None:
    with pytest.raises(ConfigError, match="cannot be written into an OpenVPN config"):
        server_config(make_config(), status_path=Path("/x\nscript-security 3"), run_as=None)


def test_ccd_address_outside_subnet() -> None:
    config = make_config()
    with pytest.raises(ConfigError, match=r"192\.0\.2\.5 is outside 198\.51\.100\.0/24"):
        ccd_entry(config, Home("home", IPv4Address("192.0.2.5")))


def test_client_profile_errors() -> None:
    config = make_config()
    with pytest.raises(ConfigError, match="no home"):
        client_profile(config, FakePki(), "ghost")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="revoked"):
        client_profile(config, FakePki(revoked=frozenset({"home"})), "home")  # type: ignore[arg-type]
    config = Config(vps=config.vps, tunnel=config.tunnel, homes={"new": Home("new", IPv4Address("198.51.100.12"))})
    with pytest.raises(NotSetUpError, match="has no certificate yet"):
        client_profile(config, FakePki(), "new")  # type: ignore[arg-type]


# ----- writing, with a real PKI --------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki.create(tmp_path / "pki")
    pki.issue("home")
    pki.issue("lab-2")
    return pki


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_render_vps_modes_and_files(pki: Pki, tmp_path: Path, umask: int) -> None:
    out = tmp_path / "state" / "server"
    old = os.umask(umask)
    try:
        written = render_vps(make_config(), pki, out, status_path=tmp_path / "status", run_as="vpnoffload")
    finally:
        os.umask(old)
    assert {p.relative_to(out).as_posix() for p in written} == {
        "server.conf", "ca.crt", "server.crt", "server.key", "tls-crypt.key", "crl.pem", "ccd/home", "ccd/lab-2",
    }
    assert mode(out) == 0o711 and mode(out / "ccd") == 0o755
    for path in written:
        expected = 0o600 if path.name in {"server.key", "tls-crypt.key"} else 0o644
        assert mode(path) == expected, path
    assert (out / "server.key").read_text() == pki.key("server")
    assert (out / "crl.pem").read_text() == pki.crl()
    assert (out / "ccd" / "lab-2").read_text().splitlines()[-1] == "ifconfig-push 198.51.100.11 255.255.255.0"
    assert sorted(p.name for p in out.iterdir()) == sorted([".vpnoffload-files", "ca.crt", "ccd", "crl.pem",
                                                            "server.conf", "server.crt", "server.key", "tls-crypt.key"])


def test_render_vps_keeps_an_existing_dirs_mode_and_only_its_own_ccd_files(pki: Pki, tmp_path: Path) -> None:
    out = tmp_path / "server"
    (out / "ccd").mkdir(parents=True)
    out.chmod(0o1777)  # e.g. --out /tmp: not vpnoffload's to change
    (out / "ccd" / "gone").write_text("# Generated by vpnoffload (templates/ccd.j2) for home \"gone\"\n")
    (out / "ccd" / "theirs").write_text("ifconfig-push 198.51.100.99 255.255.255.0\n")
    render_vps(make_config(), pki, out)
    assert mode(out) == 0o1777
    assert sorted(p.name for p in (out / "ccd").iterdir()) == ["home", "lab-2", "theirs"]


def test_render_vps_deletes_what_it_wrote_for_a_removed_home(pki: Pki, tmp_path: Path) -> None:
    out = tmp_path / "server"
    render_vps(make_config(), pki, out)
    config = make_config()
    smaller = Config(vps=config.vps, tunnel=config.tunnel, homes={"home": config.homes["home"]})
    render_vps(smaller, pki, out)
    assert sorted(p.name for p in (out / "ccd").iterdir()) == ["home"]


def test_render_vps_set_mode_is_for_a_directory_the_caller_made(pki: Pki, tmp_path: Path) -> None:
    out = tmp_path / "scratch"
    out.mkdir(mode=0o700)
    render_vps(make_config(), pki, out, set_mode=True)
    assert mode(out) == 0o711


def test_render_vps_refuses_a_symlinked_ccd(pki: Pki, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("# Generated by vpnoffload but not here\n")
    out = tmp_path / "server"
    out.mkdir()
    (out / "ccd").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="symlink"):
        render_vps(make_config(), pki, out)
    assert [p.name for p in elsewhere.iterdir()] == ["precious"]


def test_render_vps_replaces_a_planted_symlink_instead_of_following_it(pki: Pki, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("do not touch")
    out = tmp_path / "server"
    out.mkdir()
    (out / "server.key").symlink_to(victim)
    render_vps(make_config(), pki, out)
    assert victim.read_text() == "do not touch"
    assert not (out / "server.key").is_symlink() and mode(out / "server.key") == 0o600


def test_render_vps_picks_up_revocation(pki: Pki, tmp_path: Path) -> None:
    out = tmp_path / "server"
    render_vps(make_config(), pki, out)
    before = (out / "crl.pem").read_text()
    pki.revoke("lab-2")
    render_vps(make_config(), pki, out)
    assert (out / "crl.pem").read_text() == pki.crl() != before


def test_render_home(pki: Pki, tmp_path: Path) -> None:
    path = render_home(make_config(), pki, "home", tmp_path / "profiles")
    assert path == tmp_path / "profiles" / "home.ovpn"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    text = path.read_text()
    assert pki.key("home") in text and pki.cert("home") in text and pki.ca_cert() in text
    assert pki.tls_crypt_key() in text
    ca_key_body = (pki.directory / "ca.key").read_text().split("-----")[2].strip()
    assert ca_key_body not in text
    assert pki.key("server") not in text and pki.key("lab-2") not in text
    assert text.count("PRIVATE KEY-----") == 2  # BEGIN and END of the home's own key only
