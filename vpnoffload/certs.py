"""The X.509 pieces of the tunnel's PKI, made with ``cryptography``: keys, the CA,
server and client certificates, the CRL, and the tls-crypt key's text.

Pure functions of their inputs (plus the clock and randomness); where they are
kept on disk is :mod:`vpnoffload.pki`'s business.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vpnoffload.errors import VpnOffloadError

Kind = Literal["ca", "server", "client"]

#: No renewal command exists, and an expired certificate silently takes the
#: tunnel down, so everything lives ~10 years; compromise is handled by the CRL.
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=3650)  # capped at the CA's own expiry
#: OpenVPN >= 2.4 refuses *every* client once the CRL's nextUpdate has passed
#: ("CRL has expired"), which is a classic cause of sudden outages with
#: easy-rsa's 180-day default. Nothing here re-signs the CRL on a timer, so it
#: is valid as long as the CA; each revoke re-signs it anyway.
CRL_LIFETIME = dt.timedelta(days=3650)
#: The home box checks the server certificate with its own clock; backdating
#: tolerates a home clock that runs a little behind the VPS's.
BACKDATE = dt.timedelta(hours=1)

TLS_CRYPT_BYTES = 256  # 2048 bits, the size `openvpn --genkey secret` makes


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def tls_crypt_key_text(raw: bytes) -> str:
    """Format 256 random bytes as OpenVPN's "Static key V1" (16 lines of 32 hex digits)."""
    if len(raw) != TLS_CRYPT_BYTES:
        raise VpnOffloadError(f"tls-crypt key must be {TLS_CRYPT_BYTES} bytes")
    hexed = raw.hex()
    lines = [hexed[i : i + 32] for i in range(0, len(hexed), 32)]
    return (
        "#\n# 2048 bit OpenVPN static key\n#\n"
        "-----BEGIN OpenVPN Static key V1-----\n"
        + "\n".join(lines)
        + "\n-----END OpenVPN Static key V1-----\n"
    )


def new_tls_crypt_key() -> str:
    return tls_crypt_key_text(secrets.token_bytes(TLS_CRYPT_BYTES))


def ca_certificate(ca_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A self-signed CA certificate for ``ca_key``, with a random name so two PKIs never look alike."""
    at = now()
    subject = _cn(f"vpnoffload CA {secrets.token_hex(4)}")
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - BACKDATE)
        .not_valid_after(at + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def leaf_certificate(name: str, kind: Kind, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A server or client certificate for ``key``, named ``name``, signed by the CA."""
    at = now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    return (
        x509.CertificateBuilder()
        .subject_name(_cn(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - BACKDATE)
        .not_valid_after(min(at + LEAF_LIFETIME, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # digitalSignature is all an ECDSA key does in (EC)DHE TLS 1.2/1.3;
        # OpenVPN's remote-cert-tls requires the KU extension to be present.
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def crl_pem(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, number: int,
            revoked: Iterable[tuple[int, dt.datetime]]) -> bytes:
    """The signed CRL numbered ``number`` listing each (serial, revocation time)."""
    at = now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(at - BACKDATE)
        .next_update(at + CRL_LIFETIME)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _key_usage(*, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _aki(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
