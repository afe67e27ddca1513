"""``vpnoffload lab up|demo|down``: the whole story, told in a namespace lab.

Both ends are set up with vpnoffload's own commands run inside the lab's
namespaces (``ip netns exec <prefix>-vps python -m vpnoffload ...``), exactly
the commands a user runs on two real machines, so the demo teaches the real
workflow. Every step is a plain function of a :class:`~vpnoffload.lab.netns.Lab`
and a :class:`Narrator`; tests run them with a recording narrator and a fake
lab. Only the narrator writes to the terminal (``rich`` is imported by
:class:`RichNarrator` alone, so ``vpnoffload --help`` stays fast).

The lab's files live in ``/run/vpnoffload-lab/<prefix>/`` (0755: OpenVPN drops
privileges and must still read the CRL and per-home files). Teardown runs the
user's ``down`` commands first (``up`` may have created the ``vpnoffload``
system user, which lives outside the namespaces), then deletes the namespaces
and the files, so the machine is left as it was found.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpnoffload import users
from vpnoffload.errors import BackendError, ConfigError, ExitStatus, VpnOffloadError
from vpnoffload.lab.netns import ROUTER, Lab, check_prerequisites
from vpnoffload.lab.narrate import Narrator, RecordingNarrator, RichNarrator  # noqa: F401 (re-exported)

LAB_ROOT = Path("/run/vpnoffload-lab")
TUNNEL_SUBNET = "198.51.100.0/24"
SERVICE = "web"
HOSTNAME = "blog.example.org"
WEB_PORT = 8080
HOME_MARKER = "served from home"

COMMAND_TIMEOUT = 90.0  # one vpnoffload command (up waits for the tunnel)
FAILOVER_WAIT = 15.0  # cable pulled -> friendly page
RECOVERY_WAIT = 30.0  # cable back -> real site
POLL_EVERY = 0.2  # a new visitor connection this often while waiting
POLL_TIMEOUT = 1.0  # each of those connections gives up after this
WATCH_READY_WAIT = 10.0  # the watchdog's first round of checks, then READY=1
STOP_WAIT = 3.0  # background processes get this long to exit on SIGTERM


class LabStepError(VpnOffloadError):
    """A step of the lab or demo failed; the message names the step and why."""

    exit_status = ExitStatus.FAILED


# ------------------------------------------------------------------ files


@dataclass(frozen=True)
class Sites:
    """The lab's directory: one config dir per end, plus what teardown needs to know."""

    root: Path

    @classmethod
    def for_prefix(cls, prefix: str, base: Path = LAB_ROOT) -> Sites:
        return cls(base / prefix)

    def site(self, host: str) -> Path:
        return self.root / host

    def config(self, host: str) -> Path:
        return self.site(host) / "vpnoffload.toml"

    @property
    def export(self) -> Path:
        """Where ``render home`` writes the profile on the VPS before it is "copied" home."""
        return self.site("vps") / "export"

    @property
    def manifest(self) -> Path:
        return self.root / "lab.json"

    @property
    def watch_log(self) -> Path:
        return self.site("vps") / "watch.log"

    def create(self) -> None:
        """Make the directories world-traversable (OpenVPN reads files there after dropping root)."""
        for path in (self.root.parent, self.root, self.site("vps"), self.site("home")):
            path.mkdir(exist_ok=True)
            os.chmod(path, 0o755)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.parent.rmdir()  # only if no other lab is using it

    def load_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return {}

    def update_manifest(self, **changes: Any) -> None:
        data = self.load_manifest() | changes
        self.manifest.write_text(json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------ running vpnoffload inside


def shown_argv(sites: Sites, host: str, *args: str) -> list[str]:
    """The command as a user types it on the real machine."""
    return ["vpnoffload", "-c", str(sites.config(host)), *args]


def vpnoffload(lab: Lab, sites: Sites, host: str, *args: str, narrator: Narrator,
               ok_codes: Collection[int] = (0,)) -> subprocess.CompletedProcess:
    """Narrate and run ``vpnoffload -c <host's config> ARGS`` inside ``host``'s namespace.

    Its output is narrated; an exit status outside ``ok_codes`` raises
    LabStepError naming the command and its last error line.
    """
    narrator.command(host, shown_argv(sites, host, *args))
    proc = lab.exec(host, sys.executable, "-m", "vpnoffload", "-c", str(sites.config(host)), *args,
                    check=False, timeout=COMMAND_TIMEOUT)
    shown = (proc.stdout + proc.stderr).strip("\n").rstrip()
    if shown:
        narrator.output(textwrap.dedent(shown))
    if proc.returncode not in ok_codes:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines() or [f"exit status {proc.returncode}"]
        raise LabStepError(f"'vpnoffload {' '.join(args)}' on {host} failed (exit {proc.returncode}): {lines[-1]}")
    return proc


def available_commands() -> frozenset[str]:
    """Top-level vpnoffload commands of this version (``watch`` and ``status`` are newer)."""
    import typer.main

    from vpnoffload.cli.app import app

    return frozenset(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def start_background(lab: Lab, sites: Sites, host: str, what: str, argv: Sequence[str],
                     log: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a long-running process in ``host`` and remember its pid for ``lab down``.

    It gets its own session, so a Ctrl-C meant for the demo reaches only the
    demo, which then tears everything down in order.
    """
    with open(log or os.devnull, "ab") as out:
        proc = lab.popen(host, *argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    background = sites.load_manifest().get("background", [])
    sites.update_manifest(background=[*background, {"host": host, "what": what, "pid": proc.pid}])
    return proc


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    """A systemd-style notify socket (a filesystem socket works across namespaces)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        yield sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def wait_ready(sock: socket.socket, proc: subprocess.Popen, timeout: float) -> bool:
    """True once READY=1 arrives on ``sock``; False if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(left, 0.2))
        try:
            message = sock.recv(4096).decode(errors="replace")
        except TimeoutError:
            continue
        if "READY=1" in message.splitlines():
            return True
    return False


# ------------------------------------------------------------------ the steps of `lab up`


def build(lab: Lab, sites: Sites, n: Narrator) -> None:
    n.section(f"Build the lab '{lab.prefix}': four network namespaces on this machine")
    n.note(f"  visitor {lab.visitor_address}, vps {lab.vps_address}, home {lab.home_uplink_address}, "
           f"all joined by a router ({lab.namespace(ROUTER)}); no NAT, so every address is real")
    sites.create()
    # Recorded before anything runs: teardown removes the system user only if it was not there.
    sites.update_manifest(prefix=lab.prefix, user_existed=users.exists())
    lab.create()
    n.ok(f"namespaces {', '.join(lab.namespaces.values())}; files in {sites.root}")


def configure_vps(lab: Lab, sites: Sites, n: Narrator) -> None:
    n.section("On the VPS: config, PKI and one offloaded service")
    n.note(f"(each vps# command runs as 'ip netns exec {lab.namespace('vps')} ...')")
    vpnoffload(lab, sites, "vps", "init", "--vps-address", lab.vps_address, "--tunnel-subnet", TUNNEL_SUBNET,
               narrator=n)
    vpnoffload(lab, sites, "vps", "service", "add", SERVICE, "--listen", "80", "--target", str(WEB_PORT),
               "--check", "http:/", "--hostname", HOSTNAME, narrator=n)
    sites.export.mkdir(mode=0o700, exist_ok=True)
    vpnoffload(lab, sites, "vps", "render", "home", "--out", str(sites.export), narrator=n)


def copy_to_home(sites: Sites, n: Narrator) -> None:
    n.section("Copy the config and the home box's profile to home (on real machines: scp)")
    state = sites.site("home") / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    copies = [(sites.config("vps"), sites.config("home")), (sites.export / "home.ovpn", state / "home.ovpn")]
    for src, dst in copies:
        n.command("you", ["cp", str(src), str(dst)])
        if not src.is_file():
            raise LabStepError(f"copying to home failed: {src} was not written")
        shutil.copyfile(src, dst)
    os.chmod(state / "home.ovpn", 0o600)  # it holds the home box's private key
    n.ok("home has the config (no secrets) and its profile (0600)")


def start_home_site(lab: Lab, sites: Sites, n: Narrator) -> None:
    n.section(f"At home: the web site the VPS will forward to (port {WEB_PORT})")
    argv = [sys.executable, "-m", "vpnoffload.lab.web", "--port", str(WEB_PORT), "--name", "home"]
    n.command("home", ["python3", "-m", "vpnoffload.lab.web", "--port", str(WEB_PORT), "--name", "home"])
    n.note("  (left running in the background)")
    start_background(lab, sites, "home", "labweb", argv)
    if not lab.wait_tcp("home", "127.0.0.1", WEB_PORT, timeout=5):
        raise LabStepError(f"the demo web site did not start listening on port {WEB_PORT} at home within 5 s")
    n.ok(f"home serves http://127.0.0.1:{WEB_PORT}/")


def bring_up(lab: Lab, sites: Sites, n: Narrator) -> None:
    n.section("Bring both ends up")
    vpnoffload(lab, sites, "vps", "up", "vps", narrator=n)
    vpnoffload(lab, sites, "home", "up", "home", narrator=n)


def start_watchdog(lab: Lab, sites: Sites, n: Narrator, available: bool) -> bool:
    """Start ``vpnoffload watch`` on the VPS if this version has it; True if it runs."""
    n.section("On the VPS: the watchdog that swaps in the friendly page")
    if not available:
        n.warn("'vpnoffload watch' is not available in this version: no friendly page when home is down")
        return False
    argv = [sys.executable, "-m", "vpnoffload", "-c", str(sites.config("vps")), "watch"]
    n.command("vps", shown_argv(sites, "vps", "watch"))
    n.note("  (left running in the background; on a real VPS systemd runs it as vpnoffload-watch)")
    # Wait for READY=1 as systemd would: it is sent after the first round of checks,
    # before which a pulled cable would go unnoticed.
    with notify_socket(sites.root / "notify.sock") as sock:
        proc = start_background(lab, sites, "vps", "watch", argv, log=sites.watch_log,
                                env={**os.environ, "NOTIFY_SOCKET": sock.getsockname()})
        ready = wait_ready(sock, proc, WATCH_READY_WAIT)
    if proc.poll() is not None:
        raise LabStepError(f"'vpnoffload watch' exited at once (status {proc.returncode}): {_last_line(sites.watch_log)}")
    if not ready:
        raise LabStepError(f"'vpnoffload watch' did not report ready within {WATCH_READY_WAIT:g} s "
                           f"(log: {sites.watch_log})")
    n.ok(f"watchdog running (log: {sites.watch_log})")
    return True


def check_visitor(lab: Lab, n: Narrator) -> None:
    """The visitor gets home's page through the VPS, and home sees the visitor's own address."""
    n.section("The visitor asks the VPS for the site")
    url = f"http://{lab.vps_address}/"
    n.command("visitor", ["curl", url])
    status, body = lab.http_get("visitor", url, timeout=5)
    if status != 200 or HOME_MARKER not in body:
        raise LabStepError(f"the visitor did not get home's page from {url}: {_describe(status, body)}")
    n.output(body)
    n.command("visitor", ["curl", f"{url}whoami"])
    status, body = lab.http_get("visitor", f"{url}whoami", timeout=5)
    seen = body.strip()
    if status != 200 or seen != lab.visitor_address:
        raise LabStepError(f"home saw the visitor as {seen or _describe(status, body)}, not {lab.visitor_address}")
    n.output(body)
    n.ok(f"served from home, and home sees the visitor's real address {seen} (forwarded, not proxied)")


def run_up(lab: Lab, sites: Sites, n: Narrator, commands: Collection[str] | None = None, *,
           keep_on_failure: bool = False) -> bool:
    """Everything ``lab up`` does; on failure (or Ctrl-C) the lab is torn down again
    unless ``keep_on_failure``. Returns whether the watchdog runs.
    """
    commands = available_commands() if commands is None else commands
    try:
        build(lab, sites, n)
        configure_vps(lab, sites, n)
        copy_to_home(sites, n)
        start_home_site(lab, sites, n)
        bring_up(lab, sites, n)
        watching = start_watchdog(lab, sites, n, "watch" in commands)
        check_visitor(lab, n)
    except BaseException as exc:
        if not keep_on_failure:
            _teardown_after(exc, lab, sites, n)
        raise
    return watching


def how_to_poke(lab: Lab, sites: Sites, n: Narrator, commands: Collection[str] = ()) -> None:
    n.section(f"The lab '{lab.prefix}' is up")
    n.note("Visit the site as the visitor:")
    n.command("you", ["ip", "netns", "exec", lab.namespace("visitor"), "curl", f"http://{lab.vps_address}/"])
    if "status" in commands:
        n.note("See what the VPS thinks:")
        n.command("you", ["ip", "netns", "exec", lab.namespace("vps"), *shown_argv(sites, "vps", "status")])
    n.note("Pull home's cable (and 'up' to plug it back in):")
    n.command("you", ["ip", "-n", lab.namespace(ROUTER), "link", "set", lab.home_cable, "down"])
    n.note("Remove everything when done:")
    n.command("you", ["vpnoffload", "lab", "down", "--prefix", lab.prefix])


# ------------------------------------------------------------------ the demo's own steps


@dataclass
class DemoResult:
    failover: float | None = None  # seconds from cable pulled to the first friendly page
    recovery: float | None = None  # seconds from cable back to the first page from home


def show_status(lab: Lab, sites: Sites, n: Narrator, available: bool, when: str) -> None:
    n.section(f"What 'vpnoffload status' says {when}")
    if not available:
        n.warn("'vpnoffload status' is not available in this version: step skipped")
        return
    vpnoffload(lab, sites, "vps", "status", narrator=n, ok_codes=(int(ExitStatus.OK), int(ExitStatus.UNHEALTHY)))


def _cable(lab: Lab, n: Narrator, *, up: bool) -> None:
    """Show, then do, the one command that pulls (or plugs back) home's cable."""
    n.command("you", ["ip", "-n", lab.namespace(ROUTER), "link", "set", lab.home_cable, "up" if up else "down"])
    if up:
        lab.plug_cable()
    else:
        lab.pull_cable()


def _first_reply(lab: Lab, n: Narrator, *, want: int, marker: str, wait: float, failure: str,
                 clock: Callable[[], float]) -> float:
    """Seconds from now until a new visitor connection first gets ``want`` (and ``marker``)."""
    start = clock()
    with n.waiting(f"the visitor tries a new connection every {POLL_EVERY:g} s (at most {wait:g} s)"):
        poll = visitor_poll(lab, want=want, marker=marker, wait=wait)
    if poll["at"] is None:
        raise LabStepError(f"{failure} (visitor saw: {_tally(poll)})")
    n.output(f"{poll['attempts']} new connections: {_tally(poll)}")
    return poll["at"] - start


def fail_over(lab: Lab, n: Narrator, *, wait: float = FAILOVER_WAIT,
              clock: Callable[[], float] = time.monotonic) -> float:
    """Pull home's cable; seconds until a new visitor connection gets the friendly page (503)."""
    n.section("Pull home's cable: home vanishes from the internet")
    _cable(lab, n, up=False)
    elapsed = _first_reply(lab, n, want=503, marker="", wait=wait, clock=clock,
                           failure=f"the friendly page did not appear within {wait:g} s of pulling the cable")
    n.ok(f"failover: the visitor got the friendly page (HTTP 503) {elapsed:.1f} s after the cable was pulled")
    return elapsed


def recover(lab: Lab, n: Narrator, *, wait: float = RECOVERY_WAIT,
            clock: Callable[[], float] = time.monotonic) -> float:
    """Plug the cable back; seconds until a new visitor connection is served from home again."""
    n.section("Plug the cable back in")
    _cable(lab, n, up=True)
    elapsed = _first_reply(lab, n, want=200, marker=HOME_MARKER, wait=wait, clock=clock,
                           failure=f"the site did not come back from home within {wait:g} s of plugging the cable")
    n.ok(f"recovery: the visitor was served from home again {elapsed:.1f} s after the cable came back")
    return elapsed


def outage_without_watchdog(lab: Lab, n: Narrator) -> None:
    """Without ``watch``: show what visitors get instead of the friendly page, then restore."""
    n.section("Pull home's cable (without the watchdog)")
    _cable(lab, n, up=False)
    n.command("visitor", ["curl", "--max-time", "2", f"http://{lab.vps_address}/"])
    status, body = lab.http_get("visitor", f"http://{lab.vps_address}/", timeout=2)
    n.warn(f"the visitor gets {_describe(status, body)}: this is what 'vpnoffload watch' replaces with a friendly page")
    _cable(lab, n, up=True)
    _first_reply(lab, n, want=200, marker=HOME_MARKER, wait=RECOVERY_WAIT, clock=time.monotonic,
                 failure=f"the site did not come back within {RECOVERY_WAIT:g} s of plugging the cable")
    n.ok("cable back: the visitor is served from home again")


def run_demo(lab: Lab, sites: Sites, n: Narrator, *, keep: bool = False,
             commands: Collection[str] | None = None) -> DemoResult:
    """The whole story. The lab is always torn down afterwards (success, failure,
    Ctrl-C, SIGTERM) unless ``keep``; then it is left as it is, also after a failure.
    """
    commands = available_commands() if commands is None else commands
    has_status = "status" in commands
    result = DemoResult()
    with _sigterm_as_interrupt():
        watching = run_up(lab, sites, n, commands, keep_on_failure=keep)
        try:
            show_status(lab, sites, n, has_status, "while home is up")
            if watching:
                result.failover = fail_over(lab, n)
                show_status(lab, sites, n, has_status, "while home is down")
                result.recovery = recover(lab, n)
                show_status(lab, sites, n, has_status, "once home is back")
            else:
                outage_without_watchdog(lab, n)
            _summary(result, n)
        except BaseException as exc:
            if not keep:
                _teardown_after(exc, lab, sites, n)
            raise
        if keep:
            how_to_poke(lab, sites, n, commands)
        else:
            teardown(lab, sites, n)
    return result


def _summary(result: DemoResult, n: Narrator) -> None:
    n.section("Summary")
    if result.failover is None:
        n.warn("no failover was measured: this version has no 'vpnoffload watch'")
        return
    n.ok(f"failover (cable pulled -> friendly page): {result.failover:.1f} s")
    n.ok(f"recovery (cable back -> served from home): {result.recovery:.1f} s")


# ------------------------------------------------------------------ opening and tearing down


def open_lab(prefix: str, base: Path = LAB_ROOT) -> tuple[Lab, Sites]:
    """The lab to build: checks prerequisites and that no lab of that name is up."""
    lab = Lab(prefix)  # validates the prefix before it names a directory
    check_prerequisites()
    sites = Sites.for_prefix(prefix, base)
    if lab.exists():
        raise ConfigError(f"a lab named {prefix} is already up; run 'vpnoffload lab down --prefix {prefix}' first")
    if sites.root.exists():
        _forget(sites, None)  # files of a lab whose namespaces are gone (a crash, a reboot)
    return lab, sites


def run_down(prefix: str, n: Narrator, base: Path = LAB_ROOT) -> bool:
    """``lab down``: remove the lab and its files. False if there was nothing to remove."""
    lab = Lab(prefix)
    check_prerequisites()
    sites = Sites.for_prefix(prefix, base)
    if not lab.exists() and not sites.root.exists():
        n.note(f"no lab named {prefix} is up; nothing to do")
        return False
    teardown(lab, sites, n)
    return True


def teardown(lab: Lab, sites: Sites, n: Narrator) -> None:
    """Stop what the lab started, run the user's ``down`` on both ends, delete everything.

    Ctrl-C is ignored meanwhile so a second one cannot leave half a lab. The
    ``down`` commands are best effort (the namespaces go anyway); only a lab
    that cannot be deleted raises.
    """
    n.section(f"Tear down the lab '{lab.prefix}'")
    with _uninterruptible():
        alive = lab.exists()
        if alive:
            _stop_background(lab, sites, n)
            for host in ("home", "vps"):
                if sites.config(host).is_file():
                    try:
                        vpnoffload(lab, sites, host, "down", host, narrator=n)
                    except BackendError as exc:  # a timeout: the namespace is deleted anyway
                        n.warn(str(exc))
                    except LabStepError as exc:
                        n.warn(f"{exc} (continuing: the namespaces are deleted anyway)")
        lab.destroy()
        _forget(sites, n)
    n.ok(f"lab {lab.prefix} removed: no namespace, process or file of it is left")


def _teardown_after(exc: BaseException, lab: Lab, sites: Sites, n: Narrator) -> None:
    """Tear down after a failed step; a teardown problem is attached to the original error."""
    try:
        teardown(lab, sites, n)
    except VpnOffloadError as cleanup:
        exc.add_note(f"tearing the lab down also failed: {cleanup}")


def _stop_background(lab: Lab, sites: Sites, n: Narrator) -> None:
    """SIGTERM the watchdog and web site first, so nothing changes rules while ``down`` runs."""
    for entry in sites.load_manifest().get("background", []):
        pid, host = int(entry["pid"]), str(entry["host"])
        if not _in_namespace(pid, lab.namespace(host)):
            continue  # gone already, or the pid now belongs to someone else
        n.command(host, ["kill", str(pid)])
        n.note(f"  (stops {_STOP_NOTES.get(entry.get('what'), entry.get('what', 'it'))})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        while _in_namespace(pid, lab.namespace(host)) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Whatever is still running is killed with the namespace (Lab.destroy).


_STOP_NOTES = {
    "watch": "the watchdog; on a real VPS: systemctl stop vpnoffload-watch",
    "labweb": "the demo web site",
}


def _in_namespace(pid: int, namespace: str) -> bool:
    try:
        proc = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and namespace in proc.stdout.split()


def _forget(sites: Sites, n: Narrator | None) -> None:
    """Remove the lab's files, and the system user if the lab's ``up`` created it."""
    manifest = sites.load_manifest()
    # `down vps` deletes the user it created; this covers a down that failed or never ran.
    if manifest.get("user_existed") is False and users.exists():
        users.delete()
        if n is not None:
            n.note(f"deleted system user {users.RUN_AS} (the lab created it)")
    sites.remove()


# ------------------------------------------------------------------ helpers


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A killed demo (SIGTERM) still tears its lab down, like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def visitor_poll(lab: Lab, *, want: int, marker: str, wait: float) -> dict[str, Any]:
    """Poll the site as the visitor, a new connection every POLL_EVERY s, until one gets ``want``.

    Runs as one process in the visitor's namespace. Returns ``at`` (its
    time.monotonic() at the first matching reply, comparable with ours: the
    clock is system-wide) or None, the number of attempts and a tally of what
    came back.
    """
    out = lab.exec("visitor", sys.executable, "-c", _POLL, f"http://{lab.vps_address}/", str(want), marker,
                   str(wait), str(POLL_EVERY), str(POLL_TIMEOUT), timeout=wait + POLL_TIMEOUT + 10)
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise LabStepError(f"the visitor's poller printed no result: {out.stderr.strip()[-200:]}") from None


def _tally(poll: dict[str, Any]) -> str:
    """What the visitor's connections got, e.g. '8x no answer, 1x HTTP 503, 4 still waiting'."""
    tally: dict[str, int] = poll.get("tally") or {}
    parts = [f"{count}x {what}" for what, count in sorted(tally.items(), key=lambda kv: -kv[1])]
    pending = int(poll.get("attempts", 0)) - sum(tally.values())
    if pending > 0:
        parts.append(f"{pending} still waiting")
    return ", ".join(parts) or "nothing"


def _describe(status: int, body: str) -> str:
    if status == 0:
        return f"no answer ({body.strip() or 'timed out'})"
    return f"HTTP {status}"


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


# Run inside the visitor's namespace by visitor_poll: each attempt is a new
# connection in its own thread, so a black-holed attempt does not delay the next.
_POLL = r"""
import json, os, sys, threading, time, urllib.error, urllib.request
url, want, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
wait, every, timeout = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
lock, done, tally, hit = threading.Lock(), threading.Event(), {}, []

def attempt():
    try:
        with opener.open(url, timeout=timeout) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except Exception:
        status, body = 0, b""
    at = time.monotonic()
    with lock:
        what = f"HTTP {status}" if status else "no answer"
        tally[what] = tally.get(what, 0) + 1
        if status == want and marker.encode() in body and not hit:
            hit.append(at)
            done.set()

deadline, attempts = time.monotonic() + wait, 0
while not done.is_set() and time.monotonic() < deadline:
    threading.Thread(target=attempt, daemon=True).start()
    attempts += 1
    done.wait(every)
with lock:
    sys.stdout.write(json.dumps({"at": hit[0] if hit else None, "attempts": attempts, "tally": dict(tally)}))
sys.stdout.flush()
os._exit(0)
"""
