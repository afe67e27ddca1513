"""DaemonTunnel.stop finds a daemon that was interrupted before it wrote its pidfile."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from vpnoffload import runfiles
from vpnoffload.tunnel import DaemonTunnel


def _fake_openvpn(pidfile: Path) -> subprocess.Popen[bytes]:
    """argv[0] "openvpn" and the --writepid argument, as the forked daemon shows them before its
    pidfile exists; returned once /proc shows that command line (not the forking parent's)."""
    p = subprocess.Popen(["openvpn", "-c", "import time; time.sleep(30)", "--writepid", str(pidfile)],
                         executable=sys.executable)
    deadline = time.monotonic() + 5
    while p.pid not in runfiles.scan(program=b"openvpn", args=(b"--writepid", str(pidfile).encode())):
        assert time.monotonic() < deadline, "the fake daemon never showed its command line"
        time.sleep(0.02)
    return p


def test_stop_without_pidfile_ends_the_daemon_named_by_its_pidfile_argument(tmp_path: Path) -> None:
    tunnel = DaemonTunnel("home-h", tmp_path / "h.ovpn", tmp_path, tmp_path / "run")
    other = _fake_openvpn(tmp_path / "other.pid")  # another tunnel's daemon: left alone
    mine = _fake_openvpn(tunnel.pidfile)
    try:
        assert not tunnel.pidfile.exists()
        tunnel.stop(timeout=5)
        assert mine.wait(timeout=5) is not None
        assert other.poll() is None
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()


def test_scan_matches_program_and_argument(tmp_path: Path) -> None:
    pidfile = tmp_path / "x.pid"
    p = _fake_openvpn(pidfile)
    try:
        assert runfiles.scan(program=b"nginx", args=(b"--writepid", str(pidfile).encode())) == []
        assert p.pid not in runfiles.scan(program=b"openvpn", args=(b"--writepid", b"/elsewhere.pid"))
    finally:
        p.kill()
        p.wait()
