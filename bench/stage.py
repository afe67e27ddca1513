"""The benchmark's lab: vpnoffload set up with its own CLI, plus the alternatives.

Reuses the step functions of ``vpnoffload.lab.demo`` (build, configure_vps,
copy_to_home, bring_up, start_watchdog, teardown), so the benchmark measures
exactly what ``vpnoffload lab up`` builds, with two differences: the home site
is nginx (fast, so the path is measured, not the backend), and an extra
service forwards the iperf3 port. Next to vpnoffload the VPS runs an nginx
reverse proxy and HAProxy to the home box's tunnel address.

iperf3 holds that port only while item 2 runs (:meth:`Stage.iperf3_serving`);
the rest of the time a listener that accepts every connection does. iperf3
serves one client at a time and closes its listener between tests, so the
watchdog's two simultaneous checks of the service were refused now and then:
swaps of a healthy service that no real server would cause.

:func:`staged` always tears everything down again (processes, namespaces,
files, the system user ``up`` may have created), also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import measure, servers
from vpnoffload import config as vpn_config
from vpnoffload.lab import sites as labsites
from vpnoffload.lab import steps as labsteps
from vpnoffload.lab.netns import Lab, check_prerequisites

WEB_PORT = labsites.WEB_PORT  # the home site (labdemo's "web" service targets it)
VISIT_PORT = 80  # vpnoffload's "web" service on the VPS
NGINX_PORT = 8081  # the nginx reverse proxy on the VPS (new upstream connection per request)
NGINX_KEEPALIVE_PORT = 8083  # the same nginx, with upstream keep-alive
HAPROXY_PORT = 8082  # HAProxy, TCP mode
BULK_PORT = 5201  # at home (iperf3 during item 2, a listener otherwise); vpnoffload's "bulk" service forwards it
BULK_SERVICE = "bulk"
HAPROXY_BULK_PORT = 5202  # HAProxy, TCP mode, to the iperf3 port at home
SERVED_WAIT = 30.0  # after setup, until the visitor gets the page from home

#: Lab namespaces get these (they are per network namespace): many ephemeral
#: ports and deep accept queues, so 1000 connections measure the path, not limits.
SYSCTLS: dict[str, Sequence[str]] = {
    "visitor": ("net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1", "net.core.somaxconn=8192"),
    "vps": ("net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1", "net.core.somaxconn=8192",
            "net.ipv4.tcp_max_syn_backlog=8192"),
    "home": ("net.core.somaxconn=8192", "net.ipv4.tcp_max_syn_backlog=8192"),
}


class SetupError(RuntimeError):
    """Building the lab or setting vpnoffload up in it failed (the lab is torn down again)."""


class Narrator:
    """Progress on stderr: one line per step; commands and their output only with ``verbose``."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose

    def _say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def section(self, title: str) -> None:
        if self.verbose:
            self._say(f"-- {title}")

    def command(self, host: str, argv: Sequence[str]) -> None:
        if self.verbose:
            self._say(f"   {host}# {' '.join(argv)}")

    def output(self, text: str) -> None:
        if self.verbose:
            for line in text.rstrip().splitlines():
                self._say(f"      {line}")

    def note(self, text: str) -> None:
        if self.verbose:
            self._say(f"   {text}")

    def ok(self, text: str) -> None:
        if self.verbose:
            self._say(f"   ok: {text}")

    def warn(self, text: str) -> None:
        self._say(f"   warning: {text}")

    def waiting(self, text: str) -> contextlib.AbstractContextManager[None]:
        self.note(text)
        return contextlib.nullcontext()

    def step(self, text: str) -> None:
        """Always shown: what the benchmark is doing now."""
        self._say(f"[bench {time.strftime('%H:%M:%S')}] {text}")


@dataclass
class Stage:
    """A lab with vpnoffload up (watchdog included) and the home site running."""

    lab: Lab
    sites: labsites.Sites
    narrator: Narrator
    scratch: Path
    home_tunnel: str  # the home box's address inside the tunnel
    watchdog_pid: int
    site: servers.Running
    bulk_server: servers.Running  # what holds BULK_PORT at home now: the listener, or iperf3 in item 2
    others: list[servers.Running] = field(default_factory=list)

    @property
    def vps_ns(self) -> str:
        return self.lab.namespace("vps")

    def vpnoffload_pids(self) -> dict[str, list[int]]:
        """vpnoffload's userspace on the VPS: OpenVPN, the watchdog, and whichever of its helpers
        run now (the friendly-page server runs only while a web service needs it; the swap child
        and the config snapshot only for a moment). Every one counts in the sum."""
        ns = self.vps_ns
        return {
            "OpenVPN": measure.find_pids(ns, comm_is="openvpn"),
            "watchdog": [self.watchdog_pid] if self.watchdog_pid in measure.namespace_pids(ns) else [],
            "page server": measure.find_pids(ns, argv_has=("vpnoffload.fallback.pageserver",)),
            "swap child": measure.find_pids(ns, argv_has=("vpnoffload.watch.swap",)),
            "config snapshot": measure.find_pids(ns, argv_has=("vpnoffload.lean.snapshot",)),
        }

    def conntrack_count(self) -> int:
        out = self.lab.exec("vps", "conntrack", "-C", check=False, timeout=10).stdout.strip()
        return int(out) if out.isdigit() else 0

    def upstream(self, port: int = WEB_PORT) -> str:
        return f"{self.home_tunnel}:{port}"

    def start_alternatives(self) -> tuple[servers.Running, servers.Running]:
        """The nginx reverse proxy and HAProxy on the VPS, both to the home site over the tunnel."""
        vps = self.lab.vps_address
        nginx = servers.start_nginx_proxy(self.lab, self.scratch, "vps", vps, NGINX_PORT, NGINX_KEEPALIVE_PORT,
                                          self.upstream())
        haproxy = servers.start_haproxy(self.lab, self.scratch, "vps", vps, HAPROXY_PORT, self.upstream(),
                                        HAPROXY_BULK_PORT, self.upstream(BULK_PORT))
        self.others += [nginx, haproxy]
        return nginx, haproxy

    @contextlib.contextmanager
    def iperf3_serving(self) -> Iterator[servers.Running]:
        """iperf3 instead of the listener on the bulk port at home, and the listener back after,
        also when the runs fail."""
        servers.stop(self.bulk_server)
        try:
            self.bulk_server = servers.start_iperf3(self.lab, self.scratch, "home", BULK_PORT)
            yield self.bulk_server
        finally:
            servers.stop(self.bulk_server)
            self.bulk_server = servers.start_listener(self.lab, self.scratch, "home", BULK_PORT)

    def home_served(self, port: int = VISIT_PORT) -> bool:
        status, body = self.lab.http_get("visitor", f"http://{self.lab.vps_address}:{port}/", timeout=5)
        return status == 200 and servers.HOME_MARKER in body


def unique_prefix(kind: str = "b") -> str:
    """A lab prefix no other lab on this machine uses (several may run at once)."""
    return f"vpnobench{kind}{uuid.uuid4().hex[:6]}"


def _sysctls(lab: Lab) -> None:
    for host, settings in SYSCTLS.items():
        for setting in settings:
            lab.exec(host, "sysctl", "-q", "-w", setting)


@contextlib.contextmanager
def staged(scratch: Path, narrator: Narrator, prefix: str | None = None) -> Iterator[Stage]:
    """Build the lab, set vpnoffload up on both ends, start the home site and the bulk port's
    listener; always tear down."""
    check_prerequisites()
    lab, sites = labsteps.open_lab(prefix or unique_prefix())
    n = narrator
    try:
        try:
            stage = _set_up(lab, sites, scratch, n)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # whatever broke, the caller may try again with a fresh lab
            raise SetupError(f"{type(exc).__name__}: {exc}") from exc
        yield stage
    finally:
        n.step(f"tearing lab {lab.prefix} down")
        labsteps.teardown(lab, sites, n)


def _set_up(lab: Lab, sites: labsites.Sites, scratch: Path, n: Narrator) -> Stage:
    """Everything ``lab up`` does, with nginx as the home site, a bulk (iperf3) service and this bench's sysctls."""
    n.step(f"building lab {lab.prefix} and setting vpnoffload up with its own CLI")
    labsteps.build(lab, sites, n)
    _sysctls(lab)
    labsteps.configure_vps(lab, sites, n)
    labsites.vpnoffload(lab, sites, "vps", "service", "add", BULK_SERVICE, "--listen", str(BULK_PORT),
                       "--target", str(BULK_PORT), "--check", "tcp", narrator=n)
    labsteps.copy_to_home(sites, n)
    site = servers.start_nginx_site(lab, scratch, "home", WEB_PORT)
    bulk_server = servers.start_listener(lab, scratch, "home", BULK_PORT)
    labsteps.bring_up(lab, sites, n)
    labsteps.start_watchdog(lab, sites, n, available=True)
    config = vpn_config.load(sites.config("vps"))
    stage = Stage(lab, sites, n, scratch, str(config.homes[next(iter(config.homes))].address),
                  _background_pid(sites, "watch"), site, bulk_server)
    if not _wait(stage.home_served, SERVED_WAIT):
        status = lab.exec("vps", sys.executable, "-m", "vpnoffload", "-c", str(sites.config("vps")), "status",
                          check=False, timeout=30)
        raise RuntimeError(f"the visitor is not served from home through vpnoffload after {SERVED_WAIT:g} s; "
                           f"vpnoffload status says:\n{status.stdout}{status.stderr}")
    return stage




def _background_pid(sites: labsites.Sites, what: str) -> int:
    """The pid of a process labdemo started in the background (it records them for teardown)."""
    for entry in sites.load_manifest().get("background", []):
        if entry.get("what") == what:
            return int(entry["pid"])
    raise RuntimeError(f"labdemo recorded no background process {what!r}")


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False
