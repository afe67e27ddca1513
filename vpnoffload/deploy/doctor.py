"""Preflight checks, each with a fix hint. ``up`` runs the fatal ones first."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vpnoffload import proc
from vpnoffload.errors import PrerequisiteError, VpnOffloadError
from vpnoffload.model import TUNNEL_DEVICE, Config, Service

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


def _openvpn() -> str | None:
    return shutil.which("openvpn") or ("/usr/sbin/openvpn" if os.path.exists("/usr/sbin/openvpn") else None)


def openvpn_version(path: str | None) -> str:
    """The installed OpenVPN's version (\"2.6.14\"), or \"unknown\"."""
    if path is None:
        return "unknown"
    try:
        out = proc.run([path, "--version"], timeout=10, check=False).stdout
    except VpnOffloadError:  # hung or unrunnable: say "unknown", the tunnel test will tell more
        out = ""
    return out.split()[1] if len(out.split()) > 1 else "unknown"


def check_openvpn() -> Finding:
    path = _openvpn()
    if path is None:
        return Finding("fail", "openvpn", "openvpn is not installed", "apt-get install openvpn")
    version = openvpn_version(path)
    if not version.startswith(("2.5", "2.6", "2.7", "2.8", "3")):
        return Finding("warn", "openvpn", f"openvpn {version}", "vpnoffload is tested with OpenVPN 2.6")
    return Finding("ok", "openvpn", f"openvpn {version} at {path}")


#: The kernel's OpenVPN data channel: Linux 6.16+'s own ``ovpn`` (used by OpenVPN 2.7) or the
#: ``ovpn-dco-v2`` backport (used by OpenVPN 2.6). The file names modules.dep lists them under.
_DCO_FILES = re.compile(r"(?:^|/)(ovpn|ovpn-dco-v2)\.ko(?:\.[a-z]+)?(?::|$)", re.MULTILINE)
_DCO_LOADED = ("ovpn", "ovpn_dco_v2")
#: Link kinds of a device whose packets the kernel encrypts itself (``ip -d link`` shows them too).
_DCO_KINDS = ("ovpn", "ovpn-dco")


def tunnel_kind(device: str, net: Path = Path("/sys/class/net")) -> str | None:
    """``"tun"``, the DCO device type (``"ovpn"``, ``"ovpn-dco"``), another type, or None if absent."""
    where = net / device
    if not where.exists():
        return None
    if (where / "tun_flags").exists():  # the tun driver's own attribute
        return "tun"
    try:
        uevent = (where / "uevent").read_text()
    except OSError:
        uevent = ""
    found = re.search(r"^DEVTYPE=(\S+)", uevent, re.MULTILINE)
    return found.group(1) if found else "unknown"


def dco_modules(modules: Path = Path("/sys/module"), lib_modules: Path = Path("/lib/modules")) -> list[str]:
    """The DCO modules this kernel has loaded or can load (``ovpn``, ``ovpn_dco_v2``)."""
    found = [name for name in _DCO_LOADED if (modules / name).exists()]
    release = os.uname().release
    for listing in ("modules.builtin", "modules.dep"):
        try:
            text = (lib_modules / release / listing).read_text()
        except OSError:
            continue
        found += [m.group(1).replace("-", "_") for m in _DCO_FILES.finditer(text)]
    return list(dict.fromkeys(found))


def dco_module_for(version: str) -> str | None:
    """The module an OpenVPN of ``version`` drives: 2.6 only the ovpn-dco-v2 backport, 2.7 and
    later only the kernel's own ovpn; None for older ones or an unknown version."""
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None
    if (major, minor) == (2, 6):
        return "ovpn_dco_v2"
    return "ovpn" if (major, minor) >= (2, 7) else None


def check_dco(device: str, net: Path = Path("/sys/class/net"), modules: Path = Path("/sys/module"),
              lib_modules: Path = Path("/lib/modules"), *, openvpn: str | None = None) -> Finding:
    """Whether OpenVPN's data channel runs in the kernel (DCO) for ``device``, and if not, why not.

    The generated config allows it (AEAD ciphers only, no compression, no fragment,
    topology subnet); OpenVPN uses it by itself where the kernel has the module it drives.
    ``openvpn``: the installed OpenVPN's version (asked for when None and it matters).
    """
    kind, found = tunnel_kind(device, net), dco_modules(modules, lib_modules)
    if kind in _DCO_KINDS:
        return Finding("ok", "dco", f"data channel offload in use: {device} is an {kind} device "
                       "(the kernel encrypts and forwards tunnel packets; OpenVPN only keeps the session)")
    have = (f"this kernel has the {' and '.join(found)} module" if found else
            "this kernel has no ovpn module (Linux 6.16+ with OpenVPN 2.7, or ovpn-dco-v2 with OpenVPN 2.6)")
    if kind is None:
        return Finding("ok", "dco", f"tunnel {device} is not up; {have}")
    if not found:
        return Finding("ok", "dco", f"not in use: {device} is a {kind} device, OpenVPN's own data channel; {have}")
    # Asked only now: most kernels have no module, and then the version does not matter.
    version = openvpn_version(_openvpn()) if openvpn is None else openvpn
    wanted = dco_module_for(version)
    if wanted not in found:  # e.g. Linux 6.16+'s ovpn with OpenVPN 2.6: nothing to fix here
        return Finding("ok", "dco", f"not in use: {device} is a {kind} device; {have}, which OpenVPN {version} "
                       "does not drive", "OpenVPN 2.6 uses ovpn_dco_v2 only, 2.7 and later the kernel's ovpn")
    return Finding("warn", "dco", f"not in use: {device} is a {kind} device although {have}",
                   "OpenVPN's log says why ('... disabling data channel offload'); OpenVPN 2.6 uses ovpn_dco_v2 "
                   "only, 2.7 the kernel's ovpn")


def check_conntrack_tool() -> Finding:
    """The watchdog's flow evidence (watch/flows.py) reads conntrack with this tool."""
    from vpnoffload.watch.flows import conntrack_binary

    path = conntrack_binary()
    if path:
        return Finding("ok", "conntrack", f"conntrack tool at {path}")
    return Finding("warn", "conntrack", "the conntrack tool is missing: under load the watchdog cannot tell "
                   "a busy service from a blocked path", "apt-get install conntrack")


def check_legacy_iptables() -> Finding:
    try:
        from vpnoffload.firewall.iptc import IptcBackend

        IptcBackend().read()
    except Exception as exc:  # any failure here means python-iptables is unusable; report it, don't crash
        return Finding("fail", "iptables", f"python-iptables cannot read the legacy tables: {exc}",
                       "apt-get install iptables (it ships libxtables and the legacy tables python-iptables needs)")
    return Finding("ok", "iptables", "legacy iptables tables usable through python-iptables")


def check_nft_variant() -> Finding:
    from vpnoffload.firewall.xtables import nft_variant_note

    note = nft_variant_note()
    if note:
        return Finding("warn", "iptables-nft", note, "use iptables-legacy-save to see vpnoffload's rules")
    return Finding("ok", "iptables-nft", "the iptables command shows the legacy tables vpnoffload writes")


def check_firewall_backend(root: bool = True) -> list[Finding]:
    """Which backend writes vpnoffload's own rules (python-iptables or nftables), and can it
    read them (only as root); with python-iptables, the legacy-vs-nft note too."""
    from vpnoffload.firewall import choose

    try:
        name, why = choose.chosen()
    except VpnOffloadError as exc:
        return [Finding("fail", "firewall backend", str(exc), f"unset {choose.ENV}, or set it to iptc or nft")]
    named = Finding("ok", "firewall backend", f"{choose.describe(name)}: {why}")
    if name == "iptc":
        return [named, *([check_legacy_iptables()] if root else []), check_nft_variant()]
    if root:
        try:
            choose.make(name).read()
        except VpnOffloadError as exc:
            return [Finding("fail", "firewall backend", f"nftables: {exc}", "apt-get install nftables")]
    return [named]


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
        if svc.via == "proxy" or _takes_web_port(svc, busy):
            continue  # the web server is meant to hold the port / check_web_paths explains
        if (svc.proto, svc.listen_port) in busy:
            out.append(Finding("warn", f"port {svc.listen_port}/{svc.proto}",
                               f"something on this VPS listens on {svc.listen_port}/{svc.proto}; service {svc.name} will take that port on {svc.listen_address}",
                               "stop that server or pick another listen address/port"))
    return out


WEB_PORTS = (80, 443)


def _takes_web_port(svc: Service, busy: set[tuple[str, int]]) -> bool:
    return svc.via == "dnat" and svc.proto == "tcp" and svc.listen_port in WEB_PORTS and ("tcp", svc.listen_port) in busy


def check_web_paths(config: Config, proc_net: Path = Path("/proc/net")) -> list[Finding]:
    """Which of the three paths fits: a dedicated address per subdomain or a dedicated
    port (dnat, the kernel path), or a name shared with this VPS's own sites on
    :80/:443 (proxy: its web server routes by Host/SNI)."""
    busy = listening_ports(proc_net)
    web = [p for p in WEB_PORTS if ("tcp", p) in busy]
    ports = "/".join(f":{p}" for p in web)
    server = config.proxy.server
    out = []
    for svc in config.services.values():
        if _takes_web_port(svc, busy):
            out.append(Finding(
                "warn", f"service {svc.name}",
                f"this VPS's own web server listens on :{svc.listen_port}, and {svc.name} DNATs every name on "
                f"{svc.listen} away from it",
                f"if {svc.name} shares this address with your sites, route it by name: 'vpnoffload service remove "
                f"{svc.name}' then 'vpnoffload service add {svc.name} --via proxy --hostname NAME --listen "
                f"{svc.listen_port} --target ...' and 'vpnoffload render {server} --out DIR'; otherwise give it a "
                f"dedicated address (--listen ADDRESS:{svc.listen_port}) or its own port",
            ))
    proxied = [s.name for s in config.services.values() if s.via == "proxy"]
    if web:
        out.append(Finding("ok", "web paths",
                           f"a web server listens on {ports} here: subdomains that share them with your sites go "
                           f"--via proxy --hostname NAME (routed by {server}); a dedicated address or port per "
                           "service keeps the kernel path (dnat)"))
    elif proxied:
        out.append(Finding("warn", "web paths",
                           f"service(s) {', '.join(proxied)} go via proxy, but nothing listens on :80/:443 here",
                           f"start {server} with the include from 'vpnoffload render {server} --out DIR'"))
    else:
        out.append(Finding("ok", "web paths",
                           "no web server on :80/:443 here: dnat (the kernel path) fits, on the VPS address or a "
                           "dedicated one; --via proxy is for names shared with a local nginx/HAProxy"))
    return out


def unprivileged_port_start(path: Path = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")) -> int:
    """The lowest port any user may bind here (1024 unless lowered, as in Docker's containers)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 1024


def check_page_port(config: Config, start: int | None = None) -> list[Finding]:
    """The watchdog holds the friendly page's ports while it runs; between its lives (a crash,
    a restart) only a privileged port keeps a local user from binding them first."""
    pages = [s for s in config.services.values() if s.serves_page]
    if not pages:
        return []
    port = config.watch.fallback_port
    top = port + 1 if any(s.page_over_tls for s in pages) else port
    start = unprivileged_port_start() if start is None else start
    if top < start:
        return []
    shown = "/".join(str(p) for p in sorted({port, top}) if p >= start)
    lowered = "" if top >= 1024 else f" (net.ipv4.ip_unprivileged_port_start is {start} here)"
    return [Finding("warn", "page port", f"the friendly page's port {shown} is unprivileged{lowered}: while the "
                    "watchdog is not running any local user can bind it and receive the page's visitors",
                    "set watch.fallback_port below 1023 (the default is 503; TLS takes the next port)"
                    if top >= 1024 else "set net.ipv4.ip_unprivileged_port_start back to 1024")]


def global_ipv6_networks(if_inet6: Path = Path("/proc/net/if_inet6")) -> list[tuple[str, str]]:
    """(network, interface) of each global IPv6 address here whose prefix is a /64
    or shorter (so it has room for dedicated addresses); ULAs are not global."""
    found: list[tuple[str, str]] = []
    try:
        lines = if_inet6.read_text().splitlines()
    except OSError:
        return found  # no IPv6 on this host
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[3] != "00":  # scope 00: global
            continue
        address = ipaddress.IPv6Address(int(parts[0], 16))
        prefixlen = int(parts[2], 16)
        if prefixlen <= 64 and address in ipaddress.IPv6Network("2000::/3"):
            network = str(ipaddress.IPv6Network(f"{address}/{prefixlen}", strict=False))
            if (network, parts[5]) not in found:
                found.append((network, parts[5]))
    return found


def check_ipv6(config: Config | None, if_inet6: Path = Path("/proc/net/if_inet6")) -> Finding:
    """An IPv6 /64 on the VPS means a dedicated address per subdomain is available."""
    networks = global_ipv6_networks(if_inet6)
    ipv6 = [s.name for s in config.ipv6_services] if config is not None else []
    if not networks:
        if ipv6:
            return Finding("warn", "ipv6", f"service(s) {', '.join(ipv6)} listen on IPv6, but this host has no global "
                           "IPv6 /64", "ask your provider for the VPS's IPv6 prefix, or listen on IPv4")
        return Finding("ok", "ipv6", "no global IPv6 prefix here: services listen on IPv4")
    net, dev = networks[0]
    example = ipaddress.IPv6Network(net).network_address + 0x80
    detail = (f"this VPS has the IPv6 prefix {net} on {dev}: each offloaded subdomain can get a dedicated address "
              f"from it (e.g. --listen '[{example}]:443', the fastest path; needs [tunnel] subnet6)")
    if config is not None and config.tunnel.subnet6 is None:
        return Finding("ok", "ipv6", detail + "; set [tunnel] subnet6 (e.g. \"fd00:88::/64\") first")
    return Finding("ok", "ipv6", detail)


def check_host_firewall(config: Config | None, home_device: str | None = None) -> list[Finding]:
    """The host's own firewall (Docker, ufw, nftables, firewalld) and what `up` opens in it
    (``home_device``: on a home box, the tunnel device of this config's slot)."""
    from vpnoffload.firewall.host.plan import doctor_findings

    return [Finding(level, check, detail, hint)  # type: ignore[arg-type]
            for level, check, detail, hint in doctor_findings(config, home_device)]


def check_vps_address(config: Config, backend: object = None) -> list[Finding]:
    """Where the config's public addresses arrive on this host: held by an interface, or
    (1:1-NAT clouds) rewritten by the provider to ``[vps] local_address`` / ``[vps] nat``."""
    from vpnoffload.routing import nat

    try:
        found = nat.describe(config, backend)
    except VpnOffloadError as exc:
        return [Finding("warn", "vps address", f"cannot read this host's addresses: {exc}")]
    return [Finding(level, "vps address", detail, hint) for level, detail, hint in found]  # type: ignore[arg-type]


def fatal_checks() -> list[Finding]:
    return [check_root(), check_tun(), check_openvpn()]


def require_prerequisites() -> None:
    """Raise PrerequisiteError for the first fatal finding: nothing can be done without these."""
    for finding in fatal_checks():
        if finding.level == "fail":
            raise PrerequisiteError(f"{finding.detail}: {finding.hint}")


def check_home_box(config_path: Path) -> list[Finding]:
    """A home box: each VPS config here, its tunnel's share of the box, its profile, and clashes."""
    from vpnoffload import config as cfg
    from vpnoffload import hometunnels

    findings = []
    for path in hometunnels.box_configs(config_path):
        try:
            config = cfg.load(path)
            slot = hometunnels.check_box(path, config)
        except VpnOffloadError as exc:
            findings.append(Finding("fail", "home box", f"{path}: {exc}", "fix it before 'up home' with it"))
            continue
        profiles = sorted(p.name for p in (path.parent / "state").glob("*.ovpn"))
        detail = f"VPS {config.vps.address} ({path}): {slot}"
        if profiles:
            findings.append(Finding("ok", "home box", f"{detail}, profile {', '.join(profiles)}"))
        else:
            findings.append(Finding("warn", "home box", f"{detail}, no client profile in {path.parent / 'state'}",
                                    "copy the home.ovpn that 'vpnoffload render home' wrote on that VPS there"))
    return findings


def _home_device(config: Config | None, config_path: Path | None) -> str | None:
    """The tunnel device this config gets on a home box (a second VPS's is not vpnoffload0)."""
    if config is None or config_path is None:
        return None
    from vpnoffload import hometunnels

    return hometunnels.slot_of(config_path, config).device


def all_checks(config: Config | None, end: str = "vps", config_path: Path | None = None) -> list[Finding]:
    """Every check for ``end``: a home box is not asked about the VPS's address, ports or web paths."""
    findings = fatal_checks()
    findings += check_firewall_backend(root=findings[0].level == "ok")
    if end == "home":
        if findings[0].level == "ok":
            findings += check_host_firewall(config, _home_device(config, config_path))
        findings.append(check_dco(_home_device(config, config_path) or TUNNEL_DEVICE))
        return findings + (check_home_box(config_path) if config_path is not None else [])
    findings.append(check_forwarding_config())
    findings.append(check_conntrack_tool())
    findings.append(check_ipv6(config))
    findings.append(check_dco(config.tunnel.device if config is not None else TUNNEL_DEVICE))
    if findings[0].level == "ok":  # reading nft needs root
        findings += check_host_firewall(config)
    if config is not None:
        findings += check_vps_address(config)
        findings += check_port_conflicts(config)
        findings += check_page_port(config)
        findings += check_web_paths(config)
    return findings
