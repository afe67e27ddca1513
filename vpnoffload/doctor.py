"""Preflight checks, each with a fix hint. ``up`` runs the fatal ones first."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vpnoffload.errors import PrerequisiteError
from vpnoffload.model import Config

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    level: Level
    check: str
    detail: str
    hint: str = ""


def check_root() -> Finding:
    if os.geteuid() == 0:
        return Finding("ok", "root", "running as root")
    return Finding("fail", "root", "not running as root", "run with sudo (CAP_NET_ADMIN is needed for rules, routes and tun)")


def check_tun(path: Path = Path("/dev/net/tun")) -> Finding:
    if path.exists():
        return Finding("ok", "tun", f"{path} present")
    return Finding("fail", "tun", f"{path} is missing", "modprobe tun (in a container: --device /dev/net/tun)")


def check_openvpn() -> Finding:
    path = shutil.which("openvpn") or ("/usr/sbin/openvpn" if os.path.exists("/usr/sbin/openvpn") else None)
    if path is None:
        return Finding("fail", "openvpn", "openvpn is not installed", "apt-get install openvpn")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    version = out.split()[1] if len(out.split()) > 1 else "unknown"
    if not version.startswith(("2.5", "2.6", "2.7", "2.8", "3")):
        return Finding("warn", "openvpn", f"openvpn {version}", "vpnoffload is tested with OpenVPN 2.6")
    return Finding("ok", "openvpn", f"openvpn {version} at {path}")


def check_legacy_iptables() -> Finding:
    try:
        from vpnoffload.iptc_backend import IptcBackend

        IptcBackend().read()
    except Exception as exc:  # any failure here means python-iptables is unusable; report it, don't crash
        return Finding("fail", "iptables", f"python-iptables cannot read the legacy tables: {exc}",
                       "apt-get install iptables (it ships libxtables and the legacy tables python-iptables needs)")
    return Finding("ok", "iptables", "legacy iptables tables usable through python-iptables")


def check_nft_variant() -> Finding:
    from vpnoffload.iptc_backend import nft_variant_note

    note = nft_variant_note()
    if note:
        return Finding("warn", "iptables-nft", note, "use iptables-legacy-save to see vpnoffload's rules")
    return Finding("ok", "iptables-nft", "the iptables command shows the legacy tables vpnoffload writes")


def check_forwarding_config(sysctl_dirs: tuple[str, ...] = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/lib/sysctl.d", "/etc")) -> Finding:
    """A sysctl file that turns forwarding off would undo `up vps` at the next boot or `sysctl --system`."""
    for d in sysctl_dirs:
        base = Path(d)
        files = [base / "sysctl.conf"] if d == "/etc" else sorted(base.glob("*.conf")) if base.is_dir() else []
        for f in files:
            try:
                lines = f.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                key, _, value = line.partition("=")
                if key.strip() in ("net.ipv4.ip_forward", "net/ipv4/ip_forward") and value.strip() == "0":
                    return Finding("warn", "forwarding", f"{f} sets net.ipv4.ip_forward = 0",
                                   "remove that line, or vpnoffload stops forwarding after a reboot until 'up vps' runs again")
    return Finding("ok", "forwarding", "no sysctl file disables IPv4 forwarding")


def listening_ports(proc_net: Path = Path("/proc/net")) -> set[tuple[str, int]]:
    """(proto, port) pairs something listens on locally (any address)."""
    found: set[tuple[str, int]] = set()
    for proto, name in (("tcp", "tcp"), ("udp", "udp")):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            # TCP state 0A is LISTEN; bound UDP sockets show state 07.
            if len(parts) > 3 and parts[3] in ("0A", "07"):
                found.add((proto, int(parts[1].rsplit(":", 1)[1], 16)))
    return found


def check_port_conflicts(config: Config, proc_net: Path = Path("/proc/net")) -> list[Finding]:
    busy = listening_ports(proc_net)
    out = []
    for svc in config.services.values():
        if (svc.proto, svc.listen_port) in busy:
            out.append(Finding("warn", f"port {svc.listen_port}/{svc.proto}",
                               f"something on this VPS listens on {svc.listen_port}/{svc.proto}; service {svc.name} will take that port on {svc.listen_address}",
                               "stop that server or pick another listen address/port"))
    return out


def fatal_checks() -> list[Finding]:
    return [check_root(), check_tun(), check_openvpn()]


def require_prerequisites() -> None:
    """Raise PrerequisiteError for the first fatal finding: nothing can be done without these."""
    for finding in fatal_checks():
        if finding.level == "fail":
            raise PrerequisiteError(f"{finding.detail}: {finding.hint}")


def all_checks(config: Config | None) -> list[Finding]:
    findings = fatal_checks()
    if findings[0].level == "ok":
        findings.append(check_legacy_iptables())
    findings.append(check_nft_variant())
    findings.append(check_forwarding_config())
    if config is not None:
        findings += check_port_conflicts(config)
    return findings
