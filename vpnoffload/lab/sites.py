"""The lab's files and how vpnoffload runs inside its namespaces, plus the visitor's poll.

The lab's files live in ``/run/vpnoffload-lab/<prefix>/`` (0755: OpenVPN drops
privileges and must still read the CRL and per-home files).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpnoffload import proc
from vpnoffload.errors import ExitStatus, VpnOffloadError
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.narrate import Narrator

LAB_ROOT = Path("/run/vpnoffload-lab")
TUNNEL_SUBNET = "198.51.100.0/24"
SERVICE = "web"
HOSTNAME = "blog.example.org"
WEB_PORT = 8080
HOME_MARKER = "served from home"
#: A page the demo's service keeps an offline copy of (the lab web server marks it cacheable).
KEPT_PAGE = "/about.html"
OFFLINE_COPY_WAIT = 15.0  # watch started -> the first copy is on disk (the copier runs 3 s in)

COMMAND_TIMEOUT = 90.0  # one vpnoffload command (up waits for the tunnel)
FAILOVER_WAIT = 15.0  # cable pulled -> friendly page
RECOVERY_WAIT = 30.0  # cable back -> real site
POLL_EVERY = 0.2  # a new visitor connection this often while waiting
POLL_TIMEOUT = 1.0  # each of those connections gives up after this
WATCH_READY_WAIT = 10.0  # the watchdog's first round of checks, then READY=1
STOP_WAIT = 3.0  # background processes get this long to exit on SIGTERM

#: The commands whose use the demo shows (tests take some away to see the plainer story).
DEMO_COMMANDS = frozenset({"watch", "status"})


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
    def vps_run(self) -> Path:
        """The VPS's ``STATE_DIR/run`` (the state dir defaults to beside the config)."""
        return self.site("vps") / "state" / "run"

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
            manifest: dict[str, Any] = json.loads(self.manifest.read_text())
            return manifest
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
               ok_codes: Collection[int] = (0,)) -> proc.Result:
    """Narrate and run ``vpnoffload -c <host's config> ARGS`` inside ``host``'s namespace.

    Its output is narrated; an exit status outside ``ok_codes`` raises
    LabStepError naming the command and its last error line.
    """
    narrator.command(host, shown_argv(sites, host, *args))
    result = lab.exec(host, sys.executable, "-P", "-m", "vpnoffload", "-c", str(sites.config(host)), *args,
                      check=False, timeout=COMMAND_TIMEOUT)
    shown = (result.stdout + result.stderr).strip("\n").rstrip()
    if shown:
        narrator.output(textwrap.dedent(shown))
    if result.returncode not in ok_codes:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines() or [f"exit status {result.returncode}"]
        raise LabStepError(f"'vpnoffload {' '.join(args)}' on {host} failed (exit {result.returncode}): {lines[-1]}")
    return result


def start_background(lab: Lab, sites: Sites, host: str, what: str, argv: Sequence[str],
                     log: Path | None = None, env: dict[str, str] | None = None) -> proc.Process:
    """Start a long-running process in ``host`` and remember its pid for ``lab down``.

    It gets its own session, so a Ctrl-C meant for the demo reaches only the
    demo, which then tears everything down in order.
    """
    with open(log or os.devnull, "ab") as out:
        child = lab.popen(host, *argv, stdout=out, stderr=proc.STDOUT, start_new_session=True, env=env)
    background = sites.load_manifest().get("background", [])
    sites.update_manifest(background=[*background, {"host": host, "what": what, "pid": child.pid}])
    return child


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


def wait_ready(sock: socket.socket, child: proc.Process, timeout: float) -> bool:
    """True once READY=1 arrives on ``sock``; False if ``child`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while child.poll() is None and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(left, 0.2))
        try:
            message = sock.recv(4096).decode(errors="replace")
        except TimeoutError:
            continue
        if "READY=1" in message.splitlines():
            return True
    return False


# ------------------------------------------------------------------ helpers


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
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
def sigterm_as_interrupt() -> Iterator[None]:
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
    out = lab.exec("visitor", sys.executable, "-P", "-c", _POLL, f"http://{lab.vps_address}/", str(want), marker,
                   str(wait), str(POLL_EVERY), str(POLL_TIMEOUT), timeout=wait + POLL_TIMEOUT + 10)
    try:
        poll: dict[str, Any] = json.loads(out.stdout)
        return poll
    except ValueError:
        raise LabStepError(f"the visitor's poller printed no result: {out.stderr.strip()[-200:]}") from None


def tally(poll: dict[str, Any]) -> str:
    """What the visitor's connections got, e.g. '8x no answer, 1x HTTP 503, 4 still waiting'."""
    tally: dict[str, int] = poll.get("tally") or {}
    parts = [f"{count}x {what}" for what, count in sorted(tally.items(), key=lambda kv: -kv[1])]
    pending = int(poll.get("attempts", 0)) - sum(tally.values())
    if pending > 0:
        parts.append(f"{pending} still waiting")
    return ", ".join(parts) or "nothing"


def describe_reply(status: int, body: str) -> str:
    if status == 0:
        return f"no answer ({body.strip() or 'timed out'})"
    return f"HTTP {status}"


def last_line(path: Path) -> str:
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
