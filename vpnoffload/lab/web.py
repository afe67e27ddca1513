"""A tiny web server for the lab: says which box served the page and who asked.

    python -m vpnoffload.lab.web --port 8080 [--name home] [--bind 0.0.0.0]

``--bind ::`` serves IPv6 and IPv4 alike (IPv4 clients are shown as plain
IPv4 addresses, not as ::ffff:a.b.c.d).

``GET /`` returns a small HTML page ("served from home; you are 192.0.2.2"),
``GET /whoami`` the client address as one line of plain text, ``GET /about.html``
a page every visitor gets alike (cacheable, with an ETag: what an offline copy
keeps) and ``GET /private`` one marked ``Cache-Control: private, no-store``. Because the lab
has no NAT, the address shown is the visitor's real one: proof that the VPS
forwarded the connection rather than proxying it. Logs nothing per request.
"""

from __future__ import annotations

import html
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>vpnoffload lab</title></head>
<body><h1>served from {name}</h1><p>you are {client}</p></body></html>
"""
ABOUT = """<!doctype html>
<html><head><meta charset="utf-8"><title>about</title></head>
<body><h1>about this site</h1><p>written at {name}</p></body></html>
"""


class Handler(BaseHTTPRequestHandler):
    server_version = "vpnoffload-labweb"
    sys_version = ""
    name = "home"  # set per server in main()

    def do_GET(self) -> None:
        self._reply(send_body=True)

    def do_HEAD(self) -> None:
        self._reply(send_body=False)

    def _reply(self, *, send_body: bool) -> None:
        client = self.client_address[0].removeprefix("::ffff:")  # an IPv4 client of a dual-stack socket
        path = self.path.split("?", 1)[0]
        if path == "/whoami":
            status, ctype, body = 200, "text/plain; charset=utf-8", f"{client}\n"
        elif path == "/":
            status, ctype = 200, "text/html; charset=utf-8"
            body = PAGE.format(name=html.escape(self.name), client=html.escape(client))
        elif path in ("/about.html", "/private"):
            status, ctype = 200, "text/html; charset=utf-8"
            body = ABOUT.format(name=html.escape(self.name))
        else:
            status, ctype, body = 404, "text/plain; charset=utf-8", "not found\n"
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if path == "/about.html":
            self.send_header("Cache-Control", "public, max-age=60")
            self.send_header("ETag", f'"{len(data)}-{self.name}"')
        else:
            self.send_header("Cache-Control", "private, no-store" if path == "/private" else "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a demo server; per-request lines would only drown the demo output


class DualStackServer(ThreadingHTTPServer):
    """An IPv6 socket that takes IPv4 connections too (IPV6_V6ONLY off)."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main(argv: list[str] | None = None) -> int:
    """``--port N`` (8080), ``--bind ADDRESS`` (0.0.0.0), ``--name BOX`` (home: the box named on the page)."""
    from vpnoffload.errors import ConfigError
    from vpnoffload.exits import run_main
    from vpnoffload.lean import options

    def body() -> int:
        given = options.parse(argv, values=("--port", "--bind", "--name"))
        bind, name = str(given.get("--bind", "0.0.0.0")), str(given.get("--name", "home"))
        try:
            port = int(str(given.get("--port", 8080)))
        except ValueError:
            raise ConfigError(f"--port: {given['--port']!r} is not a port number") from None
        handler = type("NamedHandler", (Handler,), {"name": name})
        server_class = DualStackServer if ":" in bind else ThreadingHTTPServer
        server = server_class((bind, port), handler)
        server.daemon_threads = True
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0

    return run_main(body, prog="vpnoffload-labweb")


if __name__ == "__main__":
    sys.exit(main())
