"""What ``up`` changed that cannot be read back from the system later.

Firewall chains and routing tables are recognised by their owned names, but an
old sysctl value, an address we added, or a system user we created must be
remembered so ``down`` restores exactly that and nothing else.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vpnoffload.fsio import make_dir, read_regular, write_atomic
from vpnoffload.errors import ConfigError
from vpnoffload.hometunnels import MAX_SLOTS
from vpnoffload.names import shown


@dataclass
class Record:
    sysctl: dict[str, str] = field(default_factory=dict)  # key -> value before the first up
    addresses: list[list[str]] = field(default_factory=list)  # [interface, "a.b.c.d/32"] we added
    created_user: str | None = None
    #: The host's own firewall as `up` found it (one line per firewall), and the
    #: openings vpnoffload made in it (see vpnoffload.firewall.host.plan).
    host_found: list[str] = field(default_factory=list)
    host_openings: list[dict[str, Any]] = field(default_factory=list)
    #: Home box: which of its tunnels ``up home`` set up (vpnoffload.hometunnels.Slot),
    #: so ``down home`` removes that one even if the config changed or broke since.
    slot: int | None = None

    def merge_sysctl(self, previous: dict[str, str]) -> None:
        # Keep the oldest value: a second `up` must not record our own setting as "previous".
        for key, value in previous.items():
            self.sysctl.setdefault(key, value)

    def add_address(self, interface: str, address: str) -> None:
        if [interface, address] not in self.addresses:
            self.addresses.append([interface, address])

    def empty(self) -> bool:
        return not (self.sysctl or self.addresses or self.created_user or self.host_openings or self.host_found
                    or self.slot is not None)


def load(path: Path) -> Record:
    """The record at ``path`` (an empty one when there is none).

    Read as one regular file (a FIFO or device there cannot hang ``down``) and checked
    field by field: a damaged record is one ConfigError naming the file, never a traceback
    halfway through undoing ``up``.
    """
    try:
        text = read_regular(path, str(path), limit=MAX_RECORD)
    except FileNotFoundError:
        return Record()
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ConfigError("state file is not valid JSON; restore or remove it", field=str(path)) from None
    if not isinstance(data, dict):
        raise _damaged(path, "not an object")
    return Record(
        sysctl=_strings_by_string(path, data.get("sysctl", {})),
        addresses=_address_pairs(path, data.get("addresses", [])),
        created_user=_optional_string(path, "created_user", data.get("created_user")),
        host_found=[str(line) for line in _list_of(path, "host_found", data.get("host_found", []), str)],
        host_openings=[dict(e) for e in _list_of(path, "host_openings", data.get("host_openings", []), dict)],
        slot=_slot(path, data.get("slot")),
    )


#: A record holds a few sysctls, addresses and firewall openings: kilobytes, never a megabyte.
MAX_RECORD = 1 << 20
#: A sysctl key as ``up`` records it (``net.ipv4.conf.vpnoffload0.rp_filter``).
_SYSCTL_KEY = re.compile(r"[A-Za-z0-9_.:/@+-]{1,200}")


def _damaged(path: Path, why: str) -> ConfigError:
    return ConfigError(f"state file is damaged ({why}); restore or remove it", field=str(path))


def _list_of(path: Path, key: str, value: Any, kind: type) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise _damaged(path, f"{key} is not a list of {kind.__name__}")
    return value


def _strings_by_string(path: Path, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _damaged(path, "sysctl is not a table of strings")
    if not all(_SYSCTL_KEY.fullmatch(k) and len(v) <= 4096 for k, v in value.items()):
        raise _damaged(path, "sysctl names a key or value no kernel has")
    return dict(value)


def _address_pairs(path: Path, value: Any) -> list[list[str]]:
    pairs = _list_of(path, "addresses", value, list)
    if not all(len(p) == 2 and all(isinstance(v, str) for v in p) for p in pairs):
        raise _damaged(path, "addresses are not [interface, address] pairs")
    return [list(p) for p in pairs]


def _optional_string(path: Path, key: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _damaged(path, f"{key} is not a string")
    return value


def _slot(path: Path, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_SLOTS:
        raise _damaged(path, f"bad tunnel slot {shown(value)}")
    return value


def save(path: Path, record: Record) -> None:
    if record.empty():
        path.unlink(missing_ok=True)
        return
    make_dir(path.parent, 0o700)
    write_atomic(path, json.dumps(asdict(record), indent=2) + "\n", mode=0o600)
