"""Comparable captures of a lab host's network state, for "down leaves nothing" checks."""

from __future__ import annotations

import difflib
import re
import shutil

from vpnoffload.lab.netns import Lab, process_name, namespace_pids

_SNAPSHOT_COMMANDS: dict[str, tuple[str, ...]] = {
    "iptables": ("iptables-legacy-save",),
    "ip6tables": ("ip6tables-legacy-save",),
    "nftables": ("nft", "list", "ruleset"),
    "rules": ("ip", "rule"),
    "rules6": ("ip", "-6", "rule"),
    "routes": ("ip", "route", "show", "table", "all"),
    "routes6": ("ip", "-6", "route", "show", "table", "all"),
    "addresses": ("ip", "addr"),
    "sysctl": ("sysctl", "-a", "-r", r"^net\.ipv4\.(ip_forward$|conf\..*\.(rp_filter|src_valid_mark|forwarding)$)"
               r"|^net\.ipv6\.conf\..*\.(forwarding|accept_ra)$"),
}


def snapshot(lab: Lab, host: str) -> dict[str, str]:
    """A comparable capture of ``host``'s network state, for "down leaves nothing" checks.

    Normalised so that equal state gives equal text: comments and counters are
    stripped from the xtables dumps, and a legacy table that is merely
    registered (no rules, no own chains, every policy ACCEPT) is treated as
    absent, because touching a table registers it in a namespace for good.
    Address lifetimes are dropped; processes are listed by name, sorted.
    """
    snap: dict[str, str] = {}
    for key, argv in _SNAPSHOT_COMMANDS.items():
        snap[key] = lab.exec(host, *argv, timeout=10).stdout
    if shutil.which("ipset"):  # the legacy backend's access-control sets
        snap["ipsets"] = lab.exec(host, "ipset", "save", timeout=10).stdout
    # Counters are traffic, not state: "counter packets 13 bytes 620" reads as "counter".
    snap["nftables"] = re.sub(r"counter packets \d+ bytes \d+", "counter", snap["nftables"])
    snap["iptables"] = normalize_xtables_save(snap["iptables"])
    snap["ip6tables"] = normalize_xtables_save(snap["ip6tables"])
    snap["addresses"] = "".join(line for line in snap["addresses"].splitlines(keepends=True) if "valid_lft" not in line)
    snap["sysctl"] = "\n".join(sorted(snap["sysctl"].splitlines()))
    snap["processes"] = "\n".join(sorted(process_name(pid) for pid in namespace_pids(lab.namespace(host))))
    return snap


def snapshot_diff(before: dict[str, str], after: dict[str, str]) -> str:
    """A readable unified diff of two snapshots; empty when they are equal."""
    parts: list[str] = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, "").splitlines(), after.get(key, "").splitlines()
        if a != b:
            parts += difflib.unified_diff(a, b, f"before/{key}", f"after/{key}", lineterm="")
    return "\n".join(parts)


def normalize_xtables_save(text: str) -> str:
    """``iptables-save`` output without comments, counters or merely-registered tables."""
    tables: list[list[str]] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = re.sub(r"^\[\d+:\d+\]\s*|\s*\[\d+:\d+\]$", "", raw.strip())
        if not line or line.startswith("#"):
            continue
        current.append(line)
        if line == "COMMIT":
            if not _is_pristine(current):
                tables.append(current)
            current = []
    return "".join("\n".join(t) + "\n" for t in sorted(tables))


def _is_pristine(table: list[str]) -> bool:
    """A table with only built-in chains, all policy ACCEPT, and no rules."""
    body = table[1:-1]
    return all(line.startswith(":") and line.split()[1:2] == ["ACCEPT"] for line in body)
