"""OpenVPN's own live view of the homes, through its management interface (a unix socket).

The VPS's OpenVPN is told ``management STATE/run/openvpn-server.mgmt unix`` and
``management-client-user root`` (templates/server.conf.j2): the socket sits in the 0700 run
directory and OpenVPN itself refuses any peer that is not root, so only the watchdog and
``status`` (both root) can talk to it. Each round the watchdog asks ``status 3`` and reads
the client list OpenVPN holds in memory now (who is connected, since when, from where, bytes
each way): not the status file OpenVPN rewrites every 2 s.

OpenVPN serves one management client at a time, so the watchdog keeps one connection open;
``status`` asks itself (:func:`clients_once`) only when no watchdog publishes. Every read is
bounded by a deadline; any failure is "no view this round", never an error. Lean: socket and
time only (the watchdog imports this).
"""

from __future__ import annotations

import socket
import time

from vpnoffload import runfiles

#: Where the socket is, relative to the run directory (one name for the renderer and readers).
SOCKET_NAME = runfiles.OPENVPN_SERVER_MANAGEMENT
#: A unix socket path longer than this cannot be bound (sun_path is 108 bytes with its NUL).
MAX_PATH = 107
#: A read of the client list ends by this deadline (seconds).
READ_TIMEOUT = 0.3
#: At most this much of an answer is read (a few homes need a few hundred bytes each).
MAX_ANSWER = 256 * 1024
#: The CLIENT_LIST columns kept, under the names ``status`` shows.
FIELDS = {"Real Address": "real_address", "Connected Since": "since", "Connected Since (time_t)": "since_time",
          "Bytes Received": "bytes_received", "Bytes Sent": "bytes_sent"}


def usable(path: str) -> bool:
    """Can a unix socket live at ``path``? (Too long a state dir: no management interface.)"""
    return len(path.encode()) <= MAX_PATH


def parse_clients(text: str) -> dict[str, dict[str, object]]:
    """Common name -> the kept CLIENT_LIST columns of a ``status 3`` answer (tab separated)."""
    header: list[str] = []
    out: dict[str, dict[str, object]] = {}
    for line in text.splitlines():
        row = line.rstrip("\r").split("\t")
        if len(row) > 1 and row[0] == "HEADER" and row[1] == "CLIENT_LIST":
            header = row[1:]
        elif row[0] == "CLIENT_LIST" and header:
            entry = dict(zip(header, row))
            kept: dict[str, object] = {}
            for column, name in FIELDS.items():
                value = entry.get(column)
                kept[name] = int(value) if value is not None and value.isdigit() else value
            out[entry.get("Common Name", "")] = kept
    return out


class Management:
    """One kept connection to OpenVPN's management socket; :meth:`clients` once per round."""

    def __init__(self, path: str, timeout: float = READ_TIMEOUT) -> None:
        self.path, self.timeout = path, timeout
        self._sock: socket.socket | None = None

    def clients(self) -> dict[str, dict[str, object]] | None:
        """OpenVPN's connected homes now; None when it cannot be asked (no socket, no answer in time)."""
        deadline = time.monotonic() + self.timeout
        try:
            if self._sock is None:
                self._sock = _connect(self.path, self.timeout)
            return parse_clients(_ask(self._sock, b"status 3\n", deadline))
        except (OSError, ValueError):
            self.close()
            return None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def clients_once(path: str, timeout: float = READ_TIMEOUT) -> dict[str, dict[str, object]] | None:
    """Ask once and hang up (``status`` when no watchdog runs); None when nobody answers in time."""
    if not usable(path):
        return None
    mgmt = Management(path, timeout)
    try:
        return mgmt.clients()
    finally:
        mgmt.close()


def _connect(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _ask(sock: socket.socket, command: bytes, deadline: float) -> str:
    """Send ``command`` and read up to the answer's ``END`` line; notifications (">...") and the
    greeting are skipped. TimeoutError past ``deadline``, ValueError for an answer too long."""
    sock.sendall(command)
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from OpenVPN's management interface in time")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("OpenVPN closed its management interface")
        data += chunk
        if len(data) > MAX_ANSWER:
            raise ValueError("answer too long")
        lines = data.split(b"\n")
        if any(line.rstrip(b"\r") == b"END" for line in lines[:-1]):
            kept = [line for line in lines if not line.startswith(b">")]
            return b"\n".join(kept).decode("utf-8", "replace")
