"""What ``status`` says on a home box: every VPS it serves, whether each tunnel is up
now, and when each last carried a visitor.

A home box has one config per VPS (vpnoffload.hometunnels); each that ``up home``
set up has a record (``state/run/home-NAME.json``). Every verdict is read when the
report is made, from the kernel and from the OpenVPN client itself:

- *up*: the client runs, its tun device holds the home's tunnel address, and its
  own log says it is connected (it restarts a tunnel whose VPS went silent for
  10 s, the pushed ``ping-restart``, and logs that; so "up" is at most that old);
- *visitors now* and *last visitor*: conntrack's entries carrying this tunnel's
  connection mark, from addresses outside the tunnel (the VPS's own health checks
  come from inside it). An entry's time left tells when its last packet passed
  (timeout for its state minus time left). Entries vanish a while after the
  connection ends (TIME_WAIT: 2 minutes), so the newest time seen is also kept in
  the run dir (``last-visitor``) and reported with where it came from.

This module reads files, ``/proc``, one ioctl and ``conntrack -L``: no pyroute2,
no python-iptables. Its :func:`home_report` is a plain dict for the status report.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from vpnoffload import hometunnels, runfiles
from vpnoffload import record as record_mod
from vpnoffload.errors import ExitStatus, VpnOffloadError
from vpnoffload.hometunnels import Slot
from vpnoffload.model import Config
from vpnoffload.paths import Paths

_SIOCGIFADDR = 0x8915
#: OpenVPN's log lines: connected, and going round again (ping-restart, a lost server).
_CONNECTED = "Initialization Sequence Completed"
_RESTARTING = re.compile(r"process restarting|Restart pause|SIGTERM|process exiting")
_LOG_TAIL = 64 * 1024
#: The file in a config's run dir that remembers the newest visitor seen.
LAST_VISITOR = "last-visitor"
_CT_LINE = re.compile(r"^(?P<proto>\w+)\s+\d+\s+(?P<left>\d+)\s+(?:(?P<state>[A-Z_]+)\s+)?src=(?P<src>\S+)")
_CT_MARK = re.compile(r"\bmark=(\d+)")


@dataclass(frozen=True)
class Joined:
    """One config on the box and the home box name its ``up home`` used (None: not set up)."""

    path: Path
    config: Config
    slot: Slot
    home: str | None


def is_home_end(paths: Paths) -> bool:
    """True when this box is a home box: the VPS end is not set up here, and some
    config on the box has been through ``up home`` (or has its client profile)."""
    if paths.server_dir.exists():
        return False
    for config_path in hometunnels.box_configs(paths.config):
        own = _paths(config_path)
        if any(own.run.glob("home-*.json")) or any(own.state.glob("*.ovpn")):
            return True
    return False


def joined(paths: Paths) -> list[Joined]:
    """Every config on the box that loads, the first one first."""
    from vpnoffload import config as cfg

    found = []
    for config_path in hometunnels.box_configs(paths.config):
        try:
            config = cfg.load(config_path)
        except VpnOffloadError:
            continue
        own = _paths(config_path)
        records = sorted(own.run.glob("home-*.json"))
        home = records[0].name.removeprefix("home-").removesuffix(".json") if records else None
        slot = hometunnels.slot_of(config_path, config)
        if records:
            with contextlib.suppress(VpnOffloadError):
                recorded = record_mod.load(records[0]).slot
                slot = Slot(recorded) if recorded is not None else slot
        found.append(Joined(config_path, config, slot, home if home in config.homes else None))
    return found


def home_report(paths: Paths, *, now: float | None = None, conntrack: str | None = None) -> tuple[dict[str, Any], ExitStatus]:
    """The home box's part of ``status``: one entry per VPS config, checked now.

    Exit status: 0 every set-up tunnel is up; 1 one is down; 2 none is set up.
    ``conntrack`` (the text of ``conntrack -L``) is for tests; by default it is read.
    """
    now = time.time() if now is None else now
    boxes = joined(paths)
    table, unread = _conntrack() if conntrack is None else (conntrack, None)
    tunnels = [_tunnel(j, table, unread, now) for j in boxes]
    up = [t for t in tunnels if t["set_up"]]
    status = ExitStatus.BAD_INPUT if not up else ExitStatus.OK if all(t["up"] for t in up) else ExitStatus.UNHEALTHY
    return {"checked_at": now, "tunnels": tunnels}, status


def _tunnel(j: Joined, conntrack_text: str | None, unread: str | None, now: float) -> dict[str, Any]:
    """One VPS's tunnel; ``conntrack_text`` None (``unread`` says why): visitors unknown, never 0."""
    own = _paths(j.path)
    home = j.config.homes[j.home] if j.home else j.config.default_home
    device_address = _device_address(j.slot.device)
    pid = runfiles.pid_of(own.run / runfiles.openvpn_pid(j.slot.tunnel_name(home.name)), program=b"openvpn")
    log_says = _log_state(own.run / runfiles.openvpn_log(j.slot.tunnel_name(home.name)))
    has_address = device_address == str(home.address)
    # Under systemd the client logs to the journal: the device is then the evidence.
    connected = log_says == "connected" or (log_says is None and pid is None and has_address)
    now_visitors, newest = (None, None) if conntrack_text is None else _visitors(conntrack_text, j.slot, j.config, now)
    last, source = _remember(own.run / LAST_VISITOR, newest, now)
    return {
        "config": str(j.path),
        "vps": str(j.config.vps.address),
        "vps_port": j.config.tunnel.port,
        "home": home.name,
        "address": str(home.address),
        "set_up": j.home is not None,
        "device": j.slot.device,
        "table": j.slot.table,
        "mark": f"{j.slot.mark:#x}/{j.slot.mask:#x}",
        "up": bool(j.home is not None and has_address and connected),
        "openvpn_pid": pid,
        "openvpn_log": log_says,
        "device_address": device_address,
        "visitors_now": now_visitors,
        "visitors_unknown": unread,
        "last_visitor": last,
        "last_visitor_from": source,
    }


def _paths(config_path: Path) -> Paths:
    # Not Paths.resolve: VPNOFFLOAD_STATE_DIR names this config's state, not the others'.
    return Paths(config_path, config_path.parent / "state")


def _device_address(device: str) -> str | None:
    """The IPv4 address on ``device`` (SIOCGIFADDR), None when it has none or does not exist."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            raw = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", device.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(raw[20:24])


def _log_state(log: Path) -> str | None:
    """"connected" or "not connected" by the client's own log; None without a log."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - _LOG_TAIL))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    ready = text.rfind(_CONNECTED)
    restart = max((m.start() for m in _RESTARTING.finditer(text)), default=-1)
    return "connected" if ready > restart else "not connected"


def _conntrack() -> tuple[str | None, str | None]:
    """(``conntrack -L``'s table, None), or (None, why it could not be read): a table that could
    not be read is not an empty one, and "0 visitors" would then be a guess."""
    from vpnoffload import proc

    try:
        result = proc.run(["conntrack", "-L"], timeout=5, check=False, hint="apt-get install conntrack")
    except VpnOffloadError as exc:
        return None, str(exc)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return None, f"conntrack -L failed: {last[:200]}"
    return result.stdout, None


def _visitors(text: str, slot: Slot, config: Config, now: float) -> tuple[int, float | None]:
    """(connections from visitors open now, when the newest one last carried a packet)."""
    inside = [config.tunnel.subnet] + ([config.tunnel.subnet6] if config.tunnel.subnet6 else [])
    count, newest = 0, None
    for line in text.splitlines():
        found, mark = _CT_LINE.match(line), _CT_MARK.search(line)
        if not found or not mark or int(mark.group(1)) & slot.mask != slot.mark:
            continue
        with contextlib.suppress(ValueError):
            if any(ip_address(found["src"]) in net for net in inside):
                continue  # the VPS's own health checks
        state = found["state"] or ""
        if state in ("ESTABLISHED", "SYN_RECV") or found["proto"] == "udp":
            count += 1
        left = int(found["left"])
        seen = now - max(0, _timeout(found["proto"], state, "[ASSURED]" in line) - left)
        newest = seen if newest is None else max(newest, seen)
    return count, newest


def _timeout(proto: str, state: str, assured: bool) -> int:
    """The conntrack timeout an entry in ``state`` starts from (this namespace's sysctl)."""
    if proto == "tcp" and state:
        key = f"nf_conntrack_tcp_timeout_{state.lower()}"
    elif proto == "udp":
        key = "nf_conntrack_udp_timeout_stream" if assured else "nf_conntrack_udp_timeout"
    else:
        key = "nf_conntrack_generic_timeout"
    try:
        return int(Path("/proc/sys/net/netfilter", key).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _remember(path: Path, seen: float | None, now: float) -> tuple[float | None, str | None]:
    """The newest visitor time: ``seen`` (conntrack, now), else what an earlier status kept."""
    kept: float | None = None
    with contextlib.suppress(OSError, ValueError):
        kept = float(path.read_text().strip())
    if seen is not None:
        if (kept is None or seen > kept + 1) and path.parent.is_dir():
            with contextlib.suppress(OSError, VpnOffloadError):  # status need not be able to write (not root)
                from vpnoffload.fsio import write_atomic

                write_atomic(path, f"{seen:.0f}\n", mode=0o600)
        return seen, "conntrack"
    return (kept, "kept by an earlier status") if kept is not None else (None, None)


# ------------------------------------------------------------------ text


def shown(paths: Paths, as_json: bool) -> tuple[str, ExitStatus] | None:
    """``status`` on a home box: its text (or JSON, ``{"end": "home", "home": ...}``) and
    exit status; None on a VPS (or a box that is neither yet)."""
    if not is_home_end(paths):
        return None
    import json

    from vpnoffload.firewall.host.plan import home_box_report, render_home_box

    data, code = home_report(paths)
    # The home keeper and what it put back in the host's firewall, per home set up with this config.
    keepers = home_box_report(paths.run)
    if as_json:
        shown_json: dict[str, Any] = {"end": "home", "home": data}
        if keepers is not None:
            shown_json["homes"] = keepers["homes"]
        return json.dumps(shown_json, indent=2), code
    lines = render_text(data)
    if keepers is not None:
        lines += render_home_box(keepers, lambda at: _ago(time.time() - at) if at else "-")[1:]
    return "\n".join(lines), code



def render_text(data: dict[str, Any], now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    lines = [f"home box: {sum(t['set_up'] for t in data['tunnels'])} VPS(es) set up here"]
    for t in data["tunnels"]:
        if not t["set_up"]:
            lines.append(f"  VPS {t['vps']} ({t['config']}): not set up here (run 'vpnoffload -c {t['config']} up home')")
            continue
        state = "up" if t["up"] else "DOWN"
        why = "" if t["up"] else f" ({_why_down(t)})"
        visitor = ("no visitor seen" if t["last_visitor"] is None
                   else f"last visitor {_ago(now - t['last_visitor'])}")
        now_text = (f"{t['visitors_now']} visitor connection(s) now" if t["visitors_now"] is not None
                    else f"visitor connections unknown ({t.get('visitors_unknown')})")
        lines.append(f"  VPS {t['vps']}: tunnel {state}{why} on {t['device']} as {t['home']} {t['address']}; "
                     f"{now_text}, {visitor} ({t['config']})")
    return lines


def _why_down(t: dict[str, Any]) -> str:
    if t["device_address"] is None:
        return f"no {t['device']}: is OpenVPN running (vpnoffload up home)?"
    if t["openvpn_log"] == "not connected":
        return "OpenVPN is reconnecting: is the VPS reachable?"
    return f"{t['device']} has {t['device_address']}, not {t['address']}"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago" if seconds < 7200 \
        else f"{seconds / 3600:.0f}h ago"


