"""A throw-away lab of network namespaces: internet router, vps, home, visitor,
and attic (a second home box, for services with several home boxes).

Used by the end-to-end tests and by ``vpnoffload lab up|demo|down``. Topology
(TEST-NET addresses only; no NAT anywhere unless asked for, see below, so every address seen is real)::

    visitor 192.0.2.2/26 ─── .1  ┐
    vps 203.0.113.10/24  ─── .1  ├─ internet (router, ip_forward=1)
    home 192.0.2.66/26   ─── .65 ┤  <- home_cable: the router's side of this link
    attic 192.0.2.130/26 ─── .129┘  <- a second home box (its cable: to-attic)

Each host reaches the others only through the router, and home's default route
points at the router, so a reply from home comes back through the tunnel only
if vpnoffload's policy routing works. 198.51.100.0/24 is left for the tunnel.

Every namespace is named ``<prefix>-<host>`` so two labs never collide, and
veth pairs are created directly inside the namespaces: the root namespace never
holds a lab device, and deleting the namespaces removes everything. IPv6 is
disabled inside the lab so no link-local traffic or DAD state makes snapshots
flap, unless the lab is made with ``ipv6=True``: then every link also gets an
address from the IPv6 documentation prefix (2001:db8:<n>::/64, the router ::1,
the host as below), the router forwards IPv6, and ``create`` waits until
duplicate address detection is done everywhere::

    visitor 2001:db8:2::2   vps 2001:db8:1::10   home 2001:db8:3::2   attic 2001:db8:4::2

A lab made with ``second_vps=True`` also has ``vps2``, a second VPS at
203.0.113.20 on a link of its own (the router holds 203.0.113.1/32 on
``to-vps2`` with a /32 route to it; vps2 has 203.0.113.20/32 and an on-link
default route), for a home box behind several VPSes. Its cable is ``to-vps2``.

A lab made with ``one_to_one_nat=True`` puts the VPS behind a 1:1-NAT router,
as Oracle Cloud, GCP, AWS and Azure do: the VPS holds only the private
198.18.0.10/24 on its uplink (the router 198.18.0.1), and the router DNATs the
public 203.0.113.10 (and the spare .11, .12) to 198.18.0.10 (.11, .12) and
SNATs them back, with iptables-nft in its own namespace. Everyone else still
dials 203.0.113.10; only the VPS never sees that address.

Only this module touches the lab's kernel state; everything is iproute2
(and, for the NAT router, iptables-nft) commands run without a shell.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vpnoffload import proc
from vpnoffload.lab import DEFAULT_PREFIX, probes
from vpnoffload.errors import BackendError, ConfigError, PrerequisiteError
from vpnoffload.names import shown

ROUTER = "internet"
HOSTS = (ROUTER, "vps", "home", "visitor", "attic")
#: The host a lab made with ``second_vps=True`` has as well.
SECOND_VPS = "vps2"
#: Every non-router host's single interface is called this inside its namespace.
UPLINK_DEVICE = "eth0"
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class Segment:
    """One router link: ``host`` (on its ``eth0``) and the router (on ``to-<host>``)."""

    host: str
    prefixlen: int
    router_address: str
    host_address: str

    @property
    def router_device(self) -> str:
        return f"to-{self.host}"


SEGMENTS = (
    Segment("vps", 24, "203.0.113.1", "203.0.113.10"),
    Segment("home", 26, "192.0.2.65", "192.0.2.66"),
    Segment("visitor", 26, "192.0.2.1", "192.0.2.2"),
    Segment("attic", 26, "192.0.2.129", "192.0.2.130"),
)
#: The second VPS's link: an address of the VPS's TEST-NET /24, reached by a /32 route.
SECOND_VPS_SEGMENT = Segment(SECOND_VPS, 32, "203.0.113.1", "203.0.113.20")
#: The VPS link of a lab made with ``one_to_one_nat=True``: private addresses only.
NAT_VPS_SEGMENT = Segment("vps", 24, "198.18.0.1", "198.18.0.10")
#: What that lab's router maps 1:1 (public -> the VPS's private address).
NAT_PAIRS = (("203.0.113.10", "198.18.0.10"), ("203.0.113.11", "198.18.0.11"), ("203.0.113.12", "198.18.0.12"))
#: The IPv6 side of each link in a lab made with ``ipv6=True`` (documentation prefix only).
SEGMENTS6 = (
    Segment("vps", 64, "2001:db8:1::1", "2001:db8:1::10"),
    Segment("visitor", 64, "2001:db8:2::1", "2001:db8:2::2"),
    Segment("home", 64, "2001:db8:3::1", "2001:db8:3::2"),
    Segment("attic", 64, "2001:db8:4::1", "2001:db8:4::2"),
)


@dataclass
class Lab:
    """The five namespaces of one lab, named after ``prefix``.

    ``create`` builds it (all or nothing), ``destroy`` removes every trace and
    may be called any number of times, also on a half-built lab.
    """

    prefix: str = DEFAULT_PREFIX
    _started: list[proc.Process] = field(default_factory=list, init=False, repr=False, compare=False)
    #: Also build the IPv6 side of every link (SEGMENTS6).
    ipv6: bool = False
    #: Put the VPS behind a 1:1-NAT router (NAT_VPS_SEGMENT, NAT_PAIRS), like a cloud VPS.
    one_to_one_nat: bool = False
    #: Also build ``vps2``, a second VPS (SECOND_VPS_SEGMENT).
    second_vps: bool = False

    vps_address: ClassVar[str] = "203.0.113.10"
    vps2_address: ClassVar[str] = SECOND_VPS_SEGMENT.host_address
    vps_gateway: ClassVar[str] = "203.0.113.1"
    #: Unassigned addresses on the vps link, for services with a dedicated listen address.
    vps_spare_addresses: ClassVar[tuple[str, ...]] = ("203.0.113.11", "203.0.113.12")
    home_uplink_address: ClassVar[str] = "192.0.2.66"
    home_gateway: ClassVar[str] = "192.0.2.65"
    attic_uplink_address: ClassVar[str] = "192.0.2.130"
    visitor_address: ClassVar[str] = "192.0.2.2"
    visitor_gateway: ClassVar[str] = "192.0.2.1"
    uplink_device: ClassVar[str] = UPLINK_DEVICE
    #: The router-side veth of the home link: setting it down is "pulling the cable".
    home_cable: ClassVar[str] = "to-home"
    #: In a lab with ``ipv6=True``: the VPS's own IPv6 address and free ones in its /64.
    vps_address6: ClassVar[str] = "2001:db8:1::10"
    vps_spare_addresses6: ClassVar[tuple[str, ...]] = ("2001:db8:1::80", "2001:db8:1::81")
    visitor_address6: ClassVar[str] = "2001:db8:2::2"
    home_uplink_address6: ClassVar[str] = "2001:db8:3::2"

    @property
    def vps_local_address(self) -> str:
        """The address the VPS itself holds: the private one behind the lab's 1:1 NAT."""
        return NAT_VPS_SEGMENT.host_address if self.one_to_one_nat else self.vps_address

    def nat_private(self, public: str) -> str:
        """The private address the 1:1-NAT router maps ``public`` to (itself without NAT)."""
        return dict(NAT_PAIRS).get(public, public) if self.one_to_one_nat else public

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ConfigError(f"{shown(self.prefix)} is not a usable lab prefix (1-40 letters, digits, '_.-')",
                              field="--prefix")

    # -- names -------------------------------------------------------------

    @property
    def hosts(self) -> tuple[str, ...]:
        """HOSTS, and vps2 in a lab with a second VPS."""
        return (*HOSTS, SECOND_VPS) if self.second_vps else HOSTS

    def namespace(self, host: str) -> str:
        """The namespace name of ``host`` (one of :attr:`hosts`)."""
        if host not in self.hosts:
            raise ConfigError(f"unknown lab host {host!r}; one of {', '.join(self.hosts)}", field="host")
        return f"{self.prefix}-{host}"

    @property
    def namespaces(self) -> dict[str, str]:
        return {host: self.namespace(host) for host in self.hosts}

    # -- building and tearing down -------------------------------------------

    def build_commands(self) -> list[list[str]]:
        """Everything ``create`` runs after adding the namespaces, in order (plan as data)."""
        ns = self.namespaces
        router = ns[ROUTER]
        cmds: list[list[str]] = []
        off = "0" if self.ipv6 else "1"
        for name in ns.values():
            cmds.append(["ip", "netns", "exec", name, "sysctl", "-q", "-w",
                         f"net.ipv6.conf.all.disable_ipv6={off}", f"net.ipv6.conf.default.disable_ipv6={off}"])
            cmds.append(["ip", "-n", name, "link", "set", "lo", "up"])
        for seg in SEGMENTS:
            if seg.host == "vps" and self.one_to_one_nat:
                seg = NAT_VPS_SEGMENT
            host = ns[seg.host]
            cmds += _uplink_commands(seg, router, host, seg.prefixlen)
            cmds.append(["ip", "-n", host, "route", "add", "default", "via", seg.router_address])
        if self.second_vps:
            cmds += self._second_vps_commands()
        cmds.append(["ip", "netns", "exec", router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        if self.one_to_one_nat:
            for public, private in NAT_PAIRS:
                nat = ["ip", "netns", "exec", router, "iptables-nft", "-t", "nat", "-A"]
                cmds.append([*nat, "PREROUTING", "-d", public, "-j", "DNAT", "--to-destination", private])
                cmds.append([*nat, "POSTROUTING", "-s", private, "-j", "SNAT", "--to-source", public])
        if self.ipv6:
            cmds += self._ipv6_commands()
        return cmds

    def _second_vps_commands(self) -> list[list[str]]:
        """vps2 behind the router without a subnet of its own: a /32 each way, on-link."""
        seg, router, host = SECOND_VPS_SEGMENT, self.namespace(ROUTER), self.namespace(SECOND_VPS)
        return [
            *_uplink_commands(seg, router, host, 32),
            ["ip", "-n", router, "route", "add", f"{seg.host_address}/32", "dev", seg.router_device],
            ["ip", "-n", host, "route", "add", "default", "via", seg.router_address, "dev", UPLINK_DEVICE, "onlink"],
        ]

    def _ipv6_commands(self) -> list[list[str]]:
        router = self.namespace(ROUTER)
        cmds: list[list[str]] = []
        for seg in SEGMENTS6:
            host = self.namespace(seg.host)
            cmds += [
                ["ip", "-n", router, "-6", "addr", "add", f"{seg.router_address}/{seg.prefixlen}", "dev", seg.router_device],
                ["ip", "-n", host, "-6", "addr", "add", f"{seg.host_address}/{seg.prefixlen}", "dev", UPLINK_DEVICE],
                ["ip", "-n", host, "-6", "route", "add", "default", "via", seg.router_address],
            ]
        cmds.append(["ip", "netns", "exec", router, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
        return cmds

    def exists(self) -> bool:
        """True if any namespace of this lab exists (a half-built lab counts)."""
        return bool(set(self.namespaces.values()) & set(_list_namespaces()))

    def create(self) -> None:
        """Build the lab. Refuses if any of its namespaces exists already.

        On any failure (or Ctrl-C) whatever this call made is removed again and
        the error is raised as BackendError.
        """
        if self.exists():
            raise BackendError(f"lab {self.prefix!r} already exists: destroy it first (vpnoffload lab down)")
        made: list[str] = []
        try:
            for name in self.namespaces.values():
                _run(["ip", "netns", "add", name])
                made.append(name)
            for argv in self.build_commands():
                _run(argv)
            if self.ipv6:
                self._wait_for_dad()
        except BaseException as exc:
            try:
                self._teardown(made)
            except BackendError as cleanup:
                exc.add_note(f"cleaning up the half-built lab also failed: {cleanup}")
            raise

    def _wait_for_dad(self, timeout: float = 10.0) -> None:
        """Until no address is tentative: only then do IPv6 addresses take traffic
        (and snapshots stop changing)."""
        deadline = time.monotonic() + timeout
        for name in self.namespaces.values():
            while _run(["ip", "-n", name, "-6", "addr", "show", "tentative"]).stdout.strip():
                if time.monotonic() > deadline:
                    raise BackendError(f"IPv6 duplicate address detection did not finish in {name} within {timeout:g} s")
                time.sleep(0.1)

    def destroy(self) -> None:
        """Kill every process in the lab's namespaces, then delete them. Safe to repeat."""
        present = set(_list_namespaces())
        self._teardown([n for n in self.namespaces.values() if n in present])

    def _teardown(self, names: Sequence[str]) -> None:
        for name in names:
            _kill_all(name)
        self._reap_started()
        deadline = time.monotonic() + 5
        while any(namespace_pids(n) for n in names) and time.monotonic() < deadline:
            time.sleep(0.05)
        stuck = [n for n in names if namespace_pids(n)]
        for name in names:
            _run(["ip", "netns", "del", name], check=False)
        left = set(names) & set(_list_namespaces())
        if stuck or left:
            raise BackendError(f"lab teardown incomplete: processes left in {stuck}, namespaces left {sorted(left)}")

    def _reap_started(self) -> None:
        # Our own children are zombies after the kill until waited for.
        for child in self._started:
            proc.stop(child, timeout=2)
        self._started.clear()

    # -- the cable -----------------------------------------------------------

    def pull_cable(self, host: str = "home") -> None:
        """Cut a home box's uplink on the router's side (it keeps its address and default route)."""
        self.namespace(host)
        _run(["ip", "-n", self.namespace(ROUTER), "link", "set", f"to-{host}", "down"])

    def plug_cable(self, host: str = "home") -> None:
        self.namespace(host)
        _run(["ip", "-n", self.namespace(ROUTER), "link", "set", f"to-{host}", "up"])
        if host == SECOND_VPS:  # the kernel dropped the /32 route with the link; a subnet's comes back by itself
            seg = SECOND_VPS_SEGMENT
            _run(["ip", "-n", self.namespace(ROUTER), "route", "replace", f"{seg.host_address}/32", "dev", seg.router_device])

    # -- running things inside -----------------------------------------------

    def exec(self, host: str, *argv: str, check: bool = True, timeout: float = 30,
             env: dict[str, str] | None = None, input: str | None = None,
             cwd: str | os.PathLike[str] | None = None) -> proc.Result:
        """Run ``argv`` in ``host``'s namespace and wait; stdout/stderr captured as text.

        Output goes through temp files, not pipes, so a daemon the command leaves
        behind (openvpn, a watchdog) cannot keep this call waiting.
        """
        return _run(["ip", "netns", "exec", self.namespace(host), *argv], check=check,
                    timeout=timeout, env=child_env(env), input=input, cwd=cwd)

    def popen(self, host: str, *argv: str, **kw: Any) -> proc.Process:
        """Start ``argv`` in the background in ``host``'s namespace; ``destroy`` kills and reaps it.

        stdin/stdout/stderr default to /dev/null; other keywords go to Popen.
        """
        for stream in ("stdin", "stdout", "stderr"):
            kw.setdefault(stream, proc.DEVNULL)
        kw["env"] = child_env(kw.get("env"))
        child = proc.start(["ip", "netns", "exec", self.namespace(host), *argv], **kw)
        self._started.append(child)
        return child

    def tcp_probe(self, host: str, address: str, port: int, *, timeout: float = 1.0, wait: float = 0.0) -> str:
        """Connect from ``host`` to ``address:port``: 'open', 'refused', 'timeout' or 'unreachable'.

        With ``wait`` > 0, retries until 'open' or ``wait`` seconds have passed.
        """
        out = self.exec(host, sys.executable, "-P", "-c", probes.PROBE, address, str(port), str(timeout), str(wait),
                        timeout=timeout + wait + 10)
        return out.stdout.strip()

    def wait_tcp(self, host: str, address: str, port: int, timeout: float = 5.0) -> bool:
        """True once ``host`` can connect to ``address:port``, False after ``timeout`` seconds."""
        return self.tcp_probe(host, address, port, timeout=min(timeout, 1.0), wait=timeout) == "open"

    def http_get(self, host: str, url: str, *, timeout: float = 2.0) -> tuple[int, str]:
        """GET ``url`` from ``host`` (no proxy): (status, body); (0, reason) if no reply came."""
        out = self.exec(host, sys.executable, "-P", "-c", probes.HTTP_GET, url, str(timeout), timeout=timeout + 10)
        status, _, body = out.stdout.partition("\n")
        return int(status), body


@contextlib.contextmanager
def lab_session(prefix: str = DEFAULT_PREFIX, *, ipv6: bool = False, one_to_one_nat: bool = False,
                second_vps: bool = False) -> Iterator[Lab]:
    """Create a lab and always destroy it afterwards (also on Ctrl-C).

    If the lab already exists, nothing is touched: ``create`` raises first.
    """
    lab = Lab(prefix, ipv6=ipv6, one_to_one_nat=one_to_one_nat, second_vps=second_vps)
    lab.create()
    try:
        yield lab
    finally:
        lab.destroy()


def check_prerequisites() -> None:
    """Raise PrerequisiteError (with the fix) if this machine cannot run a lab."""
    if os.geteuid() != 0:
        raise PrerequisiteError("the lab needs root (network namespaces): run it with sudo")
    if shutil.which("ip") is None:
        raise PrerequisiteError("iproute2 is not installed: apt-get install iproute2")
    if not os.path.exists("/dev/net/tun"):
        raise PrerequisiteError("/dev/net/tun is missing: modprobe tun (in a container: --device /dev/net/tun)")
    if shutil.which("openvpn") is None:
        raise PrerequisiteError("openvpn is not installed: apt-get install openvpn")


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for lab processes: no proxies, and this vpnoffload importable.

    Proxies are dropped so lab traffic never leaves the lab; the package's parent
    directory goes first on PYTHONPATH so ``python -m vpnoffload...`` works from
    a source checkout whatever the current directory is.
    """
    env = dict(os.environ if env is None else env)
    for var in _PROXY_VARS:
        env.pop(var, None)
        env.pop(var.upper(), None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    return env


# -- snapshots ----------------------------------------------------------------

# -- the OS layer -------------------------------------------------------------

def _run(argv: list[str], *, check: bool = True, timeout: float = 30, env: dict[str, str] | None = None,
         input: str | None = None, cwd: str | os.PathLike[str] | None = None) -> proc.Result:
    """Run a command; output via temp files (see Lab.exec). Failures become BackendError."""
    return proc.run(argv, check=check, timeout=timeout, env=env, input=input, cwd=cwd, detached_output=True)


def _list_namespaces() -> list[str]:
    # Lines look like "name" or "name (id: 3)".
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(namespace: str) -> list[int]:
    out = _run(["ip", "netns", "pids", namespace], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_all(namespace: str) -> None:
    # SIGKILL, not TERM: openvpn's exit notification would make every teardown wait.
    for pid in namespace_pids(namespace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "(exited)"


def _uplink_commands(seg: Segment, router: str, host: str, prefixlen: int) -> list[list[str]]:
    """A host's uplink: the veth pair between the router and the host, addressed and up."""
    return [
        ["ip", "link", "add", seg.router_device, "netns", router, "type", "veth",
         "peer", "name", UPLINK_DEVICE, "netns", host],
        ["ip", "-n", router, "addr", "add", f"{seg.router_address}/{prefixlen}", "dev", seg.router_device],
        ["ip", "-n", host, "addr", "add", f"{seg.host_address}/{prefixlen}", "dev", UPLINK_DEVICE],
        ["ip", "-n", router, "link", "set", seg.router_device, "up"],
        ["ip", "-n", host, "link", "set", UPLINK_DEVICE, "up"],
    ]
