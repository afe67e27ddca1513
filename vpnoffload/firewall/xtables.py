"""The x_tables side of the legacy backend that is not python-iptables itself.

- the xtables lock (the one ``iptables -w`` takes), held from read to commit;
- which legacy tables exist in this network namespace, and keeping python-iptables
  to the ones vpnoffload uses (see :func:`keep_to_our_tables`);
- registering DNAT for both families before anything looks it up (libxt_NAT.so);
- the note for hosts whose ``iptables`` command is the nf_tables variant.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vpnoffload import proc
from vpnoffload.errors import VpnOffloadError
from vpnoffload.firewall.rules import TABLES

DEFAULT_LOCKFILE = "/run/xtables.lock"
LOCKFILE_ENV = "XTABLES_LOCKFILE"  # honoured by iptables itself, so by us too
LOCK_TIMEOUT = 10.0
IP6_TABLES_NAMES = Path("/proc/net/ip6_tables_names")
IP_TABLES_NAMES = Path("/proc/net/ip_tables_names")


def is_v6(table: str) -> bool:
    return table.endswith("6")


def base(table: str) -> str:
    """The kernel's name of our table: "filter6" is ip6tables' "filter"."""
    return table[:-1] if is_v6(table) else table


# --------------------------------------------------------------------------
# The xtables lock


def lockfile_path() -> str:
    return os.environ.get(LOCKFILE_ENV) or DEFAULT_LOCKFILE


@contextlib.contextmanager
def xtables_lock(timeout: float = LOCK_TIMEOUT, path: str | None = None) -> Iterator[None]:
    """Hold the lock every ``iptables`` command takes (flock on /run/xtables.lock).

    Waits up to ``timeout`` seconds, then raises BackendError. The lock is
    machine-wide (not per network namespace), like iptables' own.
    """
    from vpnoffload.locks import held

    path = path or lockfile_path()
    busy = f"another program has held the xtables lock {path} for {timeout:g} s (a hung iptables command?); try again"
    with held(path, timeout, lambda: busy, mode=os.O_RDONLY):
        yield


def registered_v6_tables(path: Path = IP6_TABLES_NAMES) -> set[str]:
    """Our IPv6 tables ("filter6", ...) that exist in this network namespace."""
    try:
        names = path.read_text().split()
    except OSError:  # no ip6_tables module, or IPv6 disabled: nothing of ours there
        return set()
    return {f"{name}6" for name in names}


def registered_v4_tables(path: Path = IP_TABLES_NAMES) -> set[str]:
    """The IPv4 tables that exist in this network namespace."""
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


def readable(table: str, present4: set[str], present6: set[str]) -> bool:
    """Whether ``read`` looks at ``table``: IPv6 tables and mangle only once they
    exist (reading one would register it, and an unregistered table holds
    nothing of ours); filter and nat always, as before."""
    if is_v6(table):
        return table in present6
    return base(table) != "mangle" or table in present4


def keep_to_our_tables(iptc: Any, writing: str | None = None) -> None:
    """Tell python-iptables which tables it may open when it looks up a jump target.

    It would open (and so register in this namespace) every table; we allow
    filter and nat, and mangle only where it exists already or is ``writing``
    (the home box's marks), so a VPS never gets a mangle table from us.
    """
    present = {4: registered_v4_tables(), 6: {t[:-1] for t in registered_v6_tables()}}
    for cls, version in ((iptc.Table, 4), (iptc.Table6, 6)):
        names = getattr(cls, "existing_table_names", None)
        if not isinstance(names, dict):
            continue
        for table in cls.ALL:
            ours = f"{table}6" if version == 6 else table
            allowed = table in ("filter", "nat") or (
                ours in TABLES and (table in present[version] or ours == writing))
            if not allowed:
                names[table] = False
            elif names.get(table) is False:
                del names[table]  # found out afresh on the next lookup


_nat_libraries: list[Any] = []  # loaded once, kept for the life of the process
_nat_registered = False


def register_nat_targets() -> None:
    """Make DNAT known to libxtables for both families, once per process, before
    anything else looks it up (see the module docstring).

    IPv4 loads libxt_NAT.so the normal way, which registers only IPv4's targets.
    IPv6 then gets a private copy of the library: a copy is a new library to the
    dynamic loader, so its constructor runs again (with its own static target
    structs, which libxtables links into its lists), this time under IPv6. A
    lookup that fails must never come first: libxtables remembers failed names
    for every family. Without libxt_NAT.so (iptables < 1.8.6 ships one file per
    family) nothing is needed.
    """
    global _nat_registered
    if _nat_registered:
        return
    _nat_registered = True
    from iptc import xtables as xt  # noqa: PLC0415 - imported with iptc

    libdir = xt._xtables_libdir
    libdir = libdir.decode() if isinstance(libdir, bytes) else libdir
    path = os.path.join(libdir or "", "libxt_NAT.so")
    if not os.path.exists(path):
        return
    ipv4 = xt.xtables(xt.NFPROTO_IPV4)
    _nat_libraries.append(ipv4)  # python-iptables caches these weakly; keep them
    if not ipv4.find_target("DNAT"):
        return  # DNAT is unusable here; writing a rule will say so
    _nat_libraries.append(xt.xtables(xt.NFPROTO_IPV6))
    xt.xtables._xtables_set_nfproto(xt.NFPROTO_IPV6)
    try:
        _nat_libraries.append(_load_copy(path))
    except OSError:
        pass  # IPv4 is unaffected; an IPv6 DNAT rule will fail with "cannot load the DNAT target"


def _load_copy(path: str) -> Any:
    """dlopen a private copy of the library at ``path``: from an in-memory file
    (no temp file, and unaffected by a noexec /tmp), else from a temp dir."""
    data = Path(path).read_bytes()
    try:
        fd = os.memfd_create("vpnoffload-libxt_NAT.so")
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            return ctypes.CDLL(f"/proc/self/fd/{fd}")  # mapped now; the fd may go
        except OSError:
            pass
        finally:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix="vpnoffload-xt-") as tmp:
        copy = os.path.join(tmp, "libxt_NAT.so")
        shutil.copyfile(path, copy)
        return ctypes.CDLL(copy)


# --------------------------------------------------------------------------
# Which iptables does the host's command use?


def nft_variant_note() -> str | None:
    """A warning for ``doctor``/``status`` when the host's ``iptables`` command is
    the nf_tables variant, which does not show vpnoffload's (legacy) rules.

    Runs ``iptables --version`` (which reads no table); None when the command
    is the legacy one or is missing.
    """
    exe = shutil.which("iptables")
    if exe is None:
        return None
    try:
        out = proc.run([exe, "--version"], timeout=5, check=False)
    except VpnOffloadError:
        return None
    if "nf_tables" not in out.stdout + out.stderr:
        return None
    return (
        "this host's `iptables` command is the nf_tables variant: vpnoffload's rules live in the "
        "legacy tables, so `iptables -L` does not show them; use `iptables-legacy-save` "
        "(rules of both kinds are in force, so an nf_tables rule can still drop our traffic)"
    )
