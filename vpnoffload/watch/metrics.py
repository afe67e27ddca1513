"""Prometheus text metrics of the watchdog, on a loopback address only."""

from __future__ import annotations

import socket
import socketserver
import threading
from typing import Any

from vpnoffload.watch.decide import Watchdog


def exposition(dog: Watchdog, run: str | None = None) -> str:
    """The metrics text; ``run``: the state's run directory (for the offline copies' age)."""
    lines = [
        "# HELP vpnoffload_service_forwarding 1 while the service is forwarded home, 0 on fallback.",
        "# TYPE vpnoffload_service_forwarding gauge",
    ]
    statuses = list(dog.status.values())
    lines += [f'vpnoffload_service_forwarding{{service="{s.name}"}} {int(s.state == "forwarding")}' for s in statuses]
    lines += ["# HELP vpnoffload_service_healthy 1 when the last check passed.", "# TYPE vpnoffload_service_healthy gauge"]
    lines += [f'vpnoffload_service_healthy{{service="{s.name}"}} {int(s.healthy)}' for s in statuses]
    lines += ["# HELP vpnoffload_check_latency_seconds Duration of the last check.",
              "# TYPE vpnoffload_check_latency_seconds gauge"]
    lines += [f'vpnoffload_check_latency_seconds{{service="{s.name}"}} {s.latency or 0:.6f}' for s in statuses]
    lines += ["# HELP vpnoffload_swaps_total Swaps between home and fallback.", "# TYPE vpnoffload_swaps_total counter"]
    lines += [f'vpnoffload_swaps_total{{service="{s.name}"}} {s.swaps}' for s in statuses]
    lines += _tunnels(dog)
    lines += _rounds(dog)
    lines += _copies(dog, run)
    lines += _access_drops(dog)
    return "\n".join(lines) + "\n"


def _tunnels(dog: Watchdog) -> list[str]:
    """Per home box, is its tunnel up: OpenVPN's client list when the watchdog read it this round;
    when it could not (no management socket), whether the home answered a check through the tunnel."""
    listed = (dog.openvpn or {}).get("clients")
    seen = dog.homes_seen()
    lines = ["# HELP vpnoffload_home_tunnel_up 1 while the home box's OpenVPN client is connected.",
             "# TYPE vpnoffload_home_tunnel_up gauge"]
    for home in dog.config.homes:
        up = home in listed if isinstance(listed, dict) else bool(seen.get(home, {}).get("answered"))
        lines.append(f'vpnoffload_home_tunnel_up{{home="{home}"}} {int(up)}')
    return lines


def _rounds(dog: Watchdog) -> list[str]:
    """The watchdog's heartbeat (a loop that hangs while this thread still answers shows here) and
    its own memory: the metrics server lives in the lean watchdog, so this is what it costs."""
    lines = ["# HELP vpnoffload_watch_interval_seconds How often every service is checked (watch.interval).",
             "# TYPE vpnoffload_watch_interval_seconds gauge",
             f"vpnoffload_watch_interval_seconds {float(dog.config.watch.interval):g}"]
    last = max((s.last_check for s in dog.status.values()), default=0.0)
    if last:
        lines += ["# HELP vpnoffload_watch_last_round_timestamp_seconds When the last round of checks ended.",
                  "# TYPE vpnoffload_watch_last_round_timestamp_seconds gauge",
                  f"vpnoffload_watch_last_round_timestamp_seconds {last:.3f}"]
    rss = _resident_bytes()
    if rss is not None:
        lines += ["# HELP process_resident_memory_bytes Resident memory of the watchdog process.",
                  "# TYPE process_resident_memory_bytes gauge", f"process_resident_memory_bytes {rss}"]
    return lines


def _resident_bytes() -> int | None:
    """This process's resident memory from /proc (no psutil, no resource module); None off Linux."""
    import os

    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _access_drops(dog: Watchdog) -> list[str]:
    """What each service's access rules dropped, read from the kernel at each scrape."""
    from vpnoffload.lean import accessdrops

    numbers = accessdrops.restricted(dog.config)
    return accessdrops.metrics(accessdrops.read(numbers)) if numbers else []


def _copies(dog: Watchdog, run: str | None) -> list[str]:
    """The offline copies' age and count (how stale a visitor's copy may be), from their index files."""
    kept = [svc.name for svc in dog.config.services.values() if svc.offline_copy]
    if run is None or not kept:
        return []
    from vpnoffload.fallback.copies import summary

    found = {name: summary(run, name) for name in kept}
    lines = ["# HELP vpnoffload_offline_copy_interval_seconds How often kept pages are refreshed "
             "(watch.offline_copy_every).",
             "# TYPE vpnoffload_offline_copy_interval_seconds gauge",
             f"vpnoffload_offline_copy_interval_seconds {float(dog.config.watch.offline_copy_every):g}"]
    lines += ["# HELP vpnoffload_offline_copy_pages Pages kept for the service while home is down.",
             "# TYPE vpnoffload_offline_copy_pages gauge"]
    lines += [f'vpnoffload_offline_copy_pages{{service="{n}"}} {s["kept"]}' for n, s in found.items()]
    lines += ["# HELP vpnoffload_offline_copy_age_seconds Age of the oldest kept page.",
              "# TYPE vpnoffload_offline_copy_age_seconds gauge"]
    lines += [f'vpnoffload_offline_copy_age_seconds{{service="{n}"}} {s["oldest_age"]}'
              for n, s in found.items() if s["oldest_age"] is not None]
    return lines


#: The whole request line must arrive within this many seconds (a deadline, not a timeout per recv).
REQUEST_DEADLINE = 2.0
#: At most this much of the request is read.
MAX_HEAD = 8192


def _read_head(sock: "socket.socket", deadline: float) -> bytes:
    """The request up to its first line end, at most MAX_HEAD bytes, within ``deadline``."""
    import time

    head = b""
    while b"\n" not in head and len(head) < MAX_HEAD:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request head not complete in time")
        sock.settimeout(left)
        chunk = sock.recv(MAX_HEAD - len(head))
        if not chunk:
            break
        head += chunk
    return head


class _Handler(socketserver.BaseRequestHandler):
    server: "MetricsServer"

    def handle(self) -> None:
        import time

        deadline = time.monotonic() + REQUEST_DEADLINE
        try:
            _read_head(self.request, deadline)
            body = exposition(self.server.dog, self.server.run).encode()
            self.request.settimeout(max(0.1, deadline + REQUEST_DEADLINE - time.monotonic()))
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                                 + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        except OSError:
            pass


class MetricsServer(socketserver.ThreadingTCPServer):
    """At most MAX_CLIENTS scrapes at once, each in a thread bounded by REQUEST_DEADLINE; one
    more connection is closed at once. A local client that opens many connections or trickles
    bytes cannot grow the watchdog's threads (and memory), nor hold a thread for long."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 16
    MAX_CLIENTS = 4

    def __init__(self, listen: str, dog: Watchdog, run: str | None = None) -> None:
        host, _, port = listen.rpartition(":")
        self.dog, self.run = dog, run
        self._slots = threading.BoundedSemaphore(self.MAX_CLIENTS)
        super().__init__((host.strip("[]"), int(port)), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="metrics", daemon=True).start()


def start_metrics(listen: str, dog: Watchdog, run: str | None = None) -> "MetricsServer | None":
    """The metrics server, serving; None (logged) when its address cannot be bound: the
    watchdog's failover matters more than its metrics."""
    from vpnoffload.lean import say

    try:
        server = MetricsServer(listen, dog, run)
    except OSError as exc:
        say.Log("vpnoffload.watch").error("metrics off: cannot listen on %s: %s", listen[:80], exc.strerror or exc)
        return None
    server.start()
    return server
