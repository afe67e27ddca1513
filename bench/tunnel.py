"""Item 6: throughput of the OpenVPN tunnel itself, vpnoffload's config against a stock one,
and the effect of single tunings.

A lab of its own (only its vps and home namespaces carry the tunnel) runs
OpenVPN by hand with variant configs. The baseline is exactly what vpnoffload
renders (``vpnoffload.render.openvpn``). "stock" is the kind of config popular
installers write: here the defaults of angristan/openvpn-install (keepalive
10 120, AES-128-GCM, no MTU/MSS or buffer settings, so OpenVPN 2.6's defaults).
Every other variant is the generated config with one change, applied to both
ends. iperf3 measures TCP goodput over the tunnel between the two tunnel
addresses (no forwarding), both ways; the VPS's OpenVPN CPU time per run
shows what each byte costs the small machine.

With ``web_seconds`` it also measures item 1's hardest case per variant: wrk
from the visitor on new connections (``Connection: close``, 64 at once) to
the VPS's address, DNATed in the VPS's kernel to an nginx at home's tunnel
address (home answers through the tunnel, as vpnoffload's policy routing
does), counting requests/s, the VPS's OpenVPN CPU per 1000 requests and
where the tunnel dropped packets.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from bench import measure, servers, watchstate
from bench.stage import SYSCTLS, Narrator, unique_prefix
from vpnoffload.lab.netns import Lab, lab_session
from vpnoffload.model import TUNNEL_DEVICE, Config, Home, Tunnel, Vps
from vpnoffload.pki import Pki
from vpnoffload.render.openvpn import render_home, render_vps

SUBNET = IPv4Network("198.51.100.0/24")
SERVER_TUN = "198.51.100.1"
HOME_TUN = IPv4Address("198.51.100.2")
IPERF_PORT = 5301
READY = "Initialization Sequence Completed"
READY_WAIT = 20.0
DIRECTIONS = ("home to VPS", "VPS to home")
WEB_PORT = 8080  # nginx at home, on every address (the DNAT target is its tunnel address)
VISIT_PORT = 80  # on the VPS's public address, DNATed to home
WEB_CONNECTIONS = 64
WRK_TIMEOUT = "5s"
#: One core per end, as two real machines would have: each end's OpenVPN and iperf3
#: share a core, and the two ends do not steal from each other. (This machine has 2.)
CPU_OF = {"vps": "0", "home": "1"}


def _pinned(host: str, *argv: str) -> list[str]:
    return ["taskset", "-c", CPU_OF[host], *argv] if CPU_OF.get(host) is not None else list(argv)

#: (directive, value or None to delete it): applied to both ends' config text.
Edit = tuple[str, str | None]


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    edits: tuple[Edit, ...] = ()
    stock: bool = False  # the installer-style config instead of the generated one
    safe: bool = True  # fit for any internet path (for the report)
    env: tuple[tuple[str, str], ...] = ()  # for both OpenVPN processes


#: OpenSSL's CPU capability mask without AES-NI and PCLMULQDQ (bits 57 and 33): this CPU's OpenSSL
#: then computes AES-GCM as on a CPU without AES instructions (many small ARM boards, old Atoms).
NO_AES = (("OPENSSL_ia32cap", "~0x200000200000000"),)


VARIANTS = (
    Variant("generated", "vpnoffload's config as rendered: AES-256-GCM, tun-mtu 1500, mssfix 1400 mtu, "
            "fast-io (UDP), OS socket buffers, keepalive 2 10"),
    Variant("stock", "angristan/openvpn-install defaults: AES-128-GCM, keepalive 10 120, "
            "OpenVPN 2.6 defaults for MTU (mssfix 1492 mtu) and buffers", stock=True),
    Variant("CHACHA20-POLY1305", "generated, data cipher CHACHA20-POLY1305",
            (("data-ciphers", "CHACHA20-POLY1305"),)),
    Variant("buffers 1 MiB", "generated + sndbuf 1048576, rcvbuf 1048576",
            (("sndbuf", "1048576"), ("rcvbuf", "1048576"))),
    Variant("txqueuelen 1000", "generated + txqueuelen 1000 on the tun device", (("txqueuelen", "1000"),)),
    Variant("MTU defaults", "generated without tun-mtu/mssfix lines (2.6 default mssfix 1492 mtu)",
            (("tun-mtu", None), ("mssfix", None))),
    Variant("no fast-io", "generated without fast-io (UDP: write without polling first; OpenVPN 2.6 only, "
            "ignored since 2.7), as before it was adopted from this benchmark",
            (("fast-io", None),)),
    Variant("buffers+txqueuelen", "generated + the socket buffer and queue tunings together",
            (("sndbuf", "1048576"), ("rcvbuf", "1048576"), ("txqueuelen", "1000"))),
    Variant("no AES-NI: AES-256-GCM", "generated (AES-256-GCM), OpenSSL told the CPU has no AES instructions "
            "(OPENSSL_ia32cap)", env=NO_AES),
    Variant("no AES-NI: CHACHA20-POLY1305", "CHACHA20-POLY1305 first, OpenSSL told the CPU has no AES "
            "instructions (OPENSSL_ia32cap)", (("data-ciphers", "CHACHA20-POLY1305:AES-256-GCM"),), env=NO_AES),
)
QUICK_VARIANTS = ("generated", "stock", "CHACHA20-POLY1305", "buffers 1 MiB")


@dataclass
class Run:
    variant: str
    direction: str
    rep: int
    mbit_s: float
    retransmits: int
    vps_cpu_s: float  # the VPS's OpenVPN, during the run


@dataclass
class WebRun:
    """One new-connection run through DNAT over one variant's tunnel."""

    variant: str
    rep: int
    rps: float
    p99_ms: float
    errors: int
    vps_cpu_ms_per_1k: float  # the VPS's OpenVPN per 1000 requests
    home_cpu_ms_per_1k: float  # home's OpenVPN per 1000 requests
    drops_at: dict[str, int] = field(default_factory=dict)  # watchstate.drop_counters names, only those that moved


@dataclass
class WebCell:
    variant: str
    rps: float
    p99_ms: float
    errors: int
    vps_cpu_ms_per_1k: float
    home_cpu_ms_per_1k: float
    drops_at: dict[str, int] = field(default_factory=dict)  # summed over the runs
    runs: list[float] = field(default_factory=list)  # req/s, in repetition order


@dataclass
class Cell:
    variant: str
    direction: str
    mbit_s: float
    retransmits: int
    vps_cpu_percent: float
    mbit_per_cpu_s: float  # megabits carried per CPU-second of the VPS's OpenVPN (efficiency)
    runs: list[float] = field(default_factory=list)  # Mbit/s, in repetition order
    efficiency_runs: list[float] = field(default_factory=list)


@dataclass
class Facts:
    """What the kernel and OpenVPN settled on for the generated config."""

    txqueuelen: int = 0
    cipher: str = ""
    mtu: int = 0
    #: Socket buffer limits of this kernel: OpenVPN's sndbuf/rcvbuf are capped at the *_max values.
    rmem_default: int = 0
    rmem_max: int = 0
    wmem_max: int = 0


# ------------------------------------------------------------------ config texts


def edit_config(text: str, edits: Sequence[Edit]) -> str:
    """``text`` with each directive set (all its lines replaced) or deleted; new ones go
    before the first inline block (``<ca>``) or at the end."""
    lines = text.splitlines()
    for directive, value in edits:
        lines = [ln for ln in lines if ln.split()[:1] != [directive]]
        if value is not None:
            new = f"{directive} {value}".rstrip()
            at = next((i for i, ln in enumerate(lines) if re.match(r"<[a-z-]+>", ln)), len(lines))
            lines.insert(at, new)
    return "\n".join(lines) + "\n"


STOCK_SERVER = """\
# angristan/openvpn-install style server.conf (its defaults), for comparison only
port 1194
proto udp
dev tun
persist-key
persist-tun
keepalive 10 120
topology subnet
server {network} {netmask}
dh none
ecdh-curve prime256v1
tls-crypt tls-crypt.key
crl-verify crl.pem
ca ca.crt
cert server.crt
key server.key
auth SHA256
cipher AES-128-GCM
ncp-ciphers AES-128-GCM
tls-server
tls-version-min 1.2
tls-cipher TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256
client-config-dir ccd
status status.log
verb 3
"""

STOCK_CLIENT = """\
# angristan/openvpn-install style client profile (its defaults), for comparison only
client
proto udp
explicit-exit-notify
remote {remote} 1194
dev tun
resolv-retry infinite
nobind
persist-key
persist-tun
remote-cert-tls server
verify-x509-name {server_name} name
auth SHA256
auth-nocache
cipher AES-128-GCM
tls-client
tls-version-min 1.2
tls-cipher TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256
ignore-unknown-option block-outside-dns
verb 3
"""


def stock_configs(generated_profile: str, remote: str, server_name: str) -> tuple[str, str]:
    """The stock server.conf and client profile (the PKI blocks taken from the generated profile)."""
    blocks = "".join(m.group(0) + "\n" for m in
                     re.finditer(r"<(ca|cert|key|tls-crypt)>.*?</\1>", generated_profile, re.DOTALL))
    server = STOCK_SERVER.format(network=SUBNET.network_address, netmask=SUBNET.netmask)
    client = STOCK_CLIENT.format(remote=remote, server_name=server_name) + blocks
    return server, client


# ------------------------------------------------------------------ running it


@dataclass
class TunnelLab:
    lab: Lab
    directory: Path
    server_conf: str  # generated texts
    client_conf: str
    server_name: str


def prepare(lab: Lab, directory: Path) -> TunnelLab:
    """A PKI and vpnoffload's own rendering of both ends, in ``directory``."""
    config = Config(vps=Vps(address=IPv4Address(lab.vps_address)), tunnel=Tunnel(subnet=SUBNET),
                    homes={"home": Home("home", HOME_TUN)})
    pki = Pki.create(directory / "pki")
    pki.issue("home")
    server_dir = directory / "server"
    render_vps(config, pki, server_dir, status_path=directory / "status", run_as=None)
    profile = render_home(config, pki, "home", directory / "profiles")
    return TunnelLab(lab, directory, (server_dir / "server.conf").read_text(), profile.read_text(),
                     pki.server_name)


def _texts(tl: TunnelLab, variant: Variant) -> tuple[str, str]:
    if variant.stock:
        server, client = stock_configs(tl.client_conf, tl.lab.vps_address, tl.server_name)
        return edit_config(server, variant.edits), edit_config(client, variant.edits)
    return edit_config(tl.server_conf, variant.edits), edit_config(tl.client_conf, variant.edits)


def device(variant: Variant) -> str:
    """The tun device a variant's OpenVPN makes (the stock config says ``dev tun``)."""
    return "tun0" if variant.stock else TUNNEL_DEVICE


def _start(tl: TunnelLab, variant: Variant) -> tuple[subprocess.Popen, subprocess.Popen, Path]:
    server_text, client_text = _texts(tl, variant)
    server_dir = tl.directory / "server"
    (server_dir / "variant.conf").write_text(server_text)
    client_path = tl.directory / "profiles" / "variant.ovpn"
    client_path.write_text(client_text)
    client_path.chmod(0o600)
    logs = tl.directory / "logs"
    logs.mkdir(exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9]+", "-", variant.name)
    env = {**os.environ, **dict(variant.env)} if variant.env else None
    with open(logs / f"{tag}-server.log", "wb") as out:
        server = tl.lab.popen("vps", *_pinned("vps", "openvpn", "--cd", str(server_dir), "--config", "variant.conf"),
                              stdout=out, stderr=subprocess.STDOUT, env=env)
    client_log = logs / f"{tag}-client.log"
    with open(client_log, "wb") as out:
        client = tl.lab.popen("home", *_pinned("home", "openvpn", "--config", str(client_path)),
                              stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + READY_WAIT
    while READY not in client_log.read_text(errors="replace"):
        if time.monotonic() > deadline or client.poll() is not None or server.poll() is not None:
            _stop(server, client)
            tail = "\n".join(client_log.read_text(errors="replace").splitlines()[-5:])
            raise RuntimeError(f"tunnel variant {variant.name!r} did not come up: {tail}")
        time.sleep(0.1)
    return server, client, client_log


def _stop(*procs: subprocess.Popen) -> None:
    # SIGKILL: explicit-exit-notify would make each stop wait a second for nothing.
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def facts(tl: TunnelLab, client_log: Path) -> Facts:
    out = tl.lab.exec("home", "ip", "-o", "link", "show", TUNNEL_DEVICE, check=False).stdout
    qlen = re.search(r"qlen (\d+)", out)
    mtu = re.search(r"mtu (\d+)", out)
    cipher = re.search(r"Data Channel: cipher '([^']+)'", client_log.read_text(errors="replace"))
    return Facts(int(qlen.group(1)) if qlen else 0, cipher.group(1) if cipher else "", int(mtu.group(1)) if mtu else 0,
                 *(_sysctl_int(name) for name in ("rmem_default", "rmem_max", "wmem_max")))


def _sysctl_int(name: str) -> int:
    try:
        return int(Path(f"/proc/sys/net/core/{name}").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _iperf(tl: TunnelLab, server_pid: int, direction: str, seconds: int) -> tuple[measure.IperfResult, float]:
    argv = ["iperf3", "-c", SERVER_TUN, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
            *(["-R"] if direction == "VPS to home" else [])]
    error = ""
    for _ in range(2):
        before = measure.cpu_times(server_pid).own
        out = tl.lab.exec("home", *_pinned("home", *argv), check=False, timeout=seconds + 30)
        used = measure.cpu_times(server_pid).own - before
        try:
            return measure.parse_iperf3(out.stdout), used
        except (ValueError, KeyError) as exc:
            error = str(exc) or out.stderr.strip()
    raise RuntimeError(f"iperf3 over the tunnel failed twice: {error}")


def _forwarding(lab: Lab, directory: Path) -> None:
    """The VPS DNATs VISIT_PORT to an nginx at home's tunnel address, as a vpnoffload service does
    (in this lab's own namespaces; they go with it)."""
    for host, settings in SYSCTLS.items():
        for setting in settings:
            lab.exec(host, "sysctl", "-q", "-w", setting)
    lab.exec("vps", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    lab.exec("vps", "iptables-nft", "-t", "nat", "-A", "PREROUTING", "-d", lab.vps_address, "-p", "tcp",
             "--dport", str(VISIT_PORT), "-j", "DNAT", "--to-destination", f"{HOME_TUN}:{WEB_PORT}")
    servers.start_nginx_site(lab, directory, "home", WEB_PORT)


def _web(tl: TunnelLab, variant: Variant, rep: int, pids: dict[str, int], seconds: int) -> WebRun:
    """New connections from the visitor through the VPS's DNAT and this variant's tunnel."""
    lab = tl.lab
    # Home answers the visitor through the tunnel (vpnoffload's policy routing does this at a real home).
    lab.exec("home", "ip", "route", "replace", f"{lab.visitor_address}/32", "dev", device(variant))
    url = f"http://{lab.vps_address}:{VISIT_PORT}/"
    if not lab.wait_tcp("visitor", lab.vps_address, VISIT_PORT, timeout=10):
        raise RuntimeError(f"home's nginx is not reachable through the VPS's DNAT ({variant.name})")
    drops = _drop_counters(pids, device(variant))
    cpu = {end: measure.cpu_times(pid).own for end, pid in pids.items()}
    out = lab.exec("visitor", "wrk", "-t2", f"-c{WEB_CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout",
                   WRK_TIMEOUT, "-H", "Connection: close", url, timeout=seconds + 60)
    used = {end: measure.cpu_times(pid).own - cpu[end] for end, pid in pids.items()}
    result = measure.parse_wrk(out.stdout)
    per_1k = {end: 1e6 * v / result.requests if result.requests else float("nan") for end, v in used.items()}
    return WebRun(variant.name, rep, result.rps, result.p99_ms, result.errors, per_1k["vps"], per_1k["home"],
                  watchstate.counter_delta(drops, _drop_counters(pids, device(variant))))


def _drop_counters(pids: dict[str, int], dev: str) -> dict[str, int]:
    counters = watchstate.drop_counters(pids, dev)
    counters.update({f"{end} listen drops": watchstate.listen_drops(pid) for end, pid in pids.items()})
    return counters


def run(scratch: Path, narrator: Narrator, *, seconds: int, reps: int, names: Sequence[str] | None = None,
        web_seconds: int = 0) -> tuple[list[Run], Facts, list[WebRun]]:
    """Every variant ``reps`` times (all variants once, then again), in a lab of its own; with
    ``web_seconds`` also new connections through DNAT over each (bounded: one wrk run per variant and rep)."""
    variants = [v for v in VARIANTS if names is None or v.name in names]
    runs: list[Run] = []
    web_runs: list[WebRun] = []
    found = Facts()
    directory = scratch / "tunnel"
    directory.mkdir(mode=0o755)
    prefix = unique_prefix("t")
    narrator.step(f"item 6: building lab {prefix} for the tunnel variants")
    with lab_session(prefix) as lab:
        tl = prepare(lab, directory)
        if web_seconds:
            _forwarding(lab, directory)
        for rep in range(reps):
            for variant in variants:
                narrator.step(f"item 6: {variant.name}, run {rep + 1}/{reps}")
                server, client, client_log = _start(tl, variant)
                # A fresh iperf3 server per tunnel: one whose test was cut off stays "busy".
                iperf = lab.popen("vps", *_pinned("vps", "iperf3", "-s", "-p", str(IPERF_PORT)))
                try:
                    if not lab.wait_tcp("home", SERVER_TUN, IPERF_PORT, timeout=10):
                        raise RuntimeError(f"iperf3 is not reachable over the tunnel ({variant.name})")
                    if variant.name == "generated" and rep == 0:
                        found = facts(tl, client_log)
                    for direction in DIRECTIONS:
                        result, cpu = _iperf(tl, server.pid, direction, seconds)
                        runs.append(Run(variant.name, direction, rep, result.mbit_s, result.retransmits, cpu))
                    if web_seconds:
                        web_runs.append(_web(tl, variant, rep, {"vps": server.pid, "home": client.pid}, web_seconds))
                finally:
                    _stop(iperf, server, client)
    return runs, found, web_runs


def web_cells(runs: Sequence[WebRun]) -> list[WebCell]:
    """Median per variant; errors and drops summed."""
    out = []
    for variant in dict.fromkeys(r.variant for r in runs):
        group = [r for r in runs if r.variant == variant]
        drops: dict[str, int] = {}
        for r in group:
            for place, count in r.drops_at.items():
                drops[place] = drops.get(place, 0) + count
        out.append(WebCell(variant, measure.median([r.rps for r in group]), measure.median([r.p99_ms for r in group]),
                           sum(r.errors for r in group), measure.median([r.vps_cpu_ms_per_1k for r in group]),
                           measure.median([r.home_cpu_ms_per_1k for r in group]), drops, [r.rps for r in group]))
    return out


def cells(runs: Sequence[Run], seconds: int) -> list[Cell]:
    keys = list(dict.fromkeys((r.variant, r.direction) for r in runs))
    out = []
    for variant, direction in keys:
        group = [r for r in runs if (r.variant, r.direction) == (variant, direction)]
        efficiency = [r.mbit_s * seconds / r.vps_cpu_s if r.vps_cpu_s else float("nan") for r in group]
        out.append(Cell(variant, direction, measure.median([r.mbit_s for r in group]),
                        sum(r.retransmits for r in group),
                        100 * measure.median([r.vps_cpu_s for r in group]) / seconds,
                        measure.median(efficiency), [r.mbit_s for r in group], efficiency))
    return out


def web_ratios(runs: Sequence[WebRun]) -> dict[str, list[float]]:
    """Per variant, its req/s over the generated config's in the same repetition (cancels drifts)."""
    base = {r.rep: r.rps for r in runs if r.variant == "generated"}
    out: dict[str, list[float]] = {}
    for r in runs:
        if r.rep in base:
            out.setdefault(r.variant, []).append(measure.ratio(r.rps, base[r.rep]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.tunnel``: item 6 alone (as root), a summary on stdout and the raw runs as JSON."""
    import argparse
    import dataclasses
    import json
    import shutil
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.tunnel", description=main.__doc__)
    parser.add_argument("--variants", help="comma-separated variant names (default: all)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3, help="per iperf3 run (1-30)")
    parser.add_argument("--web-seconds", type=int, default=3, help="per new-connection wrk run, 0: none (0-30)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not (1 <= args.seconds <= 30 and 0 <= args.web_seconds <= 30 and 1 <= args.reps <= 10):
        parser.error("--seconds 1-30, --web-seconds 0-30, --reps 1-10")
    names = args.variants.split(",") if args.variants else None
    scratch = Path(tempfile.mkdtemp(prefix="vpnoffload-bench-"))
    scratch.chmod(0o755)
    try:
        runs, found, web = run(scratch, Narrator(), seconds=args.seconds, reps=args.reps, names=names,
                               web_seconds=args.web_seconds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratios = web_ratios(web)
    for cell in cells(runs, args.seconds):
        print(f"{cell.variant:20} {cell.direction:12} {cell.mbit_s:7.0f} Mbit/s {cell.mbit_per_cpu_s:7.0f} Mbit/CPU-s "
              f"runs {' / '.join(f'{v:.0f}' for v in cell.runs)}")
    for wc in web_cells(web):
        ratio = " / ".join(f"{v:.2f}" for v in ratios.get(wc.variant, []))
        print(f"{wc.variant:20} new conn {wc.rps:7.0f} req/s x {ratio}  p99 {wc.p99_ms:.0f} ms  VPS ovpn "
              f"{wc.vps_cpu_ms_per_1k:.0f} ms/1k  home ovpn {wc.home_cpu_ms_per_1k:.0f} ms/1k  drops {wc.drops_at}")
    if args.json:
        args.json.write_text(json.dumps({"facts": dataclasses.asdict(found),
                                         "runs": [dataclasses.asdict(r) for r in runs],
                                         "web": [dataclasses.asdict(r) for r in web]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
