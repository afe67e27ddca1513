"""Tiny helpers for tests that build network namespaces with iproute2.

Every namespace a test makes carries a unique prefix and is deleted in a
``finally`` (deleting a namespace also deletes its veth ends and processes'
network, so nothing leaks). Only TEST-NET addresses are used for "public" links.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tests.prereq import needs_openvpn, needs_root  # noqa: F401  (where the integration tests import them)


def sh(*args: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, timeout=timeout, capture_output=True, text=True, **kw)


def in_ns(ns: str, *args: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """Run a command inside namespace ``ns``."""
    return sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout, **kw)


def unique(prefix: str) -> str:
    return f"vt{prefix}{uuid.uuid4().hex[:6]}"


def kill_ns_processes(ns: str) -> None:
    pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


@contextlib.contextmanager
def namespaces(*names: str) -> Iterator[list[str]]:
    """Create namespaces (with loopback up); always kill their processes and delete them."""
    made: list[str] = []
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            made.append(name)
            in_ns(name, "ip", "link", "set", "lo", "up")
        yield made
    finally:
        for name in made:
            kill_ns_processes(name)
            sh("ip", "netns", "del", name, check=False)


def link(ns_a: str, addr_a: str, ns_b: str, addr_b: str, *, names: Sequence[str] | None = None) -> tuple[str, str]:
    """A veth pair between two namespaces, with addresses like '203.0.113.1/24'."""
    a, b = names or (f"v{uuid.uuid4().hex[:8]}", f"v{uuid.uuid4().hex[:8]}")
    sh("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
    for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
        in_ns(ns, "ip", "addr", "add", addr, "dev", dev)
        in_ns(ns, "ip", "link", "set", dev, "up")
    return a, b


# Forwarding checks shared by the firewall backends' integration tests.

SERVER = r"""
import socket, sys, threading
def serve(sock):
    while True:
        conn, peer = sock.accept()
        conn.sendall(f"hello {peer[0]}\n".encode())
        conn.close()
for port in sys.argv[1:]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", int(port)))
    sock.listen(16)
    threading.Thread(target=serve, args=(sock,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    s.settimeout(float(sys.argv[3]))
    print("ok " + s.recv(100).decode().strip())
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, socket.timeout):
    print("timeout")
"""


def connect(ns: str, host: str, port: int, timeout: float = 1.0) -> str:
    return in_ns(ns, sys.executable, "-c", CLIENT, host, str(port), str(timeout)).stdout.strip()


def legacy_sent_to_home(ns: str) -> int:
    """Packets the VPS's legacy counting rule counted as sent to home 1 (mangle POSTROUTING)."""
    saved = in_ns(ns, "iptables-legacy-save", "-c", "-t", "mangle").stdout
    found = re.search(r"^\[(\d+):\d+\] -A VPNOFFLOAD-EVOUT .*--name vpnoffload-out1 ", saved, re.M)
    assert found, saved
    return int(found[1])


def nft_sent_to_home(ns: str) -> int:
    """Packets the VPS's nft counter ``vpnoffload-out1`` counted as sent to home 1."""
    listed = in_ns(ns, "nft", "list", "counter", "ip", "vpnoffload", "vpnoffload-out1").stdout
    found = re.search(r"packets (\d+)", listed)
    assert found, listed
    return int(found[1])


def check_forwarding(apply_rules: Callable[[str, str, Path], dict], tmp_path: Path,
                     emptied: Callable[[str, str], None] = lambda vps, home: None,
                     sent: Callable[[str], int] = legacy_sent_to_home) -> None:
    """The forwarding checks of a firewall backend: ``apply_rules(ns, which, tmp_path)``
    writes one of FIREWALL's rulesets in ``ns``; ``emptied(vps, home)`` may check more
    once both ends are empty again (the nft backend: nothing of ours is left); ``sent(vps)``
    reads the count of packets sent to home (the watchdog's evidence), which only packets
    that really leave by the tunnel may grow."""
    visitor, vps, home = unique("v"), unique("s"), unique("h")
    with namespaces(visitor, vps, home):
        link(visitor, "203.0.113.50/24", vps, "203.0.113.10/24")
        # A veth named like the tunnel stands in for OpenVPN here.
        link(vps, "198.51.100.1/24", home, "198.51.100.2/24", names=("vpnoffload0", "vpnoffload0"))
        in_ns(vps, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        in_ns(home, "ip", "route", "add", "default", "via", "198.51.100.1")
        in_ns(visitor, "ip", "route", "add", "198.51.100.0/24", "via", "203.0.113.10")
        server = subprocess.Popen(
            ["ip", "netns", "exec", home, sys.executable, "-c", SERVER, "8080", "9090"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            # Without our rules the lab routes straight to home: so a timeout later means "dropped".
            assert connect(visitor, "198.51.100.2", 9090) == "ok hello 203.0.113.50"

            apply_rules(vps, "vps", tmp_path)
            apply_rules(home, "home", tmp_path)
            assert connect(visitor, "203.0.113.10", 80) == "ok hello 203.0.113.50"
            counted = sent(vps)
            assert counted > 0
            assert connect(visitor, "198.51.100.2", 9090) == "timeout"  # not DNATed: VPS drops it
            assert connect(visitor, "198.51.100.2", 8080) == "timeout"
            assert sent(vps) == counted  # what the VPS dropped was never sent to home
            assert connect(vps, "198.51.100.2", 8080) == "ok hello 198.51.100.1"  # the watchdog's path
            assert connect(vps, "198.51.100.2", 9090) == "timeout"  # home opens only service ports

            apply_rules(vps, "vps-fallback", tmp_path)
            counted = sent(vps)
            assert connect(visitor, "203.0.113.10", 80) == "refused"
            assert sent(vps) == counted  # nor what it refused

            apply_rules(vps, "empty", tmp_path)
            apply_rules(home, "empty", tmp_path)
            assert connect(visitor, "198.51.100.2", 9090) == "ok hello 203.0.113.50"
            emptied(vps, home)
        finally:
            server.kill()
            server.wait()
