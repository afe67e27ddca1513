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
    return sum(drop_counters({str(pid): pid for pid in pids}, device).values())


#: Where a tunnel packet can be lost in front of OpenVPN, as drop_counters names it.
DROP_PLACES = ("udp rcvbuf", "udp sndbuf", "tun rx", "tun tx")


def drop_counters(pids: dict[str, int], device: str) -> dict[str, int]:
    """Each end's drop counters, ``"<end> <place>"`` (DROP_PLACES) -> packets so far.

    ``pids`` maps an end's name to one process in its namespace (its OpenVPN).
    *udp rcvbuf*: datagrams for OpenVPN that found its socket's receive buffer full;
    *tun tx*: packets the kernel routed into the tun device whose queue (txqueuelen)
    was full because OpenVPN did not read them fast enough.
    """
    out: dict[str, int] = {}
    for end, pid in pids.items():
        udp = _udp_counters(pid)
        rx, tx = _device_counters(pid, device)
        out.update({f"{end} udp rcvbuf": udp.get("RcvbufErrors", 0), f"{end} udp sndbuf": udp.get("SndbufErrors", 0),
                    f"{end} tun rx": rx, f"{end} tun tx": tx})
    return out


def _udp_counters(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
    except OSError:
        return {}
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    if len(udp) < 2:
        return {}
    return {k: int(v) for k, v in zip(udp[0][1:], udp[1][1:], strict=False)}


def _device_counters(pid: int, device: str) -> tuple[int, int]:
    """(rx dropped, tx dropped) of ``device`` in the namespace of ``pid``; (0, 0) if absent."""
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()
    except OSError:
        return 0, 0
    for line in lines[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == device:
            values = rest.split()
            return int(values[3]), int(values[11])
    return 0, 0


def listen_drops(pid: int) -> int:
    """SYNs and handshakes a listening socket in the namespace of ``pid`` dropped (TcpExt ListenDrops)."""
    try:
        lines = Path(f"/proc/{pid}/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    ext = [line.split() for line in lines if line.startswith("TcpExt:")]
    if len(ext) < 2:
        return 0
    return int(dict(zip(ext[0][1:], ext[1][1:], strict=False)).get("ListenDrops", 0))


def openvpn_pids(stage_namespaces: list[str]) -> list[int]:
    found: list[int] = []
    for ns in stage_namespaces:
        found += measure.find_pids(ns, comm_is="openvpn")
    return found


def openvpn_pid_by_end(stage_namespaces: dict[str, str]) -> dict[str, int]:
    """One OpenVPN pid per end (``{"vps": ns, "home": ns}`` -> ``{"vps": pid, ...}``); ends without one are left out."""
    found = {end: measure.find_pids(ns, comm_is="openvpn") for end, ns in stage_namespaces.items()}
    return {end: pids[0] for end, pids in found.items() if pids}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """``after - before`` per counter, only the counters that moved."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
