"""Fixtures for the systemd lab: a VPS, a home box and a visitor, each a Debian
container with systemd as PID 1 (compose/systemd/Dockerfile).

The lab is driven with the plain ``docker`` CLI (argv lists, no shell): it
needs per-container options (capabilities, cgroup mounts, tmpfs /run) and
``docker restart``/``docker pause`` on single containers. Everything skips
with the reason when no Docker engine answers (``scripts/docker-up`` starts
one), and everything this file creates is removed at the end, always.

How systemd runs in a container here (checked on kernel 6.18, Docker 28,
cgroup v1 hybrid, Debian 12's systemd 252): ``--privileged`` cannot be used
(the host's own bounding set lacks CAP_SYS_RESOURCE, so runc fails "unable to
apply caps"), but CAP_SYS_ADMIN + CAP_NET_ADMIN, seccomp unconfined, the
host's cgroup tree mounted read-write with the host cgroup namespace, and
tmpfs on /run, /run/lock and /tmp are enough: ``systemctl is-system-running``
says "running", and the units' sandboxing (ProtectSystem=, PrivateDevices=,
CapabilityBoundingSet=, ...) works.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import wheelhouse
from tests.prereq import missing
from vpnoffload.lab.snapshot import normalize_xtables_save, snapshot_diff

REPO = Path(__file__).resolve().parents[2]
CONTEXT = REPO / "compose"  # the build context: systemd/ and the wheelhouse
DOCKERFILE = CONTEXT / "systemd" / "Dockerfile"
BASE_IMAGE = "debian:bookworm-slim"  # made by scripts/docker-up with debootstrap
IMAGE = "vpnoffload-systemd"
#: Every container and the network carry this label, so leftovers of a cut-short run are found.
LABEL = "vpnoffload-systemd-lab"
PREFIX = "vpnoffload-sd"
NETWORK = f"{PREFIX}-internet"

# TEST-NET-2, apart from the compose lab (192.0.2.192/26) and the namespace lab
# (192.0.2.0/24, 203.0.113.0/24). The tunnel lives only inside vps and home.
SUBNET, GATEWAY = "198.51.100.192/26", "198.51.100.193"
VPS_ADDRESS, HOME_ADDRESS, VISITOR_ADDRESS = "198.51.100.200", "198.51.100.210", "198.51.100.220"
TUNNEL_SUBNET = "198.18.100.0/24"
HOME = "home"

BOOT_TIMEOUT = 60.0
REQUEST_TIMEOUT = 2

#: What a container needs for systemd as PID 1 (see the module docstring) and for vpnoffload (tun, NET_ADMIN).
SYSTEMD_OPTIONS = (
    "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
    "--security-opt", "seccomp=unconfined",
    "--cgroupns", "host", "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
    "--device", "/dev/net/tun",
)


def docker(*args: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          input=stdin, check=False)


def engine_problem() -> str | None:
    """Why the systemd lab cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "docker is not installed (scripts/docker-up installs it)"
    try:
        info = docker("info", timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 30 s"
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker engine answers ({last}); start one with scripts/docker-up"
    if docker("image", "inspect", BASE_IMAGE).returncode != 0:
        return f"no {BASE_IMAGE} image (scripts/docker-up makes it with debootstrap)"
    return None


def _checked(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        pytest.fail(f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return proc.stdout


def image_tag() -> str:
    """Build the image unless one made from exactly these inputs exists (tag = their hash)."""
    wheelhouse()  # once per session, shared with the compose lab and the quickstart image
    digest = hashlib.sha256()
    inputs = sorted([*(CONTEXT / "systemd").iterdir(), *(CONTEXT / "wheels").glob("*.whl")])
    for path in inputs:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(_checked(docker("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE), "docker image inspect").encode())
    tag = f"{IMAGE}:{digest.hexdigest()[:16]}"
    if docker("image", "inspect", tag).returncode == 0:
        return tag
    # apt-get reaches Debian's mirror through the host's network (the engine has no bridge or NAT).
    _checked(docker("build", "--network", "host", "--quiet", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                    "--file", str(DOCKERFILE), "--tag", tag, str(CONTEXT), timeout=600), f"docker build {tag}")
    # Only the newest image is kept (the rest are superseded caches).
    for old in _checked(docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", IMAGE), "docker image ls").split():
        if old != tag:
            docker("image", "rm", old)
    return tag


def remove_leftovers() -> None:
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
    if ids:
        docker("rm", "-f", *ids, timeout=120)
    if docker("network", "inspect", NETWORK).returncode == 0:
        docker("network", "rm", NETWORK)


@dataclass(frozen=True)
class Response:
    status: int
    body: str


@dataclass(frozen=True)
class SystemdLab:
    """The running lab: commands in its containers, pages fetched as the visitor."""

    def name(self, host: str) -> str:
        return f"{PREFIX}-{host}"

    def exec(self, host: str, *argv: str, timeout: float = 60, stdin: str | None = None,
             check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = docker("exec", *(["-i"] if stdin is not None else []), self.name(host), *argv,
                      timeout=timeout, stdin=stdin)
        if check:
            _checked(proc, f"{host}: {' '.join(argv)}")
        return proc

    def systemctl(self, host: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.exec(host, "systemctl", *args, timeout=timeout)

    def show(self, host: str, unit: str, prop: str) -> str:
        return self.systemctl(host, "show", "--value", "-p", prop, unit).stdout.strip()

    def journal(self, host: str, *units: str, lines: int = 40) -> str:
        args = [a for u in units for a in ("-u", u)]
        return self.exec(host, "journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines), *args).stdout

    def visitor_get(self, path: str = "/") -> Response | None:
        """GET http://VPS_ADDRESS<path> from the visitor; None when nothing answered in time."""
        proc = self.exec("visitor", "curl", "-sS", "--max-time", str(REQUEST_TIMEOUT), "-w", "\n%{http_code}",
                         f"http://{VPS_ADDRESS}{path}", timeout=REQUEST_TIMEOUT + 30)
        body, _, code = proc.stdout.rpartition("\n")
        if proc.returncode != 0 or not code.isdigit() or code == "000":
            return None
        return Response(int(code), body)

    def wait_for(self, what: str, predicate: Callable[[Response | None], bool], path: str = "/",
                 timeout: float = 60.0) -> Response | None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.visitor_get(path)
            if predicate(last):
                return last
            time.sleep(0.3)
        pytest.fail(f"{what} within {timeout:g} s; last answer: {last!r}\n{self.diagnostics()}", pytrace=False)

    def wait_booted(self, host: str, timeout: float = BOOT_TIMEOUT) -> None:
        """Until systemd finished booting (``running``; ``degraded`` fails with the failed units)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.systemctl(host, "is-system-running", timeout=30).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.3)
        if state != "running":
            failed = self.systemctl(host, "--failed", "--no-pager", "--plain").stdout
            pytest.fail(f"systemd in {host} is {state!r} after {timeout:g} s:\n{failed}\n"
                        f"{docker('logs', '--tail', '40', self.name(host)).stdout}", pytrace=False)

    def snapshot(self, host: str) -> dict[str, str]:
        """What `down` must put back as it was: rules, routes, addresses, sysctls, the
        OpenVPN user, OpenVPN's wrapper configs, and which processes run."""
        sh = {
            "iptables": "iptables-legacy-save", "nftables": "nft list ruleset",
            "rules": "ip rule", "routes": "ip route show table all", "addresses": "ip -o addr",
            "sysctl": "sysctl net.ipv4.ip_forward net.ipv4.conf.all.rp_filter net.ipv4.conf.default.rp_filter",
            "user": "getent passwd vpnoffload || true", "openvpn": "ls /etc/openvpn/server /etc/openvpn/client",
            "processes": "ps -e -o comm=",
        }
        snap = {key: self.exec(host, "sh", "-c", cmd, timeout=30).stdout for key, cmd in sh.items()}
        snap["iptables"] = normalize_xtables_save(snap["iptables"])
        snap["processes"] = "\n".join(sorted(set(snap["processes"].split()) - {"ps", "sh"}))
        # Interface numbers and lifetimes are the kernel's, not ours (a reboot renumbers eth0).
        snap["addresses"] = re.sub(r"^\d+: ", "", snap["addresses"], flags=re.M)
        # Docker's embedded DNS rules (127.0.0.11, a new port at each boot) are not ours.
        for key in ("nftables", "iptables"):
            snap[key] = "".join(ln for ln in snap[key].splitlines(keepends=True)
                                if "127.0.0.11" not in ln and not ln.startswith("#"))
        return snap

    def diagnostics(self) -> str:
        parts = [f"--- vps: vpnoffload-watch\n{self.journal('vps', 'vpnoffload-watch', lines=60)}",
                 f"--- vps: vpnoffload-vps\n{self.journal('vps', 'vpnoffload-vps', lines=20)}",
                 "--- vps: page server log\n"
                 + self.exec("vps", "tail", "-n", "20", "/etc/vpnoffload/state/run/pageserver.log").stdout,
                 f"--- vps: processes\n{self.exec('vps', 'ps', '-eo', 'pid,user,args').stdout}",
                 f"--- home: vpnoffload-home\n{self.journal('home', 'vpnoffload-home', lines=20)}"]
        return "\n".join(parts)

    def run(self, host: str, address: str, tag: str, *extra: str) -> None:
        _checked(docker("run", "--detach", "--name", self.name(host), "--hostname", host, "--label", LABEL,
                        "--network", NETWORK, "--ip", address, *SYSTEMD_OPTIONS, *extra, tag), f"docker run {host}")


@pytest.fixture(scope="module")
def systemd_lab() -> Iterator[SystemdLab]:
    """Three booted containers; the VPS configured (init, service add) and home given its
    profile and its demo site, but no vpnoffload unit installed yet (the tests do that)."""
    problem = engine_problem()
    if problem:
        missing(problem)
    tag = image_tag()
    remove_leftovers()
    lab = SystemdLab()
    try:
        _checked(docker("network", "create", "--label", LABEL, "--subnet", SUBNET, "--gateway", GATEWAY, NETWORK),
                 "docker network create")
        # /proc/sys is read-only in a container; vpnoffload writes a sysctl only when
        # it differs, so the values it wants are set here (as in compose/).
        lab.run("vps", VPS_ADDRESS, tag, "--sysctl", "net.ipv4.ip_forward=1")
        lab.run("home", HOME_ADDRESS, tag, "--sysctl", "net.ipv4.conf.default.rp_filter=2")
        lab.run("visitor", VISITOR_ADDRESS, tag)
        for host in ("vps", "home", "visitor"):
            lab.wait_booted(host)
        vps = ("vpnoffload",)
        lab.exec("vps", *vps, "init", "--vps-address", VPS_ADDRESS, "--tunnel-subnet", TUNNEL_SUBNET, check=True)
        lab.exec("vps", *vps, "service", "add", "web", "--listen", "80", "--target", "8080", "--check", "http:/",
                 check=True)
        lab.exec("vps", *vps, "render", "home", "--home", HOME, "--out", "/root/for-home", check=True)
        # What a person copies with scp: the config and home's own profile (0600).
        config = lab.exec("vps", "cat", "/etc/vpnoffload/vpnoffload.toml", check=True).stdout
        profile = lab.exec("vps", "cat", f"/root/for-home/{HOME}.ovpn", check=True).stdout
        lab.exec("home", "install", "-d", "-m", "0700", "/etc/vpnoffload/state", check=True)
        lab.exec("home", "sh", "-c", "cat > /etc/vpnoffload/vpnoffload.toml", stdin=config, check=True)
        lab.exec("home", "sh", "-c", f"umask 077 && cat > /etc/vpnoffload/state/{HOME}.ovpn", stdin=profile,
                 check=True)
        lab.systemctl("home", "enable", "--now", "vpnoffload-lab-web.service")
        yield lab
    finally:
        if os.environ.get("VPNOFFLOAD_SYSTEMD_KEEP") != "1":  # =1: leave the lab up to look around
            remove_leftovers()


__all__ = ["HOME", "VISITOR_ADDRESS", "VPS_ADDRESS", "Response", "SystemdLab", "docker", "snapshot_diff"]


FAILOVER_TIMEOUT = 30.0


RECOVERY_TIMEOUT = 60.0


def served_from_home(response: object) -> bool:
    return getattr(response, "status", None) == 200 and getattr(response, "body", "").strip() == VISITOR_ADDRESS


def on_the_page(response: object) -> bool:
    return getattr(response, "status", None) == 503


def home_paused(lab: SystemdLab) -> bool:
    return docker("inspect", "--format", "{{.State.Paused}}", lab.name("home")).stdout.strip() == "true"


def home_down(lab: SystemdLab) -> None:
    """Home goes silent (every process frozen, as when its power or uplink fails)."""
    if not home_paused(lab):
        assert docker("pause", lab.name("home")).returncode == 0


def home_up(lab: SystemdLab) -> None:
    if home_paused(lab):
        assert docker("unpause", lab.name("home")).returncode == 0


HOME_UNIT, VPS_UNIT, WATCH_UNIT = "vpnoffload-home.service", "vpnoffload-vps.service", "vpnoffload-watch.service"
KEEPER_UNIT = "vpnoffload-home-keeper.service"


def wait_firewalld(lab: SystemdLab, host: str = "vps", timeout: float = 60.0) -> None:
    """Until firewalld in ``host`` answers "running" (after a start, restart or reload)."""
    deadline = time.monotonic() + timeout
    while lab.exec(host, "firewall-cmd", "--state", timeout=30).stdout.strip() != "running":
        if time.monotonic() > deadline:
            pytest.fail(f"firewalld in {host} did not run within {timeout:g} s:\n{lab.journal(host, 'firewalld')}",
                        pytrace=False)
        time.sleep(0.3)


def install_services(lab: SystemdLab) -> None:
    """``install-service`` on the VPS, then on home; fails with the diagnostics."""
    for host, argv in (("vps", ("vps",)), ("home", ("home", "--home", HOME))):
        done = lab.exec(host, "vpnoffload", "install-service", *argv, timeout=180)
        if done.returncode != 0:
            pytest.fail(f"install-service {' '.join(argv)} failed:\n{done.stdout}{done.stderr}\n{lab.diagnostics()}",
                        pytrace=False)
