"""The other programs of the benchmark, run by hand inside the lab's namespaces.

* the web site at home: nginx serving one small static file (fast, so that the
  path is what gets measured, not the backend);
* the alternatives on the VPS: an nginx reverse proxy and HAProxy in TCP mode,
  both sending to the home box's tunnel address;
* iperf3 servers, and the port listener that holds the bulk port at home
  between item 2's iperf3 runs (iperf3 serves one client at a time and closes
  its listener between tests, so the watchdog's checks would fail now and then).

Each runs in the foreground under ``Lab.popen`` (so the lab's teardown kills it
whatever happens) with its config and files in a directory of its own under
``root``, the run's scratch directory, which the caller removes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vpnoffload.lab.netns import Lab

#: The page the home site serves; the marker tells it from the friendly page.
HOME_MARKER = "served from home"
PAGE = f"<!doctype html><title>bench</title><p>{HOME_MARKER}</p>\n"
START_WAIT = 10.0


@dataclass
class Running:
    """A server started in the lab: its process, files and where it listens."""

    name: str
    proc: subprocess.Popen
    directory: Path
    address: str
    port: int

    def log_tail(self, lines: int = 5) -> str:
        for log in ("error.log", "out.log"):
            path = self.directory / log
            if path.exists():
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _workdir(root: Path, name: str) -> Path:
    # nginx workers run as nobody and must read the page: keep it world-readable.
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    os.chmod(path, 0o755)
    return path


def _start(lab: Lab, host: str, name: str, directory: Path, argv: list[str], address: str, port: int) -> Running:
    with open(directory / "out.log", "ab") as out:
        proc = lab.popen(host, *argv, stdout=out, stderr=subprocess.STDOUT)
    running = Running(name, proc, directory, address, port)
    if not lab.wait_tcp(host, address, port, timeout=START_WAIT):
        stop(running)  # not left holding the port for whatever the caller starts instead
        raise RuntimeError(f"{name} did not start listening on {address}:{port}: {running.log_tail()}")
    return running


def stop(lab_server: Running) -> None:
    """Stop a server now (the lab's teardown would kill it anyway)."""
    if lab_server.proc.poll() is None:
        lab_server.proc.terminate()
        try:
            lab_server.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            lab_server.proc.kill()
            lab_server.proc.wait(timeout=5)


# ------------------------------------------------------------------ nginx


def _nginx_main(directory: Path, body: str, workers: str = "auto") -> str:
    temp = "\n".join(f"    {kind}_temp_path {directory}/{kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""\
# Written by bench/servers.py for one benchmark run.
user nobody nogroup;
worker_processes {workers};
worker_rlimit_nofile 16384;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
{temp}
{body}
}}
"""


def nginx_site_config(directory: Path, port: int) -> str:
    """The home site: one static page on ``port``, all addresses."""
    return _nginx_main(directory, f"""\
    server {{
        listen {port} backlog=4096;
        root {directory}/www;
        location / {{ index index.html; }}
    }}""")


def nginx_proxy_config(directory: Path, listen: str, keepalive_listen: str, upstream: str) -> str:
    """A reverse proxy as tutorials write it (``proxy_pass``, new upstream connection per
    request) on ``listen``, and a tuned one with upstream keep-alive on ``keepalive_listen``."""
    headers = """\
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"""
    return _nginx_main(directory, f"""\
    upstream home {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen {listen} backlog=4096;
        location / {{
            proxy_pass http://{upstream};
{headers}
        }}
    }}
    server {{
        listen {keepalive_listen} backlog=4096;
        location / {{
            proxy_pass http://home;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{headers}
        }}
    }}""")


def _nginx_dirs(directory: Path) -> None:
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "www"):
        (directory / kind).mkdir(mode=0o755, exist_ok=True)


def start_nginx_site(lab: Lab, root: Path, host: str, port: int) -> Running:
    directory = _workdir(root, "site")
    _nginx_dirs(directory)
    (directory / "www" / "index.html").write_text(PAGE)
    os.chmod(directory / "www" / "index.html", 0o644)
    conf = directory / "nginx.conf"
    conf.write_text(nginx_site_config(directory, port))
    argv = ["nginx", "-c", str(conf), "-p", str(directory), "-g", "daemon off;"]
    return _start(lab, host, "nginx (home site)", directory, argv, "127.0.0.1", port)


def start_nginx_proxy(lab: Lab, root: Path, host: str, address: str, port: int, keepalive_port: int, upstream: str) -> Running:
    directory = _workdir(root, "nginx-proxy")
    _nginx_dirs(directory)
    conf = directory / "nginx.conf"
    conf.write_text(nginx_proxy_config(directory, f"{address}:{port}", f"{address}:{keepalive_port}", upstream))
    argv = ["nginx", "-c", str(conf), "-p", str(directory), "-g", "daemon off;"]
    running = _start(lab, host, "nginx reverse proxy", directory, argv, address, port)
    if not lab.wait_tcp(host, address, keepalive_port, timeout=START_WAIT):
        raise RuntimeError(f"nginx did not listen on {address}:{keepalive_port}: {running.log_tail()}")
    return running


# ------------------------------------------------------------------ HAProxy


def haproxy_config(directory: Path, listen: str, upstream: str, bulk_listen: str, bulk_upstream: str) -> str:
    """HAProxy forwarding TCP (no HTTP parsing) from ``listen`` to ``upstream``, and the
    same for the bulk (iperf3) port."""
    return f"""\
# Written by bench/servers.py for one benchmark run.
global
    maxconn 8000
    pidfile {directory}/haproxy.pid
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend visitors
    bind {listen}
    default_backend home
backend home
    server home {upstream}
frontend bulk
    bind {bulk_listen}
    default_backend bulk
backend bulk
    server home {bulk_upstream}
"""


def start_haproxy(lab: Lab, root: Path, host: str, address: str, port: int, upstream: str,
                  bulk_port: int, bulk_upstream: str) -> Running:
    directory = _workdir(root, "haproxy")
    conf = directory / "haproxy.cfg"
    conf.write_text(haproxy_config(directory, f"{address}:{port}", upstream, f"{address}:{bulk_port}", bulk_upstream))
    return _start(lab, host, "HAProxy", directory, ["haproxy", "-db", "-f", str(conf)], address, port)


# ------------------------------------------------------------------ iperf3


def start_iperf3(lab: Lab, root: Path, host: str, port: int, bind: str | None = None) -> Running:
    directory = _workdir(root, "iperf3")
    argv = ["iperf3", "-s", "-p", str(port), *(["-B", bind] if bind else [])]
    return _start(lab, host, "iperf3 server", directory, argv, bind or "127.0.0.1", port)


# ------------------------------------------------------------------ a port listener

#: How long the port listener lives at most: longer than a full run's items 1-5 (~25 minutes).
LISTEN_LIMIT = 7200.0
#: How many connections it accepts at most (the watchdog checks twice every few seconds).
LISTEN_ACCEPTS = 1_000_000

# Accepts and closes every connection until LIMIT s or ACCEPTS connections, whichever comes
# first. One blocking accept at a time with the time left as its timeout: idle, it costs
# nothing (no polling). The backlog keeps simultaneous checks from ever being refused.
LISTENER = r"""
import socket, sys, time
address, port, limit, accepts = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
deadline = time.monotonic() + limit
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((address, port))
s.listen(128)
for _ in range(accepts):
    left = deadline - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        conn, _ = s.accept()
    except TimeoutError:
        break
    except OSError:
        continue
    conn.close()
s.close()
"""


def listener_argv(port: int, address: str = "0.0.0.0", limit: float = LISTEN_LIMIT,
                  accepts: int = LISTEN_ACCEPTS) -> list[str]:
    return [sys.executable, "-c", LISTENER, address, str(port), str(limit), str(accepts)]


def start_listener(lab: Lab, root: Path, host: str, port: int) -> Running:
    """A listener that accepts and closes every connection on ``port`` (bounded: LISTEN_LIMIT s,
    LISTEN_ACCEPTS connections), for a forwarded service whose real server is not needed now."""
    return _start(lab, host, "port listener", _workdir(root, "listener"), listener_argv(port), "127.0.0.1", port)
