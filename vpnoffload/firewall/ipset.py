"""The legacy backend's address sets: ipset ``hash:net`` sets for the access-control
rules (``-m set --match-set``, see :mod:`.access`), through the ``ipset`` command.

Only sets named ``vpnoffload-*`` are created or destroyed. A set is created and
filled in full by one ``ipset restore`` before the iptables commit that first
names it, and destroyed after the commit that stops naming it (the kernel
refuses to destroy a set a rule still uses). Its content never changes in place:
a changed list is a new set with a new name (a digest of its content), so the
commit that swaps the rule to it is the one atomic step, as ``ipset swap`` would
be, and no list is ever half loaded.

``maxelem`` is the list's own size (at least ipset's default, 65536) and the hash
starts at a quarter of it, so the kernel memory a list takes follows its length
(~30 bytes a prefix) and stays bounded by it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence

from vpnoffload import proc
from vpnoffload.errors import BackendError
from vpnoffload.firewall.access import AddressSet, is_our_set, set_version

IPSET_HINT = "apt-get install ipset (or dnf install ipset)"
#: 100 000 prefixes load in ~0.3 s; a million in a few seconds.
TIMEOUT = 60.0


def available() -> bool:
    return shutil.which("ipset") is not None


def our_sets() -> set[str]:
    """Names of vpnoffload's sets in this network namespace (none without the ipset command)."""
    if not available():
        return set()
    out = proc.run(["ipset", "list", "-n"], hint=IPSET_HINT).stdout
    return {name for name in out.split() if is_our_set(name)}


def restore_script(sets: Iterable[AddressSet]) -> str:
    """``ipset restore`` input that creates and fills each of ``sets``."""
    lines: list[str] = []
    for spec in sets:
        elements = spec.elements()
        maxelem = max(65536, len(elements))
        hashsize = max(1024, 1 << max(0, (maxelem // 4 - 1).bit_length()))
        family = "inet" if spec.version == 4 else "inet6"
        lines.append(f"create {spec.name} hash:net family {family} hashsize {hashsize} maxelem {maxelem}")
        lines += [f"add {spec.name} {e}" for e in elements]
    return "\n".join(lines) + "\n"


def create(sets: Sequence[AddressSet]) -> list[str]:
    """Create and fill ``sets``; their names. Nothing is left behind when it fails."""
    if not sets:
        return []
    script = restore_script(sets)
    try:
        proc.run(["ipset", "restore"], input=script, timeout=TIMEOUT, hint=IPSET_HINT)
    except BackendError:
        destroy([s.name for s in sets], quiet=True)
        raise
    return [s.name for s in sets]


def destroy(names: Iterable[str], *, quiet: bool = False) -> None:
    """Destroy our sets named ``names`` (each must be unused by any rule)."""
    for name in names:
        if not is_our_set(name):
            raise BackendError(f"{name} is not vpnoffload's set")
        proc.run(["ipset", "destroy", name], check=not quiet, hint=IPSET_HINT)


def unused(present: set[str], wanted: Iterable[str], version: int) -> list[str]:
    """Our address sets of IP ``version`` in ``present`` that no longer appear in ``wanted``."""
    keep = set(wanted)
    return sorted(n for n in present if set_version(n) == version and n not in keep)
