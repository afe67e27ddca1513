"""Issue 23, medium 6: OpenVPN's own log (``run/openvpn-server.log`` without systemd) cannot be
filled from the internet. Each packet without the tls-crypt key writes two lines (~160 bytes),
and ``mute`` cannot stop it (the two lines are of different kinds). OpenVPN runs as vpnoffload
runs it (``--log-append``), a bounded flood of such packets comes from a namespace this test
makes, and the watchdog's cut (lean/logcap.py, every round) keeps the log and its ``.1``
bounded while OpenVPN goes on writing into the cut file; a real home still connects after.
With no watchdog at all, the log is bounded by construction: vpnoffload's own daemon start
(tunnel.DaemonTunnel) gives OpenVPN a file size limit, so the log stops growing at it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.integration.ovpnkit import (HOME_ADDR, READY, VPS_ADDR, lab, make_config, openvpn,
                                           system_user)
from tests.helpers import wait_until
from tests.nslib import in_ns, needs_openvpn, needs_root
from vpnoffload import runfiles
from vpnoffload.lean import logcap
from vpnoffload.pki import Pki
from vpnoffload.render.openvpn import render_home, render_vps

pytestmark = [pytest.mark.root, needs_root, needs_openvpn, pytest.mark.timeout(120)]

#: Bad packets in the flood: from 64 source ports (new "peers" for OpenVPN), bounded in count and time.
FLOOD = 4000
#: The cut used here (the watchdog's is lean/logcap.LIMIT, 4 MiB): far below one flood's ~640 KB.
LIMIT = 64 * 1024

# Sends FLOOD packets that look like a client's first packet (P_CONTROL_HARD_RESET_CLIENT_V2,
# key id 0) with a random session id and a tag that can never verify, paced to ~2 s.
FLOOD_SENDER = r"""
import os, socket, sys, time
target, count = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(64):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[3], 0))
    socks.append(s)
end = time.monotonic() + 20
for i in range(count):
    packet = bytes([7 << 3]) + os.urandom(8) + os.urandom(8) + os.urandom(32) + os.urandom(40)
    socks[i % 64].sendto(packet, (target, 1194))
    if i % 200 == 199:
        time.sleep(0.1)
    if time.monotonic() > end:
        break
print(i + 1)
"""


def settled(log: Path):
    """A wait_until check: has ``log`` grown past LIMIT and stopped growing since the last poll?"""
    last: list[int] = []

    def check() -> tuple[bool, int]:
        size = log.stat().st_size
        done = size > LIMIT and last == [size]
        last[:] = [size]
        return done, size
    return check


def test_a_flood_of_unauthenticated_packets_cannot_fill_the_log(tmp_path: Path) -> None:
    config = make_config("udp")
    pki = Pki.create(tmp_path / "pki")
    pki.issue("home")
    profiles = tmp_path / "profiles"
    render_home(config, pki, "home", profiles)
    with system_user() as user, lab() as (vps, home):
        server_dir = tmp_path / "server"
        render_vps(config, pki, server_dir, run_as=user)
        log = tmp_path / "openvpn-server.log"
        log.touch(0o600)  # OpenVPN appends to it (the helper below reads it from the start)
        # As vpnoffload's own daemon runs it without systemd (tunnel.DaemonTunnel): --log-append.
        with openvpn(vps, tmp_path / "stdout.log", "--cd", str(server_dir), "--config", "server.conf",
                     "--log-append", str(log)) as server:
            server.log = log
            assert server.wait_for("Initialization Sequence Completed"), server.text()[-2000:]
            for _ in range(2):  # two floods, each followed by the watchdog's next round
                sent = int(in_ns(home, sys.executable, "-c", FLOOD_SENDER, VPS_ADDR, str(FLOOD), HOME_ADDR,
                                 timeout=60).stdout)
                assert sent >= FLOOD // 2
                # OpenVPN reads what is queued and logs every packet it refuses: until it has
                # read it all (the log stops growing), which is more than LIMIT.
                flooded = wait_until("the flood read into OpenVPN's log", settled(log), 10, 0.3)
                assert flooded > LIMIT, f"the flood wrote only {flooded} bytes: nothing to bound"
                assert logcap.cap(str(log), LIMIT)
                kept = Path(f"{log}.1")
                assert log.stat().st_size < 4096 and kept.stat().st_size <= LIMIT // 4
                assert kept.stat().st_mode & 0o777 == 0o600
            # OpenVPN appends to the cut file (no hole where the old lines were) and still logs.
            in_ns(home, sys.executable, "-c", FLOOD_SENDER, VPS_ADDR, "10", HOME_ADDR, timeout=60)
            text = wait_until("OpenVPN logging into the cut file",
                              lambda: (b"tls-crypt" in (got := log.read_bytes()), got), 10)
            assert b"\0" not in text and text.startswith(b"vpnoffload: log cut at") and b"tls-crypt" in text
            # A real home still gets in after the flood.
            with openvpn(home, tmp_path / "home.log", "--config", str(profiles / "home.ovpn")) as client:
                assert client.wait_for(READY), client.text()[-2000:]


# Starts OpenVPN exactly as ``up vps`` does without systemd, inside the namespace it runs in.
DAEMON_START = """
import sys
from pathlib import Path
from vpnoffload.tunnel import DaemonTunnel
conf, run, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
DaemonTunnel("server", conf, conf.parent, run, log_limit=limit).start()
"""


def stopped(log: Path):
    """A wait_until check: has ``log`` stopped growing since the last poll (near the bound)?"""
    last: list[int] = []

    def check() -> tuple[bool, int]:
        size = log.stat().st_size
        done = size > LIMIT - 4096 and last == [size]
        last[:] = [size]
        return done, size
    return check


def test_without_the_watchdog_the_log_stops_at_its_bound(tmp_path: Path) -> None:
    """No keeper, no watchdog, nothing cuts the log: a flood several times the bound leaves
    a log of at most the bound, OpenVPN keeps running and a real home still connects."""
    import os
    import re
    import signal

    config = make_config("udp")
    pki = Pki.create(tmp_path / "pki")
    pki.issue("home")
    profiles = tmp_path / "profiles"
    render_home(config, pki, "home", profiles)
    run = tmp_path / "run"
    with system_user() as user, lab() as (vps, home):
        server_dir = tmp_path / "server"
        render_vps(config, pki, server_dir, run_as=user)
        in_ns(vps, sys.executable, "-c", DAEMON_START, str(server_dir / "server.conf"), str(run), str(LIMIT),
              timeout=60)
        pid = int((run / runfiles.openvpn_pid(runfiles.SERVER)).read_text())
        log = run / runfiles.openvpn_log(runfiles.SERVER)
        try:
            wait_until("OpenVPN ready", lambda: (READY in (got := log.read_text(errors="replace")), got), 15)
            limits = Path(f"/proc/{pid}/limits").read_text()
            assert re.search(rf"Max file size\s+{LIMIT}\s+{LIMIT}\s+bytes", limits), limits
            sent = 0
            for _ in range(3):  # each flood writes ~640 KB of log lines: 30 times the bound
                sent += int(in_ns(home, sys.executable, "-c", FLOOD_SENDER, VPS_ADDR, str(FLOOD), HOME_ADDR,
                                  timeout=60).stdout)
            assert sent * 150 > 8 * LIMIT, f"only {sent} packets: nothing to bound"
            # OpenVPN reads what is queued: until the log stops growing, which it does at the bound.
            size = wait_until("the flood read into OpenVPN's log", stopped(log), 10, 0.3)
            assert LIMIT - 4096 < size <= LIMIT, f"{size} bytes after {sent} bad packets (bound {LIMIT})"
            assert not Path(f"{log}.1").exists()  # nothing cut it: the bound alone held
            os.kill(pid, 0)  # OpenVPN lives on (SIGXFSZ ignored: a write past the bound just fails)
            with openvpn(home, tmp_path / "home.log", "--config", str(profiles / "home.ovpn")) as client:
                assert client.wait_for(READY), client.text()[-2000:]
            assert log.stat().st_size <= LIMIT
            # When a watchdog does run, its cut makes room and OpenVPN's next lines land again.
            assert logcap.cap(str(log), LIMIT // 2)
            in_ns(home, sys.executable, "-c", FLOOD_SENDER, VPS_ADDR, "10", HOME_ADDR, timeout=60)
            wait_until("OpenVPN logging again after the cut", lambda: (b"tls-crypt" in log.read_bytes(), None), 10)
            assert log.stat().st_size < LIMIT // 2
        finally:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
