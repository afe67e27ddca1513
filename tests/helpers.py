"""Helpers shared by test modules of every layer (no root needed to import them).

Test modules import helpers from here (or tests/nslib.py, tests/fakes.py,
tests/e2e/conftest.py for the namespace lab), never from each other.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

#: Exactly this value rewrites golden files; anything else compares.
UPDATE_GOLDEN_ENV = "UPDATE_GOLDEN"


def wait_until(what: str, check: Callable[[], tuple[bool, T]], limit: float, interval: float = 0.1) -> T:
    """Call ``check`` (-> (done, last seen)) until it is done; fail the test naming ``what`` and
    the last thing seen when ``limit`` seconds pass. Returns the last seen value.

    A wait on a condition, never a fixed sleep: fast when the machine is fast, and only
    ``limit`` (generous) says when to give up.
    """
    deadline = time.monotonic() + limit
    while True:
        done, last = check()
        if done:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {limit} s; last: {last!r}", pytrace=False)
        time.sleep(interval)


def seconds_until(what: str, check: Callable[[], tuple[bool, object]], limit: float, interval: float = 0.2) -> float:
    """Like :func:`wait_until`, but returns how many seconds it took (for a test's report)."""
    start = time.monotonic()
    wait_until(what, check, limit, interval)
    return time.monotonic() - start


#: What a visitor may get before the change a crowd waits for: no reply (a connection that
#: hung or was reset while the switch happened) or the friendly page (the state a recovery
#: leaves). Never an error page, another site, or a reply from somewhere else.
BEFORE_THE_SWITCH = r"^(0 |503 )"


def judge_crowd(results: list[list], want: str, before: str = BEFORE_THE_SWITCH, limit: float = 15) -> float:
    """The wall-clock time the first reply matching ``want`` reached a visitor, from a crowd's
    ``[started, finished, "STATUS BODY"]`` results. Fails the test when none matched, when a
    request started after it got anything else or took a second or more, or when one started
    up to then got something matching neither ``want`` nor ``before``."""
    pattern = re.compile(want, re.S)
    firsts = [done for _, done, reply in results if pattern.search(reply)]
    if not firsts:
        pytest.fail(f"no reply matching {want!r} within {limit} s: {[r[2][:40] for r in results]}", pytrace=False)
    first = min(firsts)
    earlier = [r for r in results if r[0] <= first and not pattern.search(r[2])]
    odd = [r for r in earlier if not re.match(before, r[2], re.S)]
    assert not odd, f"before the first {want!r} visitors got neither that nor {before!r}: {odd}"
    bad = [r for r in results if r[0] > first and (not pattern.search(r[2]) or r[1] - r[0] >= 1.0)]
    assert not bad, bad
    return first


#: Where the unit tests' golden files live.
GOLDEN = Path(__file__).resolve().parent / "unit" / "golden"


def golden(name: str, text: str, directory: Path = GOLDEN) -> None:
    """Compare ``text`` with the golden file ``directory/name``; ``UPDATE_GOLDEN=1`` (exactly
    that: not any non-empty value) rewrites it, to review with ``git diff``."""
    path = directory / name
    if os.environ.get(UPDATE_GOLDEN_ENV) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with {UPDATE_GOLDEN_ENV}=1 once and review the diff"
    assert text == path.read_text(), f"{path.name} differs from the golden file (UPDATE_GOLDEN=1 rewrites it)"


def self_signed(name: str, cert: Path, key: Path) -> None:
    """Write a self-signed EC certificate for ``name`` (valid for a day) and its key (PEM)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key.chmod(0o600)


# -- one home box behind several VPSes (issue 25)


def home_box_config(vps: str, subnet: str, port: int = 1194) -> str:
    """A VPS's config as a home box gets it: that VPS, its tunnel subnet, home at .2, one web service."""
    home = IPv4Network(subnet).network_address + 2
    return (f'[vps]\naddress = "{vps}"\n[tunnel]\nsubnet = "{subnet}"\nport = {port}\n'
            f'[homes.home]\naddress = "{home}"\n[services.web]\nlisten = "80"\ntarget = "8080"\n')


def write_home_box_config(path: Path, text: str) -> Path:
    """Put a config on a home box at ``path``, with ``state/home.ovpn`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    (path.parent / "state").mkdir(exist_ok=True)
    (path.parent / "state" / "home.ovpn").write_text("client\n")
    return path
