"""The tunnel's small certificate authority, kept in one directory.

Everything is made with ``cryptography`` (no openssl CLI, no easy-rsa): an
ECDSA P-256 CA, one server certificate, one client certificate per home, a
tls-crypt key and a CRL. Layout of the directory (0700)::

    index.json       names, kinds, serials, revocations (the source of truth)
    ca.crt ca.key    the CA; ca.key never leaves this module
    certs/NAME.crt   server and client certificates
    keys/NAME.key    their private keys (0600)
    tls-crypt.key    OpenVPN static key V1 (0600)
    crl.pem          signed revocation list (0644: OpenVPN re-reads it after
                     dropping privileges)

Every file is written by :func:`vpnoffload.fsio.write_atomic` (temp file with
its final mode, then ``os.replace``), so a crash leaves either the old or the
new file and a private key is never readable by anyone else, not even for an
instant. Names follow the one rule of :mod:`vpnoffload.names` (the server's own
name is the only reserved one allowed). Callers that change a PKI hold the edit
lock (:func:`vpnoffload.locks.editing`); :meth:`Pki.snapshot` gives them an undo.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from vpnoffload import fsio, names
from vpnoffload.errors import ConfigError, NotSetUpError, VpnOffloadError
from vpnoffload.fsio import write_atomic

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from vpnoffload.certs import Kind

# cryptography (~15 MB, ~0.1 s to import) is imported by the methods that make, sign or parse
# certificates, not by those that only read the files: `up vps` and `doctor` open the PKI
# and read its PEM files, and the CLI's start-up stays without it.


_INDEX = "index.json"


@dataclass(frozen=True)
class CertInfo:
    name: str
    kind: Kind
    serial: int
    not_after: dt.datetime
    revoked: bool


def check_name(name: str, *, allow_reserved: bool = False) -> str:
    """Return ``name`` if it is a valid certificate/file name (:mod:`vpnoffload.names`), else ConfigError.

    ``allow_reserved`` is for looking up or creating vpnoffload's own (server) certificate.
    """
    return names.check_name(name, allow_reserved=allow_reserved)


def _check_index(index: object, where: str) -> None:
    """The index must have the shape :meth:`Pki._save_index` writes, or nothing reads it."""
    def valid() -> bool:
        if not isinstance(index, dict) or not isinstance(index.get("server_name"), str):
            return False
        certs, revoked = index.get("certs"), index.get("revoked")
        if not isinstance(certs, dict) or not isinstance(revoked, list) or type(index.get("crl_number")) is not int:
            return False
        for record in certs.values():
            if not (isinstance(record, dict) and isinstance(record.get("kind"), str)
                    and type(record.get("serial")) is int and isinstance(record.get("revoked"), bool)):
                return False
        return all(isinstance(e, dict) and type(e.get("serial")) is int and isinstance(e.get("revoked_at"), str)
                   for e in revoked)

    if not valid():
        raise NotSetUpError(f"{where} is damaged (not the index vpnoffload writes); restore it from a backup "
                            f"or run 'vpnoffload init --force' for a new PKI")


class Pki:
    """A CA in ``directory``; see the module docstring for the layout."""

    def __init__(self, directory: Path, index: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self._index = index

    # ----- creating and opening -------------------------------------------------

    @classmethod
    def create(cls, directory: Path, *, server_name: str = "server", force: bool = False,
               clients: Sequence[str] = ()) -> "Pki":
        """Make a new CA, server certificate, tls-crypt key, empty CRL and a certificate per ``clients``.

        Built in a sibling temp directory and renamed into place, so a failure
        leaves nothing half-made. An existing PKI is replaced only with ``force``
        (every certificate it issued stops working); a non-empty directory that
        is not a PKI is never touched.
        """
        with cls.creating(directory, server_name=server_name, force=force, clients=clients) as pki:
            return pki

    @classmethod
    @contextlib.contextmanager
    def creating(cls, directory: Path, *, server_name: str = "server", force: bool = False,
                 clients: Sequence[str] = ()) -> Iterator["Pki"]:
        """:meth:`create`, kept undoable until the ``with`` body ends: if the body raises, the
        new PKI is removed and the one it replaced (``force``) is put back."""
        directory = Path(directory).absolute()
        check_name(server_name, allow_reserved=True)
        for name in clients:
            check_name(name)
            if name == server_name:
                raise ConfigError(f"{name!r} is the server's name")
        cls._check_target(directory, force)
        parent = fsio.make_dir(directory.parent, 0o700)  # state/: explicit mode, whatever the umask
        try:
            staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{directory.name}.new-"))  # 0700
        except OSError as exc:
            raise VpnOffloadError(f"cannot create {directory}: {exc.strerror}") from None
        try:
            pki = cls(staging, {"version": 1, "server_name": server_name, "crl_number": 0, "certs": {}, "revoked": []})
            pki._build(server_name)
            for name in clients:
                pki._issue(name, "client")
            old = cls._swap_into_place(staging, directory)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):
                raise VpnOffloadError(f"cannot create {directory}: {exc.strerror}") from None
            raise
        try:
            yield cls.open(directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            if old is not None:
                os.rename(old, directory)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _check_target(directory: Path, force: bool) -> None:
        if directory.is_symlink():
            raise ConfigError(f"{directory} is a symlink; the PKI must be a plain directory")
        if (directory / _INDEX).exists():
            if not force:
                raise ConfigError(f"a PKI already exists in {directory} (force replaces it and every certificate)")
        elif directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise ConfigError(f"{directory} is not empty and holds no vpnoffload PKI; refusing to overwrite it")

    @staticmethod
    def _swap_into_place(staging: Path, directory: Path) -> Path | None:
        """Rename ``staging`` to ``directory``; the previous one, if any, is moved aside and returned."""
        old: Path | None = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{secrets.token_hex(4)}")
            os.rename(directory, old)
        try:
            os.rename(staging, directory)
        except OSError:
            if old is not None:
                os.rename(old, directory)  # put the previous PKI back
            raise
        return old

    def _build(self, server_name: str) -> None:
        from vpnoffload import certs

        for sub in ("certs", "keys"):
            (self.directory / sub).mkdir(mode=0o700)
        ca_key = certs.new_key()
        ca_cert = certs.ca_certificate(ca_key)
        write_atomic(self.directory / "ca.key", certs.key_pem(ca_key), 0o600)
        write_atomic(self.directory / "ca.crt", certs.cert_pem(ca_cert), 0o644)
        self._issue(server_name, "server")
        write_atomic(self.directory / "tls-crypt.key", certs.new_tls_crypt_key(), 0o600)
        self._write_crl()

    @classmethod
    def open(cls, directory: Path) -> "Pki":
        """Open an existing PKI; NotSetUpError when there is none."""
        from vpnoffload.fsio import read_regular

        directory = Path(directory).absolute()
        where = str(directory / _INDEX)
        try:
            index = json.loads(read_regular(directory / _INDEX, where, follow=False))
        except FileNotFoundError:
            raise NotSetUpError(f"no PKI in {directory}: create one first") from None
        except (ValueError, RecursionError):
            raise NotSetUpError(f"{where} is damaged (not the JSON vpnoffload writes); restore it from a "
                                f"backup or run 'vpnoffload init --force' for a new PKI") from None
        except ConfigError as exc:
            raise NotSetUpError(f"{where}: {exc.message}") from None
        _check_index(index, where)
        return cls(directory, index)

    # ----- issuing and revoking -------------------------------------------------

    @property
    def server_name(self) -> str:
        """Common name of the server certificate (clients verify it by this name)."""
        return str(self._index["server_name"])

    def issue(self, name: str) -> None:
        """Issue a client certificate for ``name`` (a home). A revoked name may be re-issued."""
        check_name(name)
        if name == self.server_name:
            raise ConfigError(f"{name!r} is the server's name")
        record = self._index["certs"].get(name)
        if record is not None and record["kind"] != "client":
            raise ConfigError(f"{name!r} is the server's name")
        if record is not None and not record["revoked"]:
            raise ConfigError(f"a certificate for {name!r} already exists (revoke it first)")
        self._issue(name, "client")

    def revoke(self, name: str) -> None:
        """Add ``name``'s certificate to the CRL and re-sign it; the record stays, marked revoked."""
        from vpnoffload import certs

        record = self._record(name)
        if record["kind"] != "client":
            raise ConfigError(f"{name!r} is the server certificate; re-create the PKI instead of revoking it")
        if record["revoked"]:
            raise ConfigError(f"the certificate of {name!r} is already revoked")
        record["revoked"] = True
        self._index["revoked"].append({"name": name, "serial": record["serial"], "revoked_at": certs.now().isoformat()})
        self._write_crl()

    def _issue(self, name: str, kind: Kind) -> None:
        from vpnoffload import certs

        ca_key, ca_cert = self._ca()
        key = certs.new_key()
        cert = certs.leaf_certificate(name, kind, ca_key, ca_cert, key)
        write_atomic(self._key_path(name), certs.key_pem(key), 0o600)
        write_atomic(self._cert_path(name), certs.cert_pem(cert), 0o644)
        self._index["certs"][name] = {"kind": kind, "serial": cert.serial_number, "revoked": False}
        self._save_index()

    def _write_crl(self) -> None:
        from vpnoffload import certs

        ca_key, ca_cert = self._ca()
        self._index["crl_number"] += 1
        revoked = [(e["serial"], dt.datetime.fromisoformat(e["revoked_at"])) for e in self._index["revoked"]]
        crl = certs.crl_pem(ca_key, ca_cert, self._index["crl_number"], revoked)
        write_atomic(self.directory / "crl.pem", crl, 0o644)
        self._save_index()

    def snapshot(self) -> Callable[[], None]:
        """An undo for the changes made after this call (issue, revoke): it puts the index,
        the CRL and the certificates and keys back exactly as they are now."""
        files = [self.directory / _INDEX, self.directory / "crl.pem",
                 *sorted((self.directory / "certs").iterdir()), *sorted((self.directory / "keys").iterdir())]
        saved = {path: (path.read_bytes(), path.stat().st_mode & 0o777) for path in files if path.is_file()}
        index = json.loads(json.dumps(self._index))

        def undo() -> None:
            for sub in ("certs", "keys"):
                for path in (self.directory / sub).iterdir():
                    if path not in saved:
                        path.unlink()
            for path, (data, mode) in saved.items():
                if not path.is_file() or path.read_bytes() != data:
                    write_atomic(path, data, mode)
            self._index = index

        return undo

    # ----- reading ---------------------------------------------------------------

    def exists(self, name: str) -> bool:
        """True when a server or client certificate (revoked or not) is recorded under ``name``."""
        return name in self._index["certs"]

    def is_revoked(self, name: str) -> bool:
        """Whether ``name``'s certificate is revoked (from the index: no certificate parsed)."""
        return bool(self._record(name)["revoked"])

    def info(self, name: str) -> CertInfo:
        from cryptography import x509

        record = self._record(name)
        cert = x509.load_pem_x509_certificate(self.cert(name).encode())
        return CertInfo(name, record["kind"], record["serial"], cert.not_valid_after_utc, record["revoked"])

    def list(self) -> list[CertInfo]:
        """The CA, the server, then clients in issue order."""
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        ca = x509.load_pem_x509_certificate(self.ca_cert().encode())
        ca_name = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        infos = [CertInfo(str(ca_name), "ca", ca.serial_number, ca.not_valid_after_utc, False)]
        return infos + [self.info(name) for name in self._index["certs"]]

    def ca_cert(self) -> str:
        return self._read(self.directory / "ca.crt")

    def cert(self, name: str) -> str:
        self._record(name)
        return self._read(self._cert_path(name))

    def key(self, name: str) -> str:
        """Private key PEM of the server or a client (never the CA's)."""
        self._record(name)
        return self._read(self._key_path(name))

    def tls_crypt_key(self) -> str:
        return self._read(self.directory / "tls-crypt.key")

    def crl(self) -> str:
        return self._read(self.directory / "crl.pem")

    # ----- internals -------------------------------------------------------------

    def _record(self, name: str) -> dict[str, Any]:
        check_name(name, allow_reserved=True)
        try:
            record: dict[str, Any] = self._index["certs"][name]
            return record
        except KeyError:
            raise ConfigError(f"no certificate for {name!r} in {self.directory}") from None

    def _cert_path(self, name: str) -> Path:
        return self.directory / "certs" / f"{check_name(name, allow_reserved=True)}.crt"

    def _key_path(self, name: str) -> Path:
        return self.directory / "keys" / f"{check_name(name, allow_reserved=True)}.key"

    def _ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = serialization.load_pem_private_key((self.directory / "ca.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise VpnOffloadError(f"{self.directory / 'ca.key'} is not an ECDSA key")
        return key, x509.load_pem_x509_certificate(self.ca_cert().encode())

    def _save_index(self) -> None:
        write_atomic(self.directory / _INDEX, json.dumps(self._index, indent=2) + "\n", 0o600)

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text()
        except OSError as exc:
            raise NotSetUpError(f"cannot read {path}: {exc.strerror}") from None


def tls_crypt_key_text(raw: bytes) -> str:
    """OpenVPN's static-key text of ``raw`` (:func:`vpnoffload.certs.tls_crypt_key_text`)."""
    from vpnoffload import certs

    return certs.tls_crypt_key_text(raw)
