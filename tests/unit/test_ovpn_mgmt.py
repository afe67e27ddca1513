"""Issue 21 item 1: OpenVPN's live client list through its management interface (lean/ovpn.py).
No root: a fake OpenVPN on a unix socket in the test's temp dir speaks the interface's protocol
(greeting, notifications, ``status 3`` with tabs and CRLF, ``END``)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from vpnoffload.lean import ovpn

ANSWER = ("TITLE\tOpenVPN 2.6.14 x86_64-pc-linux-gnu\r\n"
          "TIME\t2027-01-15 08:00:05\t1800000005\r\n"
          "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address\tBytes Received\t"
          "Bytes Sent\tConnected Since\tConnected Since (time_t)\tUsername\tClient ID\tPeer ID\tData Channel Cipher\r\n"
          "CLIENT_LIST\thome\t192.0.2.66:40000\t198.51.100.2\t\t1234\t5678\t2027-01-15 08:00:00\t1800000000\tUNDEF\t"
          "0\t0\tAES-256-GCM\r\n"
          "GLOBAL_STATS\tMax bcast/mcast queue length\t0\r\nEND\r\n")


class FakeOpenVPN:
    """Serves one client at a time, as OpenVPN does; ``silent``: accepts and never answers."""

    def __init__(self, path: Path, silent: bool = False) -> None:
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(str(path))
        self.srv.listen(1)
        self.silent = silent
        self.connections = 0
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.sendall(b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n")
                while True:
                    try:
                        command = conn.recv(100)
                    except OSError:
                        break
                    if not command:
                        break
                    if self.silent:
                        continue
                    conn.sendall(b">CLIENT:ESTABLISHED,0\r\n>CLIENT:ENV,END\r\n" + ANSWER.encode())

    def close(self) -> None:
        self.srv.close()


def test_parse_keeps_the_columns_status_shows() -> None:
    assert ovpn.parse_clients(ANSWER) == {"home": {"real_address": "192.0.2.66:40000", "since": "2027-01-15 08:00:00",
                                                   "since_time": 1800000000, "bytes_received": 1234,
                                                   "bytes_sent": 5678}}


def test_one_kept_connection_answers_every_round(tmp_path: Path) -> None:
    fake = FakeOpenVPN(tmp_path / "m.sock")
    mgmt = ovpn.Management(str(tmp_path / "m.sock"))
    try:
        for _ in range(3):
            assert mgmt.clients()["home"]["bytes_sent"] == 5678  # type: ignore[index]
        assert fake.connections == 1
    finally:
        mgmt.close()
        fake.close()


def test_no_socket_or_no_answer_is_no_view_within_the_deadline(tmp_path: Path) -> None:
    assert ovpn.Management(str(tmp_path / "none.sock")).clients() is None
    fake = FakeOpenVPN(tmp_path / "m.sock", silent=True)
    try:
        started = time.monotonic()
        assert ovpn.clients_once(str(tmp_path / "m.sock"), timeout=0.2) is None
        assert time.monotonic() - started < 0.5
    finally:
        fake.close()
    assert not ovpn.usable("/" + "x" * 200) and ovpn.clients_once("/" + "x" * 200) is None


def test_server_conf_asks_for_a_root_only_unix_socket() -> None:
    from ipaddress import IPv4Address, IPv4Network

    from vpnoffload.model import Config, Tunnel, Vps
    from vpnoffload.render.openvpn import server_config

    cfg = Config(vps=Vps(IPv4Address("203.0.113.10")), tunnel=Tunnel(IPv4Network("198.51.100.0/24")), homes={},
                 services={})
    text = server_config(cfg, management_path=Path("/var/lib/vpnoffload/run/openvpn-server.mgmt"))
    assert "\nmanagement /var/lib/vpnoffload/run/openvpn-server.mgmt unix\nmanagement-client-user root\n" in text
    assert "management" not in server_config(cfg)
