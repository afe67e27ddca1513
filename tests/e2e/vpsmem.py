"""The footprint of vpnoffload on the VPS: every vpnoffload process in its namespace but OpenVPN.

Counted as the sum over processes of RSS (what the issue's targets are in),
with PSS (shared pages split between sharers) and USS (pages only that
process has) next to it, from /proc/PID/smaps_rollup.
"""

from __future__ import annotations

import time
from pathlib import Path

from vpnoffload.lab.netns import Lab, namespace_pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _exited(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _rollup(pid: int) -> dict[str, int] | None:
    """The process's memory from smaps_rollup; None only when it has exited meanwhile.

    Anything unreadable about a live process is an error, never 0 KB: a "<= N MB" over
    made-up zeros would pass whatever the real footprint.
    """
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as exc:
        raise AssertionError(f"cannot read the memory of pid {pid}: {exc}") from exc
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
            found[key] = int(rest.split()[0])
    if not text and _exited(pid):
        return None  # exited while being read: a zombie's rollup reads empty
    missing = {"Rss", "Pss", "Private_Clean", "Private_Dirty"} - set(found)
    assert not missing and found["Rss"] > 0, f"pid {pid}: no memory figures in smaps_rollup ({missing or 'Rss 0'})"
    return found


def role(cmdline: str) -> str:
    for module, name in (("vpnoffload.fallback.pageserver", "page server"), ("vpnoffload.watch.swap", "swap child"),
                         ("vpnoffload.lean.snapshot", "config snapshot"), ("vpnoffload.watch.loop", "watchdog")):
        if module in cmdline:
            return name
    return "other vpnoffload"


def vps_processes(lab: Lab) -> dict[int, str]:
    """pid -> role of every vpnoffload process in the VPS namespace (OpenVPN excluded)."""
    found = {}
    for pid in namespace_pids(lab.namespace("vps")):
        cmd = _cmdline(pid)
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm != "openvpn" and "vpnoffload" in cmd and not cmd.startswith("ip netns"):
            found[pid] = role(cmd)
    return found


def footprint(lab: Lab) -> dict[str, object]:
    """{"rss_kb", "pss_kb", "uss_kb": sums; "parts": {role: rss_kb}; "pids": {pid: role}}.

    Fails when it finds no vpnoffload process, or none with memory: never a vacuous 0 KB.
    """
    procs = vps_processes(lab)
    rss = pss = uss = 0
    parts: dict[str, int] = {}
    for pid, name in list(procs.items()):
        r = _rollup(pid)
        if r is None:  # exited between listing and reading (a swap child finishing)
            del procs[pid]
            continue
        rss, pss, uss = rss + r["Rss"], pss + r["Pss"], uss + r["Private_Clean"] + r["Private_Dirty"]
        parts[name] = parts.get(name, 0) + r["Rss"]
    # No process found (a changed command line, a filter gone wrong) must not read as "tiny".
    assert procs and rss > 0, f"no vpnoffload process with memory on the VPS to measure: {procs}"
    return {"rss_kb": rss, "pss_kb": pss, "uss_kb": uss, "parts": parts, "pids": procs}


def wait_for_roles(lab: Lab, want: set[str], limit: float) -> set[str]:
    """Wait up to ``limit`` s until the running vpnoffload processes have exactly the roles ``want``."""
    deadline = time.monotonic() + limit
    while True:
        roles = set(vps_processes(lab).values())
        if roles == want or time.monotonic() > deadline:
            return roles
        time.sleep(0.2)


def describe(fp: dict[str, object]) -> str:
    parts = ", ".join(f"{k} {v / 1024:.1f}" for k, v in sorted(fp["parts"].items()))  # type: ignore[union-attr]
    return (f"RSS {fp['rss_kb'] / 1024:.1f} MB (PSS {fp['pss_kb'] / 1024:.1f}, USS {fp['uss_kb'] / 1024:.1f}; "  # type: ignore[operator]
            f"{parts})")
