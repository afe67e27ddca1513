"""Load, validate and edit the one TOML config file.

- :mod:`~vpnoffload.config.checks`: one value at a time (names, ports, addresses, ...);
- :mod:`~vpnoffload.config.parse`: the whole document, as one Config or one ConfigError naming the field;
- :mod:`~vpnoffload.config.files`: reading, tomlkit edits that keep comments, the file ``init`` writes;
- :mod:`~vpnoffload.config.edits`: the config and PKI edits the CLI offers (locked, checked, undone on failure).

Callers use ``from vpnoffload import config as cfg; cfg.load(path)``; the names
below are the public surface.
"""

from __future__ import annotations

from vpnoffload.config.checks import (
    DEFAULT_PORT,
    DEFAULT_PROTO,
    DEFAULT_SUBNET,
    GLOBAL_UNICAST6,
    HOSTNAME_RE,
    HTTP_PATH_RE,
    INTERFACE_RE,
    check_address,
    check_address6,
    check_check,
    check_hostname,
    check_name,
    check_port,
    check_proto,
    check_subnet,
    check_subnet6,
    parse_listen,
    parse_target,
)
from vpnoffload.config.files import edit, initial_text, load, next_home_address, parse_text, prepare_edit, write_config
from vpnoffload.config.parse import check_files, parse
from vpnoffload.fsio import write_atomic
from vpnoffload.names import NAME_RE

__all__ = [
    "DEFAULT_PORT", "DEFAULT_PROTO", "DEFAULT_SUBNET", "GLOBAL_UNICAST6", "HOSTNAME_RE", "HTTP_PATH_RE",
    "INTERFACE_RE", "NAME_RE", "check_address", "check_address6", "check_check", "check_files", "check_hostname",
    "check_name", "check_port", "check_proto", "check_subnet", "check_subnet6", "edit", "initial_text", "load",
    "next_home_address", "parse", "parse_listen", "parse_target", "parse_text", "prepare_edit", "write_atomic",
    "write_config",
]
