"""The one rule for names of homes and services (and of certificates).

A name becomes a file name (``certs/NAME.crt``, ``ccd/NAME``, ``NAME.ovpn``,
``pages/NAME.html``), an OpenVPN common name (which OpenVPN also uses to find
the ccd file) and part of firewall chain comments, so it is kept to a small,
portable alphabet and may not be one of the names vpnoffload itself uses.

Every check here uses ``re.fullmatch``: ``re.match`` with ``$`` accepts a
trailing newline, which would end up inside a file name or a config line.
"""

from __future__ import annotations

import re
from typing import Any

from vpnoffload.errors import ConfigError

#: 1-32 lowercase letters, digits, '-' or '_', starting with a letter or digit.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_LENGTH = 32

#: Names that collide with a file or certificate vpnoffload writes itself:
#: ``server`` is the VPS's certificate (certs/server.crt, keys/server.key) and
#: the rendered server.conf/.crt/.key; ``ca`` the CA (ca.crt, ca.key); ``crl``,
#: ``tls-crypt`` and ``index`` the CRL, the static key and the PKI index;
#: ``default`` OpenVPN's ccd/DEFAULT (compared without case: some file systems
#: fold it).
RESERVED = frozenset({"server", "ca", "crl", "tls-crypt", "index", "default"})

#: How much of a bad value an error message repeats.
SHOWN_CHARS = 60


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages."""
    text = repr(value) if not isinstance(value, str) or len(value) <= 4 * limit else repr(value[: 4 * limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_valid(value: Any) -> bool:
    """True when ``value`` is a name a home or service may have."""
    return (isinstance(value, str) and NAME_RE.fullmatch(value) is not None
            and value.lower() not in RESERVED)


def check_name(value: Any, field: str | None = None, *, allow_reserved: bool = False) -> str:
    """Return ``value`` if it is a valid name, else raise ConfigError naming ``field``.

    ``allow_reserved`` is only for vpnoffload's own certificates (the server's).
    """
    if not isinstance(value, str) or NAME_RE.fullmatch(value) is None:
        raise ConfigError(
            f"{shown(value)} is not a valid name: use 1-{MAX_LENGTH} lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit",
            field=field,
        )
    if not allow_reserved and value.lower() in RESERVED:
        raise ConfigError(f"{value!r} is reserved (vpnoffload uses it for its own files: "
                          f"{', '.join(sorted(RESERVED))}); pick another name", field=field)
    return value
