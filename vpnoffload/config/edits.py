"""The config and PKI edits the CLI offers, each one use case: check, then apply, undo on failure.

Every function here holds the edit lock (:func:`vpnoffload.locks.editing`) for
its whole read-modify-write, so parallel runs queue instead of losing each
other's edits or handing two homes one tunnel address. Each checks
everything it can before changing anything (the new config is validated
whole before the PKI is touched), and undoes the PKI change when writing the
config fails: a ConfigError always means nothing changed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from vpnoffload import fsio, locks
from vpnoffload.config import checks
from vpnoffload.config.files import (CONFIG_DIR_MODE, initial_text, load, next_home_address, parse_text,
                                     prepare_edit, write_config)
from vpnoffload.errors import ConfigError, VpnOffloadError
from vpnoffload.model import Config, Service
from vpnoffload.names import shown
from vpnoffload.paths import Paths


@dataclass(frozen=True)
class ServiceSpec:
    """What ``service add`` was given, as the user typed it (validated with the whole config)."""

    listen: str
    target: str
    proto: str = "tcp"
    check: str = "tcp"
    hostname: str | None = None
    fallback: str | None = None
    homes: tuple[str, ...] | None = None
    via: str = "dnat"
    #: Paths whose copy the VPS keeps and serves while home is down (``offline_copy``).
    offline_copy: tuple[str, ...] = ()
    #: The access keys, as :func:`access_values` makes them from the flags.
    access: dict[str, Any] | None = None


def access_values(allow: list[str] | None = None, deny: list[str] | None = None, allow_file: str | None = None,
                  deny_file: str | None = None, rate: str | None = None,
                  max_conns: str | None = None) -> dict[str, Any]:
    """The TOML values of the access flags that were given (``--allow`` twice: a list of two).

    A relative file path is made absolute here (the config holds absolute ones);
    ``--max-conns`` stays text unless it is digits, so the config check names it.
    """
    values: dict[str, Any] = {}
    if allow is not None:
        values["allow"] = list(allow)
    if deny is not None:
        values["deny"] = list(deny)
    for key, path in (("allow_file", allow_file), ("deny_file", deny_file)):
        if path is not None:
            values[key] = os.path.abspath(path) if path.isprintable() and path else path
    if rate is not None:
        values["rate"] = rate
    if max_conns is not None:
        # At most 10 digits become a number (a 5000-digit one would not even convert); the
        # config check refuses the rest by name, like every number written as text.
        digits = max_conns.isascii() and max_conns.isdigit() and len(max_conns) <= 10
        values["max_conns"] = int(max_conns) if digits else max_conns
    return values


@contextlib.contextmanager
def _locked(config_path: Path) -> Iterator[None]:
    with locks.editing(config_path):
        yield


def _check_config_file(path: Path) -> None:
    """A config that exists must be a regular file (or a symlink to one): never a directory or a FIFO."""
    target = fsio.resolve_link(path)
    if target.exists() and not target.is_file():
        raise ConfigError("exists and is not a regular file; refusing to replace it", field=str(path))


# ------------------------------------------------------------------ init


def init(paths: Paths, *, vps_address: str, tunnel_subnet: str, tunnel_subnet6: str | None, port: int,
         proto: str, home: str, force: bool, local_address: str | None = None,
         find_local: Callable[[IPv4Address], Any] | None = None) -> Any:
    """Write the first config and create the PKI (CA, server, the first home), or change nothing.

    ``local_address`` (``--local-address``): the private address a 1:1-NAT cloud
    maps ``vps_address`` to. Without it ``find_local`` (say
    :func:`vpnoffload.routing.nat.find_local`; None: do not look) tells where
    ``vps_address`` arrives on this host; when it is on no interface, the
    address it would arrive as is written as ``[vps] local_address``. Returns
    what ``find_local`` found (a ``routing.nat.Mapping``), or None.
    """
    from vpnoffload.pki import Pki

    checks.check_port(port, "--port")
    checks.check_proto(proto, "--proto")
    checks.check_name(home, "--home")
    public = checks.check_address(vps_address, "--vps-address")
    found, why = None, None
    if local_address is not None:
        local_address = str(checks.check_address(local_address, "--local-address"))
        why = "given to init as --local-address"
    elif find_local is not None:
        with contextlib.suppress(VpnOffloadError):  # not found (no route, no netlink): the user sets it, up says so
            found = find_local(public)
        if found is not None and found.natted:
            local_address, why = str(found.local), f"found by init on {found.device}"
    text = initial_text(vps_address, tunnel_subnet, port, proto, home, subnet6=tunnel_subnet6,
                        local_address=local_address, local_why=why)
    parse_text(text, "init")  # raises on a bad address / overlapping subnet
    _check_config_file(paths.config)
    if paths.config.exists() and not force:
        raise ConfigError(f"{paths.config} already exists; use --force to overwrite it (this also makes a new PKI)")
    Pki._check_target(paths.pki, force)  # before the config directory is made
    directory = fsio.resolve_link(paths.config).parent
    made = not directory.exists()
    fsio.make_dir(directory, CONFIG_DIR_MODE)
    try:
        with _locked(paths.config):
            with Pki.creating(paths.pki, force=force, clients=(home,)):
                write_config(paths.config, text)
    except BaseException:
        if made:  # leave no trace of a failed first init
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return found


# ------------------------------------------------------------------ services


def add_service(config_path: Path, name: str, spec: ServiceSpec) -> tuple[Config, Service]:
    """Add service ``name`` to the config (validated whole); returns the new config and the service."""
    import tomlkit

    checks.check_name(name, "service name")
    if spec.homes is not None:
        for home in spec.homes:
            checks.check_name(home, "--homes")

    def change(doc: Any) -> None:
        if "services" not in doc:
            doc.add("services", tomlkit.table(is_super_table=True))
        if name in doc["services"]:
            raise ConfigError(f"service {name!r} already exists; remove it first", field=f"services.{name}")
        table = tomlkit.table()
        table.add("listen", spec.listen)
        table.add("target", spec.target)
        table.add("proto", spec.proto)
        table.add("check", spec.check)
        if spec.hostname is not None:
            table.add("hostname", spec.hostname)
        if spec.fallback is not None:
            table.add("fallback", spec.fallback)
        if spec.homes is not None:
            table.add("homes", list(spec.homes))
        if spec.via != "dnat":
            table.add("via", spec.via)
        if spec.offline_copy:
            table.add("offline_copy", list(spec.offline_copy))
        for key, value in (spec.access or {}).items():
            table.add(key, value)
        doc["services"][name] = table

    with _locked(config_path):
        text, config = prepare_edit(config_path, change)
        write_config(config_path, text)
    return config, config.services[name]


def set_access(config_path: Path, name: str, values: dict[str, Any], clear: tuple[str, ...] = ()) -> Service:
    """Change service ``name``'s access keys: set ``values``, remove the keys in ``clear``.

    The whole config is validated before it is written; ``up vps`` applies it.
    """
    from vpnoffload.config.access import ACCESS_KEYS

    for key in clear:
        if key not in ACCESS_KEYS:
            raise ConfigError(f"{shown(key)} is not an access key (one of: {', '.join(ACCESS_KEYS)})", field="--clear")
        if key in values:
            raise ConfigError(f"{key} is both set and cleared", field="--clear")
    if not values and not clear:
        raise ConfigError("nothing to change: give --allow, --deny, --allow-file, --deny-file, --rate, "
                          "--max-conns or --clear", field="service set")

    def change(doc: Any) -> None:
        if "services" not in doc or name not in doc["services"]:
            raise ConfigError(f"no service named {shown(name)}", field="service name")
        table = doc["services"][name]
        for key in clear:
            if key in table:
                del table[key]
        for key, value in values.items():
            table[key] = value

    with _locked(config_path):
        text, config = prepare_edit(config_path, change)
        write_config(config_path, text)
    return config.services[name]


def remove_service(config_path: Path, name: str) -> None:
    """Remove service ``name`` from the config."""
    def change(doc: Any) -> None:
        if "services" not in doc or name not in doc["services"]:
            raise ConfigError(f"no service named {shown(name)}", field="service name")
        del doc["services"][name]

    with _locked(config_path):
        text, _ = prepare_edit(config_path, change)
        write_config(config_path, text)


# ------------------------------------------------------------------ homes (config + PKI)


def issue_home(paths: Paths, name: str) -> IPv4Address:
    """Add home box ``name``: a client certificate and the lowest free tunnel address; returns the address."""
    import tomlkit

    from vpnoffload.pki import Pki

    checks.check_name(name, "home name")
    with _locked(paths.config):
        config = load(paths.config)
        if name in config.homes:
            raise ConfigError(f"home box {name!r} already exists", field=f"homes.{name}")
        pki = Pki.open(paths.pki)
        if pki.exists(name):
            raise ConfigError(f"a certificate named {name!r} exists (perhaps revoked); pick another name",
                              field="home name")
        address = next_home_address(config)

        def change(doc: Any) -> None:
            table = tomlkit.table()
            table.add("address", str(address))
            doc["homes"][name] = table

        text, _ = prepare_edit(paths.config, change)
        undo = pki.snapshot()
        pki.issue(name)
        try:
            write_config(paths.config, text)
        except BaseException:
            undo()
            raise
    return address


def revoke_home(paths: Paths, name: str) -> None:
    """Revoke home box ``name``'s certificate and drop it from the config."""
    from vpnoffload.pki import Pki

    checks.check_name(name, "home name")
    with _locked(paths.config):
        config = load(paths.config)
        if config.services_of(name):
            users = ", ".join(s.name for s in config.services_of(name))
            raise ConfigError(f"home box {name!r} still serves {users}; remove or retarget those services first")
        text = None
        if name in config.homes:  # validated now: removing the only home fails before anything is revoked
            text, _ = prepare_edit(paths.config, lambda doc: doc["homes"].remove(name))
        pki = Pki.open(paths.pki)
        undo = pki.snapshot()
        pki.revoke(name)
        try:
            if text is not None:
                write_config(paths.config, text)
        except BaseException:
            undo()
            raise
