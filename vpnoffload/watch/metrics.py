"""Prometheus text metrics of the watchdog, on a loopback address only."""

from __future__ import annotations

import socketserver
import threading

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
    lines += _copies(dog, run)
    lines += _access_drops(dog)
    return "\n".join(lines) + "\n"


def _access_drops(dog: Watchdog) -> list[str]:
    """What each service's access rules dropped (issue 28), read from the kernel at each scrape."""
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
    lines = ["# HELP vpnoffload_offline_copy_pages Pages kept for the service while home is down.",
             "# TYPE vpnoffload_offline_copy_pages gauge"]
    lines += [f'vpnoffload_offline_copy_pages{{service="{n}"}} {s["kept"]}' for n, s in found.items()]
    lines += ["# HELP vpnoffload_offline_copy_age_seconds Age of the oldest kept page.",
              "# TYPE vpnoffload_offline_copy_age_seconds gauge"]
    lines += [f'vpnoffload_offline_copy_age_seconds{{service="{n}"}} {s["oldest_age"]}'
              for n, s in found.items() if s["oldest_age"] is not None]
    return lines


class _Handler(socketserver.StreamRequestHandler):
    server: "MetricsServer"

    def handle(self) -> None:
        self.connection.settimeout(5)
        try:
            self.rfile.readline(8192)
            body = exposition(self.server.dog, self.server.run).encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                             + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        except OSError:
            pass


class MetricsServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, listen: str, dog: Watchdog, run: str | None = None) -> None:
        host, _, port = listen.rpartition(":")
        self.dog, self.run = dog, run
        super().__init__((host, int(port)), _Handler)

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="metrics", daemon=True).start()
