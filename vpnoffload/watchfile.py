"""The watchdog's state file: what it publishes for ``status`` and ``up vps``, writer and readers.

One JSON file (``run/watch.json``) holds the watchdog's pid and its view of
every service. The watchdog writes it; ``deploy``, ``status`` and the config
snapshot child read it. All of them import only this module (stdlib ``os``), so
the file's format lives in one place below both sides, and nobody imports the
watchdog's loop to read it. Writing needs no ``json`` import (``dumps`` below):
the watchdog process stays without ``json`` and ``re`` (~1 MB resident).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the watchdog writes this file)
if TYPE_CHECKING:
    from vpnoffload.paths import Paths

_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


def dumps(value: object) -> str:
    """JSON text of dicts (str keys), lists, tuples, str, int, float, bool and None.

    Raises TypeError (or ValueError for NaN and infinity) for anything else,
    so a value json.loads would not read back is never written.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return '"' + value.translate(_ESCAPES) + '"'
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not representable in JSON: {value!r}")
        return repr(value)
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
            items.append(f"{dumps(key)}: {dumps(item)}")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_state(path: "str | os.PathLike[str]", data: dict[str, object]) -> None:
    """Atomically publish the watchdog's view (temp file + rename): a reader sees the old or the new file."""
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(dumps(data))
    os.replace(tmp, path)


def read_state(path: "str | os.PathLike[str]") -> dict[str, object] | None:
    """The published state, or None when there is none (or it cannot be read)."""
    import json

    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def believed_targets(state: dict[str, object] | None) -> dict[str, str | None]:
    """Where the last watchdog left each service (a home, or None: fallback), from its state file."""
    services = (state or {}).get("services", [])
    if not isinstance(services, list):
        return {}
    return {s["name"]: s.get("active") for s in services if isinstance(s, dict) and "name" in s}


def watch_pid(paths: Paths) -> int | None:
    """The pid of a running watchdog for this state dir, from its state file (None: none runs)."""
    from vpnoffload.runfiles import ours

    pid = (read_state(paths.watch_state) or {}).get("pid")
    return ours(pid, contains=(b"vpnoffload", b"watch")) if isinstance(pid, int) else None
