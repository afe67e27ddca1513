"""Real OpenVPN between two network namespaces: the helpers the OpenVPN integration tests
share (test_tunnel: the tunnel itself; test_openvpn_log: a flood against its log)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from tests.nslib import in_ns, link, namespaces, sh, unique
from vpnoffload.model import Config, Home, Tunnel, Vps
from vpnoffload.pki import tls_crypt_key_text, write_atomic

VPS_ADDR, HOME_ADDR = "203.0.113.1", "203.0.113.2"
SERVER_TUN = "198.51.100.1"
READY = "Initialization Sequence Completed"
WAIT = 15.0


def make_config(proto: str) -> Config:
    return Config(
        vps=Vps(address=IPv4Address(VPS_ADDR)),
        tunnel=Tunnel(subnet=IPv4Network("198.51.100.0/24"), port=1194, proto=proto),  # type: ignore[arg-type]
        homes={
            "home": Home("home", IPv4Address("198.51.100.10")),
            "other": Home("other", IPv4Address("198.51.100.11")),
        },
    )


@contextlib.contextmanager
def system_user() -> Iterator[str]:
    """A throw-away unprivileged system user (with its own group), always deleted."""
    name = f"vpnoff{uuid.uuid4().hex[:8]}"
    sh("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
       "--shell", "/usr/sbin/nologin", name)
    try:
        yield name
    finally:
        sh("userdel", name, check=False)
        sh("groupdel", name, check=False)  # gone with the user already, normally


@dataclass
class OpenVpn:
    proc: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text()):
                return True
            if self.proc.poll() is not None:
                return bool(re.search(pattern, self.text()))
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@contextlib.contextmanager
def openvpn(ns: str, log: Path, *args: str) -> Iterator[OpenVpn]:
    with log.open("wb") as out:
        # `ip netns exec` execs openvpn, so proc.pid is openvpn's pid.
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "openvpn", *args], stdout=out, stderr=subprocess.STDOUT)
    ovpn = OpenVpn(proc, log)
    try:
        yield ovpn
    finally:
        ovpn.stop()


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))


# No `ping` on these machines: a TCP round trip through the tunnel instead,
# which also shows the address the VPS sees the home as.
_ECHO_SERVER = """
import socket
s = socket.create_server((%r, 7777))
s.settimeout(10)
c, peer = s.accept()
c.sendall(peer[0].encode())
c.close()
"""
_ECHO_CLIENT = """
import socket, time
deadline = time.monotonic() + 10
while True:
    try:
        with socket.create_connection((%r, 7777), timeout=2) as c:
            print(c.recv(64).decode())
            break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
"""


def tunnel_echo(vps: str, home: str) -> str:
    """Connect from ``home`` to the VPS's tunnel address; return the peer address the VPS saw."""
    listener = subprocess.Popen(["ip", "netns", "exec", vps, sys.executable, "-c", _ECHO_SERVER % SERVER_TUN])
    try:
        return in_ns(home, sys.executable, "-c", _ECHO_CLIENT % SERVER_TUN, timeout=20).stdout.strip()
    finally:
        listener.kill()
        listener.wait(timeout=5)


def with_new_tls_crypt_key(profile: Path, out: Path) -> Path:
    """A copy of ``profile`` whose tls-crypt key the server has never seen."""
    text = re.sub(r"<tls-crypt>.*</tls-crypt>", "<tls-crypt>\n" + tls_crypt_key_text(os.urandom(256)) + "</tls-crypt>",
                  profile.read_text(), flags=re.S)
    write_atomic(out, text, 0o600)
    return out


@contextlib.contextmanager
def lab() -> Iterator[tuple[str, str]]:
    with namespaces(unique("vps"), unique("home")) as (vps, home):
        link(vps, f"{VPS_ADDR}/24", home, f"{HOME_ADDR}/24")
        yield vps, home
