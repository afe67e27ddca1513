"""Issue 23: each finding of the second security review, as a test that failed on main before its fix.

The real-process parts live beside the features they guard: the nginx cache in
``tests/integration/test_nginx_cache.py``, OpenVPN's log in ``tests/integration/test_tunnel.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vpnoffload.errors import ConfigError

CONFIG = """[vps]
address = "203.0.113.10"

[tunnel]
subnet = "198.51.100.0/24"

[homes.home]
address = "198.51.100.2"
"""


# ------------------------------------------------------------------ medium 3: custom page templates


def _page_config(page: Path):
    from vpnoffload import config as cfg

    return cfg.parse_text(CONFIG + f'[services.blog]\nlisten = "80"\ntarget = "80"\npage = "{page}"\n')


@pytest.mark.parametrize("statement", [
    '{% include "secret.key" %}',
    '{% import "secret.key" as s %}',
    '{% from "secret.key" import x %}',
    '{% extends "secret.key" %}',
    '{% include ["nothing", "secret.key"] %}',
])
def test_a_page_template_cannot_pull_in_another_file(tmp_path: Path, statement: str) -> None:
    from vpnoffload.render.pages import render_page

    (tmp_path / "secret.key").write_text("-----BEGIN PRIVATE KEY----- top secret")
    page = tmp_path / "page.html"
    page.write_text(f"<p>down</p>{statement}")
    config = _page_config(page)
    with pytest.raises(ConfigError, match="services.blog.page") as caught:
        render_page(config, config.services["blog"])
    assert "top secret" not in str(caught.value)


def test_a_page_template_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    from vpnoffload.render.pages import render_page

    (tmp_path / "secret.key").write_text("top secret")
    page = tmp_path / "page.html"
    page.symlink_to(tmp_path / "secret.key")
    config = _page_config(page)
    with pytest.raises(ConfigError, match="services.blog.page"):
        render_page(config, config.services["blog"])


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_a_page_template_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    from vpnoffload.render.pages import render_page

    page = tmp_path / "page.html"
    page.mkdir() if kind == "dir" else os.mkfifo(page)
    config = _page_config(page)
    with pytest.raises(ConfigError, match="services.blog.page"):
        render_page(config, config.services["blog"])


def test_a_plain_page_template_still_renders(tmp_path: Path) -> None:
    from vpnoffload.render.pages import render_page

    page = tmp_path / "page.html"
    page.write_text("<h1>{{ hostname }} is resting</h1>{% if retry_after %}<p>{{ retry_after }}</p>{% endif %}")
    config = _page_config(page)
    assert render_page(config, config.services["blog"]) == "<h1>203.0.113.10 is resting</h1><p>30</p>"


# ------------------------------------------------------------------ medium 4: render --out and its manifest

PROXY = CONFIG + """[services.blog]
listen = "80"
target = "8080"
hostname = "blog.example.org"
via = "proxy"
"""
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files of another user")
NOBODY = 65534


def _plant(path: Path, text: str, uid: int = NOBODY) -> Path:
    path.write_text(text)
    os.chown(path, uid, uid)
    return path


@needs_root
def test_render_out_deletes_nothing_a_planted_manifest_names(tmp_path: Path) -> None:
    """A sticky shared directory: another user plants the manifest and names their own
    and root's files in it; root's render deletes none of them."""
    import json

    from vpnoffload import config as cfg
    from vpnoffload.render import webserver

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    theirs = _plant(shared / "their.conf", "# vpnoffload: not really\n")
    (shared / "pages").mkdir()
    page = _plant(shared / "pages" / "their.html", "<p>theirs</p>")
    roots = shared / "root.conf"
    roots.write_text("root's own, not written by render\n")
    _plant(shared / ".vpnoffload-files", json.dumps(["their.conf", "root.conf", "pages/their.html"]))
    webserver.render_nginx(cfg.parse_text(PROXY), shared)
    assert theirs.exists() and page.exists() and roots.exists()
    assert (shared / "vpnoffload.conf").exists()


@needs_root
def test_render_out_deletes_only_its_own_regular_files(tmp_path: Path) -> None:
    """Root's own manifest lists a file that another user has since put in its place, and
    a hard link to a file elsewhere: neither is deleted; root's stale page is."""
    import json

    from vpnoffload import config as cfg
    from vpnoffload.render import webserver

    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o1777)
    config = cfg.parse_text(PROXY)
    webserver.render_nginx(config, out)
    stale = out / "pages" / "old.html"
    stale.write_text("<p>a service removed since</p>")
    swapped = _plant(out / "pages" / "gone.html", "<p>someone else's now</p>")
    elsewhere = tmp_path / "elsewhere.html"
    elsewhere.write_text("keep me")
    os.link(elsewhere, out / "pages" / "linked.html")
    listed = json.loads((out / ".vpnoffload-files").read_text())
    (out / ".vpnoffload-files").write_text(json.dumps(listed + ["pages/old.html", "pages/gone.html",
                                                                "pages/linked.html"]))
    webserver.render_nginx(config, out)
    assert not stale.exists()
    assert swapped.exists() and elsewhere.read_text() == "keep me" and (out / "pages" / "linked.html").exists()


# ------------------------------------------------------------------ medium 5: the friendly page's port


def _page_view(port: int, host: str = "127.0.0.1", tls: bool = False):
    from types import SimpleNamespace

    svc = SimpleNamespace(serves_page=True, page_over_tls=tls)
    return SimpleNamespace(watch=SimpleNamespace(fallback_port=port), services={"blog": svc},
                           vps_local_address=host, ipv6_services=[])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_watchdog_refuses_to_start_when_the_page_port_is_taken() -> None:
    import socket

    from vpnoffload.errors import BackendError
    from vpnoffload.fallback import listeners

    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        held = listeners.Held()
        with pytest.raises(BackendError, match="watch.fallback_port: cannot hold 127.0.0.1:"):
            held.hold(_page_view(squatter.getsockname()[1]))
        held.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: binds as another user")
def test_no_other_user_can_take_a_held_page_port_however_it_binds() -> None:
    import socket

    from vpnoffload.fallback import listeners

    port = _free_port()
    held = listeners.Held()
    held.hold(_page_view(port, tls=True))
    try:
        assert set(held.socks) == {f"4:{port}", f"4:{port + 1}"}
        for host in ("127.0.0.1", "0.0.0.0"):
            for reuseaddr, reuseport in ((0, 0), (1, 0), (0, 1), (1, 1)):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child
                    try:
                        os.setgid(NOBODY)
                        os.setuid(NOBODY)
                        s = socket.socket()
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuseaddr)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, reuseport)
                        s.bind((host, port))
                        s.listen()
                        os._exit(0)
                    except BaseException:
                        os._exit(1)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 1, (host, reuseaddr, reuseport)
    finally:
        held.close()


def test_the_page_server_gets_the_held_sockets_and_they_go_quiet_after_it() -> None:
    """Each page server gets the held socket as fd 3 (listens, reads the request, answers);
    after it exits the watchdog's socket stops listening (refused, nothing queues) but the
    port stays held, and the next page server serves on it again. The watchdog quiets the
    sockets on every round without a page server, so before the first one too."""
    import socket
    import sys
    import time

    from vpnoffload.fallback import listeners
    from vpnoffload.lean import spawn

    port = _free_port()
    held = listeners.Held()
    held.hold(_page_view(port))
    child_code = ("import socket;s=socket.socket(fileno=3);s.listen();c,_=s.accept();"
                  "c.sendall(b'page for '+c.recv(64));c.close()")

    def visit() -> bytes:
        deadline = time.monotonic() + 10
        while True:  # until the child listens
            try:
                visitor = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with visitor:
            visitor.sendall(b"GET /")
            return visitor.recv(64)

    children: list[spawn.Child] = []
    try:
        passed = held.passed()
        assert listeners.parse_fds(listeners.format_fds(passed)) == {f"4:{port}": 3}
        for _ in range(2):
            held.quiet()
            child = spawn.spawn([sys.executable, "-I", "-S", "-c", child_code], fds=[fd for _, fd in passed])
            children.append(child)
            assert visit() == b"page for GET /"
            assert child.wait(10) == 0
            held.quiet()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2)
            with socket.socket() as other, pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
    finally:
        for child in children:
            child.kill()  # no-op once it exited; a child left waiting on accept is not left behind
        held.close()


@pytest.mark.parametrize("text", ["4:8503=³", "5:8503=3", "4:85030000=3", "4:8503", "4:٨٥٠٣=3", "x" * 5000])
def test_listen_fds_refuses_anything_odd(text: str) -> None:
    from vpnoffload.errors import BackendError
    from vpnoffload.fallback import listeners

    with pytest.raises(BackendError) as caught:
        listeners.parse_fds(text)
    assert len(str(caught.value)) < 200


# ------------------------------------------------------------------ low: the metrics server


class _Dog:
    from types import SimpleNamespace

    status: dict = {}
    openvpn = None
    config = SimpleNamespace(services={}, homes={}, watch=SimpleNamespace(interval=0.5))

    @staticmethod
    def homes_seen() -> dict:
        return {}


def test_metrics_take_no_thread_per_connection_and_cut_tricklers(monkeypatch) -> None:
    import socket
    import threading
    import time

    from vpnoffload.watch import metrics

    monkeypatch.setattr(metrics, "REQUEST_DEADLINE", 0.5)
    server = metrics.MetricsServer("127.0.0.1:0", _Dog())  # type: ignore[arg-type]
    server.start()
    port = server.server_address[1]
    idle = []
    try:
        before = threading.active_count()
        for _ in range(12):  # connections that never send a byte (within the listen queue)
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)  # a bound held over a while: time for a server without the cap to start more threads
        assert threading.active_count() <= before + metrics.MetricsServer.MAX_CLIENTS
        for sock in idle:  # the ones that got a slot are cut by the deadline; the others at once
            sock.settimeout(10)
            assert sock.recv(1) == b""
        # One byte every 0.2 s: cut by the request deadline, not kept alive by each byte.
        trickler = socket.create_connection(("127.0.0.1", port), timeout=5)
        started = time.monotonic()
        cut = False
        while time.monotonic() - started < 60 and not cut:
            try:
                trickler.sendall(b"G")
                trickler.settimeout(0.2)
                cut = trickler.recv(1) == b""
            except socket.timeout:
                continue
            except OSError:
                cut = True
        assert cut, "a trickling scrape held the metrics server for a minute"
        for sock in idle:
            sock.close()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as scrape:
            scrape.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            scrape.settimeout(30)
            assert scrape.recv(64).startswith(b"HTTP/1.1 200 OK")
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
        server.server_close()


def test_a_metrics_port_in_use_does_not_stop_the_watchdog() -> None:
    import socket

    from vpnoffload.watch import metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert metrics.start_metrics(f"127.0.0.1:{taken.getsockname()[1]}", _Dog()) is None  # type: ignore[arg-type]


# ------------------------------------------------------------------ low: what home says, on the terminal


def test_status_text_carries_no_terminal_escape_from_home() -> None:
    from vpnoffload.status import render_text

    evil = "refuse: Cache-Control: \x1b[2J\x1b]0;owned\x07private\u202e\x9b31m\r\nfake: line"
    data = {
        "tunnel": {"up": True, "server_running": True,
                   "homes": [{"name": "home", "address": "198.51.100.2", "connected": True,
                              "since": "2026-12-06 \x1b[31m", "real_address": "192.0.2.9\x1b[0m"}]},
        "watchdog": {"running": True, "pid": 1},
        "services": [{"name": "blog", "listen": "80", "target": "198.51.100.2:8080", "state": "forwarding",
                      "home": "home", "fallback": "page", "healthy": False, "reason": "target error\x1b[1A",
                      "last_check": None, "latency_ms": None, "last_change": None,
                      "offline_copy": {"kept": 0, "paths": 1, "bytes": 0, "oldest_age": None,
                                       "last_fetch": None, "result": evil}}],
    }
    lines = render_text(data)
    text = "\n".join(lines)
    assert not any(ch in text for ch in "\x1b\x07\x9b\u202e\r"), text
    assert all("\n" not in line for line in lines)
    assert "refuse: Cache-Control: ?[2J" in text


# ------------------------------------------------------------------ low: spoofed ICMP echo replies


class _RawSocket:
    """A raw ICMP socket: what was sent, and the replies the kernel would hand over."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.replies: list[tuple[bytes, tuple[str, int]]] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def sendto(self, packet: bytes, address: tuple[str, int]) -> None:
        self.sent.append(packet)

    def recvfrom(self, size: int):
        if not self.replies:
            raise BlockingIOError
        return self.replies.pop(0)

    def close(self) -> None:
        pass


def _reply(ident: int, seq: int, payload: bytes) -> bytes:
    import struct

    ip_header = bytes([0x45]) + bytes(19)
    return ip_header + struct.pack("!BBHHH", 0, 0, 0, ident, seq) + payload


def test_a_spoofed_echo_reply_does_not_keep_a_dead_home_alive() -> None:
    import struct

    from vpnoffload.watch.health import Echo

    raw = _RawSocket()
    echo = Echo.send("198.51.100.2", raw)  # type: ignore[arg-type]
    assert echo is not None
    _, _, _, ident, seq = struct.unpack_from("!BBHHH", raw.sent[0])
    payload = raw.sent[0][8:]
    home = ("198.51.100.2", 0)
    raw.replies = [
        (_reply(ident, seq, payload), ("203.0.113.66", 0)),  # right reply, wrong source
        (_reply(ident, (seq + 1) & 0xFFFF, payload), home),  # a guessed identifier, another sequence
        (_reply(ident, seq, b"\0" * 8), home),  # right numbers, not our payload
        (_reply(ident, seq, b""), home),  # no payload at all
    ]
    assert not echo.answered(wait=0.0)
    raw.replies = [(_reply(ident, seq, payload), home)]
    assert echo.answered(wait=0.0)


# ------------------------------------------------------------------ low: the edit lock


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A config and PKI made by `init`."""
    from typer.testing import CliRunner

    from vpnoffload.cli.app import app

    cfg = tmp_path / "etc" / "vpnoffload.toml"
    result = CliRunner().invoke(app, ["-c", str(cfg), "init", "--vps-address", "203.0.113.10",
                                      "--tunnel-subnet", "198.51.100.0/24"])
    assert result.exit_code == 0, result.output
    return cfg


def listing(path: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every name under ``path`` (hidden ones too), with its mode and, for files, its bytes."""
    found = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(root) / name
            info = full.lstat()
            data = full.read_bytes() if full.is_file() and not full.is_symlink() else None
            found[str(full.relative_to(path))] = (info.st_mode, data)
    return found


def test_a_failed_edit_leaves_no_lock_file_behind(installed: Path) -> None:
    from typer.testing import CliRunner

    from vpnoffload.cli.app import app

    (installed.parent / f".{installed.name}.lock").unlink(missing_ok=True)  # a config copied by hand
    before = listing(installed.parent)
    for args in (["service", "add", "web", "--listen", "70000", "--target", "8080"],
                 ["service", "remove", "nosuch"], ["pki", "issue", "Bad Name"], ["pki", "revoke", "nosuch"]):
        result = CliRunner().invoke(app, ["-c", str(installed), *args])
        assert result.exit_code == 2, (args, result.output)
        assert listing(installed.parent) == before, args


def test_the_edit_lock_follows_no_symlink(installed: Path, tmp_path: Path) -> None:
    """Whatever is planted beside the config (the old lock file's name as a symlink) is not
    opened, created or written through."""
    from typer.testing import CliRunner

    from vpnoffload.cli.app import app

    victim = tmp_path / "victim"
    (installed.parent / f".{installed.name}.lock").symlink_to(victim)
    result = CliRunner().invoke(app, ["-c", str(installed), "service", "add", "web", "--listen", "80",
                                      "--target", "8080"])
    assert result.exit_code == 0, result.output
    assert not victim.exists()


def test_the_run_lock_is_not_followed_through_a_symlink(tmp_path: Path) -> None:
    from vpnoffload import locks
    from vpnoffload.errors import BackendError

    victim = tmp_path / "victim"
    (tmp_path / "lock").symlink_to(victim)
    with pytest.raises(BackendError, match="symlink"):
        with locks.held(str(tmp_path / "lock"), 1.0, lambda: "busy"):
            pass
    assert not victim.exists()


# ------------------------------------------------------------------ low: the page server never stays root


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: drops privileges")
def test_the_page_server_drops_root_even_without_the_vpnoffload_user() -> None:
    """In a child (the drop is for good): with no such user it goes on as nobody, not as root."""
    from vpnoffload.fallback import pageserver

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            dropped = pageserver.drop_privileges("vpnoffload-no-such-user")
            os._exit(0 if dropped and os.getuid() == os.geteuid() == pageserver.NOBODY
                     and os.getgid() == pageserver.NOBODY and not os.getgroups() else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ------------------------------------------------------------------ low: programs found through a relative PATH


@pytest.mark.parametrize("entry", ["", ".", "bin"])
def test_no_program_is_run_from_a_relative_path_entry(tmp_path: Path, monkeypatch, entry: str) -> None:
    from vpnoffload import proc
    from vpnoffload.errors import VpnOffloadError
    from vpnoffload.watch import hostfw

    planted = tmp_path / (entry if entry not in ("", ".") else "")
    planted.mkdir(exist_ok=True)
    marker = tmp_path / "ran"
    for name in ("nft", "vpnoffload-no-such-tool"):
        script = planted / name
        script.write_text(f"#!/bin/sh\ntouch {marker}\n")
        script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", os.pathsep.join([entry, "/nonexistent"]))
    with pytest.raises(VpnOffloadError):
        proc.run(["vpnoffload-no-such-tool"])
    assert hostfw._which("nft") in (None, "/usr/sbin/nft", "/sbin/nft")
    assert not marker.exists()


# ------------------------------------------------------------------ low: the watchdog unit's system calls


def test_the_watchdog_unit_filters_system_calls(tmp_path: Path) -> None:
    """CAP_SYS_ADMIN (for the probe's namespace) comes with a system call allow-list; the
    systemd lane (tests/systemd) shows the probe and the swap still work under it."""
    import shutil
    import subprocess

    from vpnoffload.deploy.units import unit_text
    from vpnoffload.paths import Paths

    text = unit_text(Paths(config=Path("/etc/vpnoffload/vpnoffload.toml"), state=Path("/etc/vpnoffload/state")),
                     python="/usr/bin/python3")
    lines = text.splitlines()
    assert "SystemCallFilter=@system-service" in lines and "SystemCallErrorNumber=EPERM" in lines
    assert "NoNewPrivileges=yes" in lines and any(ln.startswith("CapabilityBoundingSet=") for ln in lines)
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    listed = subprocess.run(["systemd-analyze", "syscall-filter", "@system-service"], capture_output=True,
                            text=True, timeout=60).stdout.split()
    assert {"setns", "unshare"} <= set(listed) or "@process" in listed
    for forbidden in ("mount", "bpf", "ptrace", "init_module", "kexec_load", "perf_event_open"):
        assert forbidden not in listed
    unit = tmp_path / "vpnoffload-watch.service"
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.stdout + proc.stderr == ""


# ------------------------------------------------------------------ medium 2: one home cannot stall another


def test_a_trickling_home_does_not_stall_another_homes_services() -> None:
    """Two homes on loopback: "home" accepts the check and then sends one byte every 50 ms and
    never a line end; "attic" answers at once. One round of checks must end within a few check
    timeouts, and attic's service must be judged on its own answer."""
    import socket
    import threading
    import time
    from ipaddress import IPv4Address, IPv4Network

    from vpnoffload.model import Check, Config, Home, Service, Tunnel, Vps, Watch
    from vpnoffload.watch.decide import Watchdog

    stop = threading.Event()

    def serve(sock: socket.socket, trickle: bool) -> None:
        sock.settimeout(0.2)
        conns = []
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                conns.append(conn)
                if not trickle:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            if trickle:
                for conn in conns:
                    try:
                        conn.sendall(b"H")
                    except OSError:
                        pass
                time.sleep(0.05)
        for conn in conns:
            conn.close()

    slow, fast = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.2", 0))
    threads = [threading.Thread(target=serve, args=(s, t), daemon=True) for s, t in ((slow, True), (fast, False))]
    for t in threads:
        t.start()
    config = Config(
        vps=Vps(IPv4Address("203.0.113.10")), tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
        homes={"home": Home("home", IPv4Address("127.0.0.1")), "attic": Home("attic", IPv4Address("127.0.0.2"))},
        services={
            "web": Service("web", IPv4Address("203.0.113.10"), 80, "home", slow.getsockname()[1],
                           check=Check("http", "/")),
            "git": Service("git", IPv4Address("203.0.113.10"), 81, "attic", fast.getsockname()[1],
                           check=Check("http", "/")),
        },
        watch=Watch(timeout=0.5),
    )
    dog = Watchdog(config, lambda active, flush: None)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (dog.tick(), done.set()), daemon=True)
    try:
        worker.start()
        # A bound, not a speed goal: a round is at most a few check timeouts, never the
        # trickler's pace (1 KiB at 20 bytes/s would be ~50 s).
        assert done.wait(10 * config.watch.timeout), "one trickling home stalled every check"
        assert dog.status["git"].healthy and dog.status["git"].homes["attic"].fails == 0
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        slow.close()
        fast.close()
        worker.join(10)


# ------------------------------------------------------------------ medium 6: OpenVPN's log is bounded


def test_openvpn_logs_by_appending_and_the_cut_keeps_it_bounded(tmp_path: Path, monkeypatch) -> None:
    """OpenVPN appends (so a cut leaves no hole); a log past the limit keeps its last quarter
    in .1 and starts again, while the writer goes on appending (tests/integration/
    test_openvpn_log.py floods a real OpenVPN)."""
    from vpnoffload import proc, tunnel
    from vpnoffload.errors import BackendError
    from vpnoffload.lean import logcap

    seen: list[list[str]] = []
    monkeypatch.setattr(tunnel, "openvpn_binary", lambda: "/usr/sbin/openvpn")
    monkeypatch.setattr(proc, "run", lambda argv, **kw: seen.append(list(argv)) or proc.Result(tuple(argv), 1, "", "x"))
    daemon = tunnel.DaemonTunnel("server", tmp_path / "server.conf", tmp_path, tmp_path / "run")
    (tmp_path / "run").mkdir()
    daemon.logfile.write_text("the last run\n")
    with pytest.raises(BackendError):
        daemon.start()
    assert "--log-append" in seen[0] and "--log" not in seen[0]
    assert Path(f"{daemon.logfile}.1").read_text() == "the last run\n"  # kept, not appended to

    log = tmp_path / "openvpn.log"
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        line = b"2026-12-06 tls-crypt unwrap error: packet authentication failed\n"
        for _ in range(3):
            for _ in range(2000):
                os.write(writer, line)
            assert logcap.cap(str(log), 64 * 1024)
            assert log.stat().st_size < 200 and Path(f"{log}.1").stat().st_size <= 16 * 1024
        os.write(writer, line)
        text = log.read_bytes()
        assert text.startswith(b"vpnoffload: log cut at 65536 bytes") and text.endswith(line) and b"\0" not in text
        assert not logcap.cap(str(log), 64 * 1024)
    finally:
        os.close(writer)


def test_openvpn_runs_with_a_file_size_bound_that_needs_no_watchdog(tmp_path: Path, monkeypatch) -> None:
    """vpnoffload's own OpenVPN daemon gets the log's bound as its file size limit, and a
    command run that way can grow no file past it without being killed (SIGXFSZ ignored)."""
    from vpnoffload import proc, tunnel
    from vpnoffload.lean import logcap

    seen: list[dict] = []
    monkeypatch.setattr(tunnel, "openvpn_binary", lambda: "/usr/sbin/openvpn")
    monkeypatch.setattr(tunnel.DaemonTunnel, "_wait_for_pid", lambda self, timeout: None)
    monkeypatch.setattr(proc, "run", lambda argv, **kw: seen.append(kw) or proc.Result(tuple(argv), 0, "", ""))
    tunnel.DaemonTunnel("server", tmp_path / "server.conf", tmp_path, tmp_path / "run").start()
    assert seen[0]["max_file_size"] == logcap.LIMIT

    monkeypatch.undo()
    out = tmp_path / "big"
    script = f'head -c 100000 /dev/zero > {out}; echo "went on: $?"'
    result = proc.run(["sh", "-c", script], check=False, max_file_size=4096)
    assert result.returncode == 0 and result.stdout.startswith("went on: "), result
    assert out.stat().st_size == 4096
