"""What ``up`` changed that cannot be read back from the system later.

Firewall chains and routing tables are recognised by their owned names, but an
old sysctl value, an address we added, or a system user we created must be
remembered so ``down`` restores exactly that and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vpnoffload.fsio import make_dir, write_atomic
from vpnoffload.errors import ConfigError
from vpnoffload.hometunnels import MAX_SLOTS


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
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Record()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read state file: {exc}", field=str(path)) from None
    return Record(
        sysctl=dict(data.get("sysctl", {})),
        addresses=[list(a) for a in data.get("addresses", [])],
        created_user=data.get("created_user"),
        host_found=[str(line) for line in data.get("host_found", [])],
        host_openings=[dict(e) for e in data.get("host_openings", [])],
        slot=_slot(data.get("slot")),
    )


def _slot(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_SLOTS:
        raise ConfigError(f"state file: bad tunnel slot {value!r}", field="slot")
    return value


def save(path: Path, record: Record) -> None:
    if record.empty():
        path.unlink(missing_ok=True)
        return
    make_dir(path.parent, 0o700)
    write_atomic(path, json.dumps(asdict(record), indent=2) + "\n", mode=0o600)
