"""What the watchdog and the tunnel are doing, read without disturbing them.

The watchdog publishes its view in a JSON file (``vpnoffload status`` reads
the same); OpenVPN's packet drops show in the kernel counters of the
namespaces it runs in (/proc/PID/net/* is the namespace of PID).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import measure
from vpnoffload.paths import Paths
from vpnoffload.watchfile import read_state


def state_file(config: Path) -> Path:
    return Paths.resolve(config).watch_state


def services(config: Path) -> dict[str, dict]:
    """The watchdog's last published state per service name ({} if none yet)."""
    data = read_state(state_file(config)) or {}
    return {s["name"]: s for s in data.get("services", []) if isinstance(s, dict) and "name" in s}


def swaps(config: Path, service: str) -> int:
    """How often the watchdog has swapped ``service`` (to the page or back) since it started."""
    return int(services(config).get(service, {}).get("swaps", 0))


def wait_state(config: Path, service: str, state: str, timeout: float) -> bool:
    """True once the watchdog says ``service`` is in ``state`` ('forwarding' or 'fallback')."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if services(config).get(service, {}).get("state") == state:
            return True
        time.sleep(0.1)
    return False


def wait_all_forwarding(config: Path, timeout: float) -> bool:
    """True once the watchdog forwards every service (no swap pending from an earlier load)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = services(config)
        if states and all(s.get("state") == "forwarding" for s in states.values()):
            return True
        time.sleep(0.1)
    return False


def tunnel_drops(pids: list[int], device: str) -> int:
    """Packets the tunnel lost in the kernel: UDP receive-buffer overflows plus the tun
    device's dropped packets, summed over the namespaces of ``pids`` (one OpenVPN each)."""
    total = 0
    for pid in pids:
        total += _udp_rcvbuf_errors(pid) + _device_drops(pid, device)
    return total


def _udp_rcvbuf_errors(pid: int) -> int:
    try:
        lines = Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
    except OSError:
        return 0
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    if len(udp) < 2:
        return 0
    fields = dict(zip(udp[0][1:], udp[1][1:], strict=False))
    return int(fields.get("RcvbufErrors", 0)) + int(fields.get("SndbufErrors", 0))


def _device_drops(pid: int, device: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()
    except OSError:
        return 0
    for line in lines[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == device:
            values = rest.split()
            return int(values[3]) + int(values[11])  # rx drop, tx drop
    return 0


def openvpn_pids(stage_namespaces: list[str]) -> list[int]:
    found: list[int] = []
    for ns in stage_namespaces:
        found += measure.find_pids(ns, comm_is="openvpn")
    return found
