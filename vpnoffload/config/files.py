"""The config file on disk: read it, edit it keeping the user's comments, write the first one.

Reading refuses what is not a plain, small UTF-8 file (a FIFO, ``/dev/zero``)
and turns every way ``tomllib`` can fail (bad syntax, a 5000-digit number,
arrays nested thousands deep) into one ConfigError line. Edits go through
tomlkit so comments stay, are validated as a whole, and are written
atomically *through* a symlinked config (the link stays a link). Callers
that edit hold :func:`vpnoffload.locks.editing` (see :mod:`vpnoffload.config.edits`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from vpnoffload import fsio
from vpnoffload.config import checks
from vpnoffload.config.parse import parse
from vpnoffload.errors import ConfigError, NotSetUpError
from vpnoffload.model import Config

CONFIG_MODE = 0o644
CONFIG_DIR_MODE = 0o755


def _toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", field=source) from None
    except RecursionError:
        raise ConfigError("not valid TOML here: values are nested too deeply", field=source) from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise ConfigError(f"not valid TOML here: {str(exc)[:80]}", field=source) from None


def parse_text(text: str, source: str = "config") -> Config:
    """Parse and validate the text of a config file; ConfigError names ``source`` or the field."""
    data = _toml(text, source)
    try:
        return parse(data)
    except RecursionError:
        raise ConfigError("values are nested too deeply", field=source) from None


def read_text(path: Path) -> str:
    """The config file's text; NotSetUpError when there is none, ConfigError when it is not a small text file."""
    try:
        return fsio.read_regular(path, str(path))
    except FileNotFoundError:
        raise NotSetUpError(f"no config file at {path}; run 'vpnoffload init' first (or pass -c)") from None


def load(path: Path) -> Config:
    """Read and validate the config file; NotSetUpError when it does not exist."""
    return parse_text(read_text(path), str(path))


def prepare_edit(path: Path, change: Callable[[Any], None]) -> tuple[str, Config]:
    """Apply ``change`` to the tomlkit document of ``path`` and validate the result whole.

    Returns the new text and its Config without writing anything; raises
    ConfigError (file untouched) when the current file or the result is invalid.
    """
    import tomlkit

    text = read_text(path)
    parse_text(text, str(path))  # the file as it is must be valid before we touch it
    doc = tomlkit.parse(text)
    change(doc)
    new_text = tomlkit.dumps(doc)
    return new_text, parse_text(new_text, str(path))


def write_config(path: Path, text: str) -> None:
    """Write the config atomically, keeping its mode, and through a symlink (the link stays)."""
    target = fsio.resolve_link(path)
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = CONFIG_MODE
    fsio.make_dir(target.parent, CONFIG_DIR_MODE)
    fsio.write_atomic(target, text, mode)


def edit(path: Path, change: Callable[[Any], None]) -> Config:
    """Apply ``change`` to the tomlkit document, validate the result whole, then write it.

    The file stays untouched when the current file or the result is invalid.
    The caller holds the edit lock.
    """
    text, config = prepare_edit(path, change)
    write_config(path, text)
    return config


def initial_text(vps_address: str, subnet: str, port: int, proto: str, home: str, subnet6: str | None = None,
                 local_address: str | None = None, local_why: str | None = None) -> str:
    """The config ``init`` writes, with comments that explain each field.

    ``local_address``: the private address a 1:1-NAT cloud maps ``vps_address`` to;
    ``local_why`` says how init came to it (found on an interface, or given).
    """
    import tomlkit

    net = checks.check_subnet(subnet, "--tunnel-subnet")
    doc = tomlkit.document()
    doc.add(tomlkit.comment("vpnoffload configuration. Edit by hand or with 'vpnoffload service add'."))
    doc.add(tomlkit.nl())
    vps = tomlkit.table()
    vps.add(tomlkit.comment("The VPS's public IPv4 address; services listen here unless they name another."))
    vps.add("address", vps_address)
    if local_address is not None:
        vps.add(tomlkit.comment(f"{vps_address} is on no interface of this VPS: the provider's router maps it 1:1 to"))
        vps.add(tomlkit.comment(f"this private address ({local_why or 'given to init'}). OpenVPN binds it, DNAT and the"))
        vps.add(tomlkit.comment("friendly page match it; home boxes still dial the public address."))
        vps.add("local_address", local_address)
    doc.add("vps", vps)
    tunnel = tomlkit.table()
    tunnel.add(tomlkit.comment("The OpenVPN tunnel between the VPS (first address of the subnet) and the home boxes."))
    tunnel.add("subnet", str(net))
    if subnet6 is not None:
        tunnel.add(tomlkit.comment("IPv6 inside the tunnel, for services listening on IPv6 ([2001:db8::80]:80); each"))
        tunnel.add(tomlkit.comment("home's address6 defaults to the one with its IPv4 address's host number."))
        tunnel.add("subnet6", str(checks.check_subnet6(subnet6, "--tunnel-subnet6")))
    tunnel.add("port", port)
    tunnel.add("proto", proto)
    doc.add("tunnel", tunnel)
    homes = tomlkit.table(is_super_table=True)
    home_table = tomlkit.table()
    home_table.add("address", str(net.network_address + 2))
    homes.add(home, home_table)
    doc.add("homes", homes)
    doc.add("services", tomlkit.table(is_super_table=True))
    return tomlkit.dumps(doc)


def next_home_address(config: Config) -> IPv4Address:
    """The lowest free host address in the tunnel subnet for a new home box."""
    used = {config.tunnel.server_address} | {h.address for h in config.homes.values()}
    for host in config.tunnel.subnet.hosts():
        if host not in used:
            return host
    raise ConfigError(f"the tunnel subnet {config.tunnel.subnet} is full", field="tunnel.subnet")
