"""Real OpenVPN, rendered by vpnoffload, between two network namespaces.

"vps" (203.0.113.1) runs the server exactly as rendered, dropping privileges to
a throw-away system user; "home" (203.0.113.2) runs a client profile. The
tunnel subnet is 198.51.100.0/24. Every wait is a bounded log poll.
"""

from __future__ import annotations

import contextlib
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.ovpnkit import (HOME_ADDR, READY, SERVER_TUN, VPS_ADDR, WAIT, lab, make_config,  # noqa: F401
                                       openvpn, system_user, tunnel_echo, uid_of, with_new_tls_crypt_key)
from tests.nslib import in_ns, needs_openvpn, needs_root
from vpnoffload.pki import Pki
from vpnoffload.render.openvpn import render_home, render_vps

pytestmark = [pytest.mark.root, needs_root, needs_openvpn]


def test_udp_tunnel_privilege_drop_fixed_address_and_crl(tmp_path: Path) -> None:
    config = make_config("udp")
    pki = Pki.create(tmp_path / "pki")
    pki.issue("home")
    pki.issue("other")
    # tmp_path's ancestors are 0700 root: proves --cd makes them irrelevant
    # to the unprivileged process.
    server_dir, status = tmp_path / "server", tmp_path / "status"
    profiles = tmp_path / "profiles"
    render_home(config, pki, "home", profiles)
    render_home(config, pki, "other", profiles)  # before its revocation, as an old copy would be

    with system_user() as user, lab() as (vps, home):
        render_vps(config, pki, server_dir, status_path=status, run_as=user, aes=True)
        # A hostile or misconfigured server: the home must ignore all of this.
        with (server_dir / "server.conf").open("a") as conf:
            conf.write('push "redirect-gateway def1"\npush "route 192.0.2.0 255.255.255.0"\n')

        with openvpn(vps, tmp_path / "server.log", "--cd", str(server_dir), "--config", "server.conf") as server:
            assert server.wait_for(READY), server.text()
            assert uid_of(server.proc.pid) == pwd.getpwnam(user).pw_uid

            with openvpn(home, tmp_path / "home.log", "--config", str(profiles / "home.ovpn")) as client:
                assert client.wait_for(READY), client.text() + server.text()
                addr = in_ns(home, "ip", "-4", "-o", "addr", "show", "dev", "vpnoffload0").stdout
                assert "198.51.100.10/24" in addr
                assert tunnel_echo(vps, home) == "198.51.100.10"  # the fixed address from ccd/home

                log = client.text()
                assert re.search(r"Data Channel: cipher 'AES-256-GCM'", log), log
                routes = in_ns(home, "ip", "-4", "route", "show").stdout
                assert "0.0.0.0/1" not in routes and "128.0.0.0/1" not in routes, routes
                assert "192.0.2.0/24" not in routes, routes
                # the status file is rewritten every 2 s by the unprivileged server
                deadline = time.monotonic() + WAIT
                while "198.51.100.10" not in (status.read_text() if status.exists() else ""):
                    assert time.monotonic() < deadline, status.read_text() if status.exists() else "no status"
                    time.sleep(0.3)

            pki.revoke("other")
            render_vps(config, pki, server_dir, status_path=status, run_as=user)
            with openvpn(home, tmp_path / "other.log", "--config", str(profiles / "other.ovpn")) as other:
                # crl.pem is re-read, after the privilege drop, for each new connection
                assert server.wait_for(r"VERIFY ERROR: depth=0, error=certificate revoked: CN=other"), server.text()
                assert not other.wait_for(READY, timeout=3), other.text()

            # tls-crypt is in force: a packet under any other key is dropped unanswered
            stranger = with_new_tls_crypt_key(profiles / "home.ovpn", tmp_path / "stranger.ovpn")
            with openvpn(home, tmp_path / "stranger.log", "--config", str(stranger)) as other:
                assert server.wait_for(r"tls-crypt unwrapping failed"), server.text()
                assert not other.wait_for(READY, timeout=2), other.text()


def test_tcp_tunnel_comes_up(tmp_path: Path) -> None:
    config = make_config("tcp")
    pki = Pki.create(tmp_path / "pki")
    pki.issue("home")
    render_home(config, pki, "home", tmp_path)
    with lab() as (vps, home):
        # A VPS without AES instructions: its order, not the home's, picks ChaCha20-Poly1305.
        render_vps(config, pki, tmp_path / "server", run_as=None, aes=False)
        with openvpn(vps, tmp_path / "server.log", "--cd", str(tmp_path / "server"), "--config", "server.conf") as server:
            assert server.wait_for(READY), server.text()
            with openvpn(home, tmp_path / "home.log", "--config", str(tmp_path / "home.ovpn")) as client:
                assert client.wait_for(READY), client.text() + server.text()
                assert tunnel_echo(vps, home) == "198.51.100.10"
                assert re.search(r"Data Channel: cipher 'CHACHA20-POLY1305'", client.text()), client.text()


_NOBODY_ASKS = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
try:
    s.sendall(b"status 3\\n")
    print(repr(s.recv(4096)))
except OSError as exc:
    print("refused:", exc)
"""


def test_management_socket_lists_homes_live_and_only_for_root(tmp_path: Path) -> None:
    """Issue 21 item 1: the server's management interface (a unix socket, root only) gives the
    watchdog OpenVPN's client list in real time: the home while connected, gone once it leaves."""
    from vpnoffload.lean import ovpn

    config = make_config("tcp")
    pki = Pki.create(tmp_path / "pki")
    pki.issue("home")
    render_home(config, pki, "home", tmp_path)
    # Where uid 65534 can reach the socket (pytest's own tree is 0700 root), so it meets OpenVPN's check.
    reachable = Path(tempfile.mkdtemp(prefix="vpnoffload-mgmt-"))
    reachable.chmod(0o755)
    sock = reachable / "m.sock"
    with contextlib.ExitStack() as cleanup, lab() as (vps, home):
        cleanup.callback(shutil.rmtree, reachable, True)
        render_vps(config, pki, tmp_path / "server", run_as=None, management_path=sock)
        with openvpn(vps, tmp_path / "server.log", "--cd", str(tmp_path / "server"), "--config", "server.conf") as server:
            assert server.wait_for(READY), server.text()
            mgmt = ovpn.Management(str(sock))
            try:
                assert mgmt.clients() == {}
                with openvpn(home, tmp_path / "home.log", "--config", str(tmp_path / "home.ovpn")) as client:
                    assert client.wait_for(READY), client.text() + server.text()
                    deadline = time.monotonic() + WAIT
                    while "home" not in (seen := mgmt.clients() or {}):
                        assert time.monotonic() < deadline, server.text()
                        time.sleep(0.2)
                    assert str(seen["home"]["real_address"]).startswith(HOME_ADDR + ":"), seen
                    assert isinstance(seen["home"]["bytes_received"], int) and seen["home"]["bytes_received"] > 0
                    assert isinstance(seen["home"]["since_time"], int)
                    # Anyone but root is turned away by OpenVPN itself, whatever the socket's mode
                    # (it serves one client at a time: ours hangs up first).
                    mgmt.close()
                    other = subprocess.run([sys.executable, "-I", "-c", _NOBODY_ASKS, str(sock)], capture_output=True,
                                           text=True, timeout=20)
                    assert "CLIENT_LIST" not in other.stdout and "TITLE" not in other.stdout, other.stdout
                    assert "client connection rejected" in server.text(), other.stdout + other.stderr
                left = time.monotonic()
                while (now := mgmt.clients()) is None or "home" in now:
                    assert time.monotonic() - left < 5, f"the home stays listed after it left: {now}\n{server.text()}"
                    time.sleep(0.2)
            finally:
                mgmt.close()
