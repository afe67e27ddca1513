"""The PKI: file modes, certificate properties, CRL, index and errors (no root)."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vpnoffload.errors import ConfigError, NotSetUpError
from vpnoffload.pki import Pki, check_name, tls_crypt_key_text, write_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki.create(tmp_path / "pki", server_name="vps")
    pki.issue("home")
    return pki


@pytest.fixture
def wide_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def cert_of(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def crl_of(pki: Pki) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(pki.crl().encode())


# ----- files and modes ------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_modes_do_not_depend_on_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        pki = Pki.create(tmp_path / "pki")
        pki.issue("home")
    finally:
        os.umask(old)
    d = pki.directory
    assert mode(d) == 0o700
    for secret in ("ca.key", "keys/server.key", "keys/home.key", "tls-crypt.key", "index.json"):
        assert mode(d / secret) == 0o600, secret
    for public in ("ca.crt", "certs/server.crt", "certs/home.crt", "crl.pem"):
        assert mode(d / public) == 0o644, public
    assert mode(d / "keys") == 0o700


def test_no_temp_files_left_behind(pki: Pki) -> None:
    pki.issue("other")
    pki.revoke("other")
    leftovers = [p for p in pki.directory.rglob(".*")]
    assert leftovers == []
    assert [p.name for p in pki.directory.parent.iterdir()] == ["pki"]


def test_write_atomic_replaces_content_and_mode(tmp_path: Path, wide_umask: None) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    target.chmod(0o666)
    write_atomic(target, "new", 0o600)
    assert target.read_text() == "new" and mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_failed_create_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Pki, name: str, kind: str) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(Pki, "_issue", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        Pki.create(tmp_path / "pki")
    assert list(tmp_path.iterdir()) == []


# ----- certificates ------------------------------------------------------------------


def test_ca_properties(pki: Pki) -> None:
    ca = cert_of(pki.ca_cert())
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > dt.timedelta(days=3640)


@pytest.mark.parametrize(
    ("name", "eku"), [("vps", ExtendedKeyUsageOID.SERVER_AUTH), ("home", ExtendedKeyUsageOID.CLIENT_AUTH)]
)
def test_leaf_properties(pki: Pki, name: str, eku: x509.ObjectIdentifier) -> None:
    ca, cert = cert_of(pki.ca_cert()), cert_of(pki.cert(name))
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    assert cert.public_key().curve.name == "secp256r1"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [eku]
    now = dt.datetime.now(dt.timezone.utc)
    assert cert.not_valid_before_utc < now - dt.timedelta(minutes=30)  # backdated for clock skew
    assert dt.timedelta(days=3640) < cert.not_valid_after_utc - now
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc


def test_key_matches_certificate_and_is_not_the_ca_key(pki: Pki) -> None:
    from cryptography.hazmat.primitives import serialization

    for name in ("vps", "home"):
        key = serialization.load_pem_private_key(pki.key(name).encode(), password=None)
        assert key.public_key() == cert_of(pki.cert(name)).public_key()
        assert pki.key(name) != (pki.directory / "ca.key").read_text()


def test_tls_crypt_key_format(pki: Pki) -> None:
    text = pki.tls_crypt_key()
    body = re.search(r"-----BEGIN OpenVPN Static key V1-----\n(.*)\n-----END OpenVPN Static key V1-----\n$", text, re.S)
    assert body, text
    lines = body.group(1).split("\n")
    assert len(lines) == 16 and all(re.fullmatch(r"[0-9a-f]{32}", line) for line in lines)


def test_tls_crypt_key_text_is_exact() -> None:
    text = tls_crypt_key_text(bytes(range(256)))
    assert text.splitlines()[4] == "000102030405060708090a0b0c0d0e0f"
    assert text.splitlines()[-2] == "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"


# ----- CRL and revocation ------------------------------------------------------------


def test_new_crl_is_empty_signed_and_long_lived(pki: Pki) -> None:
    crl = crl_of(pki)
    assert len(crl) == 0
    assert crl.is_signature_valid(cert_of(pki.ca_cert()).public_key())
    assert crl.next_update_utc - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=3640)


def test_revoke_puts_serial_in_crl_and_keeps_record(pki: Pki) -> None:
    serial = cert_of(pki.cert("home")).serial_number
    number_before = crl_of(pki).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    pki.revoke("home")
    crl = crl_of(pki)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.is_signature_valid(cert_of(pki.ca_cert()).public_key())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number_before + 1
    assert pki.exists("home") and pki.info("home").revoked
    assert Pki.open(pki.directory).info("home").revoked  # persisted


def test_reissue_after_revoke_keeps_old_serial_revoked(pki: Pki) -> None:
    old = cert_of(pki.cert("home")).serial_number
    pki.revoke("home")
    pki.issue("home")
    new = cert_of(pki.cert("home")).serial_number
    crl = crl_of(pki)
    assert new != old
    assert crl.get_revoked_certificate_by_serial_number(old) is not None
    assert crl.get_revoked_certificate_by_serial_number(new) is None
    assert not pki.info("home").revoked


def test_list(pki: Pki) -> None:
    pki.issue("other")
    pki.revoke("other")
    infos = pki.list()
    assert [(i.kind, i.revoked) for i in infos] == [("ca", False), ("server", False), ("client", False), ("client", True)]
    assert [i.name for i in infos[1:]] == ["vps", "home", "other"]
    assert infos[0].name.startswith("vpnoffload CA")
    assert infos[2].serial == cert_of(pki.cert("home")).serial_number
    assert infos[2].not_after == cert_of(pki.cert("home")).not_valid_after_utc


# ----- errors ------------------------------------------------------------------------


def test_create_refuses_existing_pki_unless_forced(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="a PKI already exists"):
        Pki.create(pki.directory)
    old_ca = pki.ca_cert()
    fresh = Pki.create(pki.directory, force=True)
    assert fresh.ca_cert() != old_ca
    assert not fresh.exists("home")
    assert mode(fresh.directory) == 0o700
    assert [p.name for p in fresh.directory.parent.iterdir()] == ["pki"]


def test_create_never_overwrites_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "precious").write_text("x")
    for force in (False, True):
        with pytest.raises(ConfigError, match="refusing to overwrite"):
            Pki.create(tmp_path / "pki", force=force)
    assert (tmp_path / "pki" / "precious").read_text() == "x"


def test_create_into_empty_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir(mode=0o755)
    pki = Pki.create(tmp_path / "pki")
    assert mode(pki.directory) == 0o700 and pki.exists("server")


def test_open_missing(tmp_path: Path) -> None:
    with pytest.raises(NotSetUpError, match="no PKI in"):
        Pki.open(tmp_path / "nope")


def test_issue_existing(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        pki.issue("home")
    with pytest.raises(ConfigError, match="server"):
        pki.issue("vps")


def test_revoke_errors(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="no certificate"):
        pki.revoke("ghost")
    with pytest.raises(ConfigError, match="server"):
        pki.revoke("vps")
    pki.revoke("home")
    with pytest.raises(ConfigError, match="already revoked"):
        pki.revoke("home")


def test_unknown_name_accessors(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="no certificate for 'ghost'"):
        pki.key("ghost")
    with pytest.raises(ConfigError, match="no certificate for 'ghost'"):
        pki.cert("ghost")
    assert not pki.exists("ghost")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "-x", "a b", "x\n", "DEFAULT", "é", "x" * 65])
def test_bad_names_are_refused(pki: Pki, bad: str) -> None:
    with pytest.raises(ConfigError, match="is not a valid name"):
        check_name(bad)
    with pytest.raises(ConfigError, match="is not a valid name"):
        pki.issue(bad)
    with pytest.raises(ConfigError, match="is not a valid name"):
        pki.key(bad)
    with pytest.raises(ConfigError, match="is not a valid name"):
        Pki.create(pki.directory.parent / "other", server_name=bad)


def test_os_errors_become_vpnoffload_errors(tmp_path: Path) -> None:
    from vpnoffload.errors import VpnOffloadError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(VpnOffloadError, match="cannot create .*File exists"):
        Pki.create(blocker / "pki")
    with pytest.raises(VpnOffloadError, match="cannot write .*Not a directory"):
        write_atomic(blocker / "x", "data", 0o600)
