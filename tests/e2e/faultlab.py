"""What the truth tests (issue 21) and the fault catalogue (issue 22 item 1) share: one
deployment per module in a shared lab, a home app whose behaviour a test can switch, a
visitor's view of one new connection, and the check that ``status --json`` says what
that visitor just got.

The home app (:data:`APP`) serves each configured target port; per connection it reads
its mode from a file: ``ok`` (answers at once with the visitor's address), ``slow``
(answers after 2 s), ``trickle`` (sends its status line one byte per 0.3 s, for at
most 20 s), ``bulk`` (a 200 head, then as many bytes as the path takes, for 15 s) or
``reset-once`` (this one request is answered with a TCP reset, and the mode is ``ok`` again). A test that stops it (``Deployment.stop_app``) gets a refused port, with
the tunnel up.

"Agrees" is judged on a *moment*: a visit, then ``status --json`` until it agrees with
that visit but for no more than 1 s after it, then another visit; only when both visits
got the same kind of answer is the state taken as settled, and status must then have
said that within the second.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import cli, configure
from tests.e2e.labkit import start_watch
from tests.helpers import seconds_until
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot

HOSTNAME = "blog.example.org"
#: (name, listen port on the VPS, target port at home) of the deployment's services.
WEB = ("web", 80, 8080)
API = ("api", 81, 8081)
HOME_MARK = "served from home"
#: The trickling app's status line: 615 bytes at one per 0.3 s, longer than any check.
TRICKLE_HEAD = "HTTP/1.1 200 " + "trickling " * 60

# Runs in the home namespace: one port, the mode read from a file per connection.
APP = r"""
import socket, sys, threading, time
port, mode_file = int(sys.argv[1]), sys.argv[2]
TRICKLE = (sys.argv[3] + "\r\n").encode()
busy = threading.BoundedSemaphore(200)
def mode():
    try:
        with open(mode_file) as fh:
            return fh.read().strip() or "ok"
    except OSError:
        return "ok"
def serve(conn, client):
    with conn:
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        how = mode()
        if how == "reset-once":
            with open(mode_file, "w") as fh:
                fh.write("ok")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            return  # closed with linger 0: a reset
        if how == "trickle":
            end = time.monotonic() + 20
            for i in range(len(TRICKLE)):
                if time.monotonic() > end:
                    return
                conn.sendall(TRICKLE[i:i + 1])
                time.sleep(0.3)
            return
        if how == "bulk":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
            chunk, end = b"x" * 65536, time.monotonic() + 15
            while time.monotonic() < end:
                conn.sendall(chunk)
            return
        if how == "slow":
            time.sleep(2.0)
        body = f"served from home {port}; you are {client}\n".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: no-store\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
def guarded(conn, client):
    try:
        serve(conn, client)
    except OSError:
        pass
    finally:
        busy.release()
srv = socket.create_server(("0.0.0.0", port), backlog=256)
while True:
    conn, addr = srv.accept()
    if not busy.acquire(blocking=False):
        conn.close()
        continue
    threading.Thread(target=guarded, args=(conn, addr[0]), daemon=True).start()
"""

# Runs in the visitor's namespace: one GET on a new connection, reading what arrives
# within LIMIT s in all; prints the wall-clock start and end and the raw bytes.
VISIT = r"""
import json, socket, sys, time
host, port, limit, name = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
start, data, error = time.time(), b"", ""
deadline = time.monotonic() + limit
try:
    s = socket.create_connection((host, port), timeout=limit)
    s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
except Exception as e:
    error = type(e).__name__
print(json.dumps({"start": start, "end": time.time(), "data": data.decode("latin-1"), "error": error}))
"""


#: What status's tunnel line must say: up (True), down (False), anything (None), or that by visit kind.
Tunnel = bool | None | dict[str, bool | None]


@dataclass(frozen=True)
class Visit:
    """What one visitor got: ``kind`` is home (served from home), page (the friendly 503),
    trickle (home's answer arriving byte by byte) or none (nothing usable)."""

    kind: str
    start: float
    end: float
    text: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.text[:60]!r})"


def classify(data: str, visitor_address: str) -> str:
    """The kind of a visit (see :class:`Visit`) from the bytes it received."""
    head = data.split("\r\n", 1)[0]
    if head.startswith("HTTP/1.") and head.split()[1:2] == ["503"]:
        return "page"
    if head.startswith("HTTP/1.1 200 OK") and HOME_MARK in data and visitor_address in data:
        return "home"
    if data and TRICKLE_HEAD.startswith(data[: len(TRICKLE_HEAD)]):
        return "trickle"
    return "none"


def visit(lab: Lab, port: int = 80, limit: float = 1.0) -> Visit:
    """One new connection from the visitor to the VPS's ``port``."""
    proc = lab.exec("visitor", sys.executable, "-c", VISIT, lab.vps_address, str(port), str(limit), HOSTNAME,
                    timeout=limit + 15)
    out = json.loads(proc.stdout)
    return Visit(classify(out["data"], lab.visitor_address), out["start"], out["end"],
                 out["data"] or out["error"] or "nothing")


@dataclass(frozen=True)
class Status:
    """One ``status --json`` on the VPS: its exit code, its data, and when it ran (wall clock)."""

    code: int
    data: dict[str, Any]
    start: float
    end: float

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.data["services"] if s["name"] == name)

    def home(self, name: str = "home") -> dict[str, Any]:
        return next(h for h in self.data["tunnel"]["homes"] if h["name"] == name)


@dataclass
class Deployment:
    """A configured, up and watched VPS and home in a lab, with the home app on each target port."""

    lab: Lab
    vps_site: Path
    home_site: Path
    logs: Path
    services: tuple[tuple[str, int, int], ...] = (WEB,)
    apps: dict[int, subprocess.Popen] = field(default_factory=dict)
    watch: subprocess.Popen | None = None
    #: home's snapshot just before ``up home``: what ``down home`` must give back.
    home_before: dict[str, str] = field(default_factory=dict)

    def status(self) -> Status:
        start = time.time()
        proc = cli(self.lab, "vps", self.vps_site, "status", "--json", check=False)
        end = time.time()
        assert proc.returncode in (0, 1), f"status exited {proc.returncode}: {proc.stderr}"
        return Status(proc.returncode, json.loads(proc.stdout), start, end)

    def mode_file(self, port: int) -> Path:
        return self.logs / f"app-{port}.mode"

    def set_mode(self, port: int, mode: str) -> None:
        self.mode_file(port).write_text(mode)

    def start_app(self, port: int) -> None:
        self.apps[port] = self.lab.popen("home", sys.executable, "-c", APP, str(port), str(self.mode_file(port)),
                                         TRICKLE_HEAD)
        assert self.lab.wait_tcp("home", "127.0.0.1", port), f"the home app on {port} did not start"

    def stop_app(self, port: int) -> None:
        proc = self.apps.pop(port)
        proc.kill()
        proc.wait(10)
        # `ip netns exec` may have exec'ed; make sure nothing listens there any more.
        assert self.lab.tcp_probe("home", "127.0.0.1", port) == "refused"


@contextlib.contextmanager
def deployment(lab: Lab, sites: tuple[Path, Path], logs: Path,
               services: tuple[tuple[str, int, int], ...] = (WEB,)) -> Iterator[Deployment]:
    """Configure ``services`` (HTTP checks), start the home app on each target, ``up vps``,
    ``up home`` and the watchdog; afterwards stop the watchdog and run ``down`` on both ends."""
    vps_site, home_site = sites
    dep = Deployment(lab, vps_site, home_site, logs, services)
    configure(lab, vps_site, home_site,
              *[[name, "--listen", str(listen), "--target", str(target), "--check", "http:/",
                 "--hostname", HOSTNAME] for name, listen, target in services])
    for _, _, target in services:
        dep.set_mode(target, "ok")
        dep.start_app(target)
    cli(lab, "vps", vps_site, "up", "vps")
    dep.home_before = snapshot(lab, "home")
    cli(lab, "home", home_site, "up", "home")
    dep.watch = start_watch(lab, vps_site, logs / "watch.log")
    try:
        yield dep
    finally:
        stop(dep.watch)
        cli(lab, "home", home_site, "down", "home", check=False)
        cli(lab, "vps", vps_site, "down", "vps", check=False)


def stop(proc: subprocess.Popen, wait: float = 10.0) -> int | None:
    """SIGTERM ``proc``, SIGKILL it if it has not exited after ``wait`` s; its exit status
    (None when it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.terminate()
    try:
        return proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return None


# ---------------------------------------------------------------- agreement


def disagreements(seen: Visit, st: Status, service: str, *, tunnel: Tunnel = None,
                  fresh: float = 2.0, settled: bool = True) -> list[str]:
    """Where ``st`` contradicts what a visitor of ``service`` got (empty: it agrees).

    Served from home (or home's answer trickling in): the service forwarding to home and,
    but for a trickle, healthy; the tunnel up and that home connected. The page: the service
    on fallback, not healthy, exit 1. Nothing at all: status must not call it healthy and
    forwarding with exit 0. Always: the exit code is 0 exactly when the tunnel is up and every
    service forwards and is healthy, and the service's last check is younger than ``fresh`` s.
    ``tunnel`` (when not None) is what the tunnel line must say, or a dict of it by what the
    visitor got. Not ``settled`` (a moment sampled while a fault may be healing): a service on
    the page may already be healthy again (its checks pass; it waits for ``rise`` of them).
    """
    if isinstance(tunnel, dict):
        tunnel = tunnel.get(seen.kind)
    problems = []
    svc, data = st.service(service), st.data
    home_entry = st.home(svc.get("home") or "home")
    all_ok = data["tunnel"]["up"] and all(s["state"] == "forwarding" and s["healthy"] for s in data["services"])
    if (st.code == 0) != bool(all_ok):
        problems.append(f"exit {st.code} but tunnel up={data['tunnel']['up']} and services "
                        f"{[(s['name'], s['state'], s['healthy']) for s in data['services']]}")
    if seen.kind in ("home", "trickle"):
        tunnel = True if tunnel is None else tunnel
        if svc["state"] != "forwarding":
            problems.append(f"visitor served from home, but {service} is {svc['state']}")
        if seen.kind == "home" and not svc["healthy"]:
            problems.append(f"visitor served from home, but {service} is not healthy ({svc.get('reason')})")
    elif seen.kind == "page":
        if svc["state"] != "fallback" or (settled and svc["healthy"]) or st.code == 0:
            problems.append(f"visitor got the page, but {service} is {svc['state']}, healthy={svc['healthy']}, "
                            f"exit {st.code}")
    elif svc["state"] == "forwarding" and svc["healthy"] and st.code == 0:
        problems.append(f"visitor got nothing ({seen.text[:40]!r}), but {service} is forwarding, healthy, exit 0")
    if tunnel is not None:
        if data["tunnel"]["up"] != tunnel:
            problems.append(f"tunnel.up is {data['tunnel']['up']}, want {tunnel}")
        if home_entry["connected"] != tunnel:
            problems.append(f"home {home_entry['name']} connected={home_entry['connected']}, want {tunnel}")
    last = svc.get("last_check")
    stale = svc.get("stale") or data.get("watchdog", {}).get("stale")  # said to be old: not a claim about now
    if not stale and (last is None or st.start - last > fresh):
        problems.append(f"{service}'s last check is {'missing' if last is None else f'{st.start - last:.1f} s old'}"
                        f" (want < {fresh:g} s)")
    return problems


@dataclass(frozen=True)
class Moment:
    seen: Visit
    status: Status
    problems: list[str]

    def explain(self) -> str:
        svc = [{k: s.get(k) for k in ("name", "state", "healthy", "reason", "last_check", "detail")}
               for s in self.status.data["services"]]
        return (f"visitor got {self.seen}; status exit {self.status.code}, tunnel {self.status.data['tunnel']}, "
                f"services {svc}: {'; '.join(self.problems)}")


def moment(dep: Deployment, service: str = WEB[0], port: int = WEB[1], *, tunnel: Tunnel = None,
           limit: float = 1.0, tries: int = 5, settled: bool = True) -> Moment:
    """A settled moment, judged: a visit; ``status --json`` until it agrees with that visit, for
    at most 1 s after it (the issue's "within 1 s": status may lag the visitor that long); a
    second visit with the same outcome, else the state was changing and it starts over."""
    last: tuple[Visit, Status, Visit] | None = None
    for _ in range(tries):
        before = visit(dep.lab, port, limit)
        while True:
            st = dep.status()
            problems = disagreements(before, st, service, tunnel=tunnel, settled=settled)
            if not problems or time.time() - before.end >= 1.0:
                break
        after = visit(dep.lab, port, limit)
        last = (before, st, after)
        if before.kind == after.kind and st.start - before.end <= 1.0:
            return Moment(before, st, problems)
    pytest.fail(f"no settled moment in {tries} tries (a state that keeps changing, or a slow status): "
                f"{last[0]} / exit {last[1].code} in {last[1].end - last[1].start:.1f} s / {last[2]}",
                pytrace=False)


def wait_for(dep: Deployment, kind: str, limit: float, port: int = WEB[1], since: float | None = None,
             visit_limit: float = 1.0) -> tuple[float, Visit]:
    """Visit on new connections until one gets ``kind``; (seconds since ``since``, that visit)."""
    since = time.time() if since is None else since
    last = None
    while time.time() - since < limit:
        last = visit(dep.lab, port, visit_limit)
        if last.kind == kind:
            return last.end - since, last
        time.sleep(0.1)
    pytest.fail(f"visitors on :{port} got no {kind} within {limit:g} s; last: {last}", pytrace=False)


def healthy_again(dep: Deployment, limit: float = 15.0) -> None:
    """Every service served from home and status exit 0 (how each test finds and leaves the lab)."""
    def ok() -> tuple[bool, object]:
        st = dep.status()
        return st.code == 0, [(s["name"], s["state"], s.get("reason")) for s in st.data["services"]]

    for _, port, _ in dep.services:
        wait_for(dep, "home", limit, port)
    seconds_until("status exit 0", ok, limit)


def report(capsys: pytest.CaptureFixture, tag: str, text: str) -> None:
    with capsys.disabled():
        print(f"\n[{tag}] {text}", flush=True)
