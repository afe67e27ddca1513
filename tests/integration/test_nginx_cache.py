"""Issue 23, medium 1: the offline copies nginx keeps (``render nginx``, ``offline_copy``) never
hold a personalised answer, tested against the real nginx of this machine (1.22 on Debian 12,
which reads only the first of several ``Cache-Control`` lines in ``$upstream_http_*``).

In a throw-away namespace, a small home server on 198.51.100.2:8080 answers each kept path
with its own headers; nginx (the rendered include, nothing else) asks it once per path, then
home stops and each path is asked again: only the anonymous, cacheable answers may come back
as nginx's copy (200, ``X-Cache-Status: STALE``); every other one gets the friendly 503.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.nslib import in_ns, namespaces, needs_root, unique
from vpnoffload.config import parse_text
from vpnoffload.render import webserver

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = [needs_root, pytest.mark.root, pytest.mark.timeout(90),
              pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")]

HOME = "198.51.100.2"

# path -> (request headers, home's answer headers, kept?). Home's body names the path and
# the request's Cookie, so a leak would show it. None: nginx 1.22 reads only the first Vary
# line in $upstream_http_vary (and the last for its own variants), so a later "Vary: Cookie"
# may be kept; it is harmless because no request with a cookie is kept or gets a copy, so the
# copy is the answer for visitors without one.
CASES: dict[str, tuple[dict[str, str], list[tuple[str, str]], bool | None]] = {
    "/plain": ({}, [("Cache-Control", "max-age=60")], True),
    "/no-cc": ({}, [], True),
    "/asked-with-cookie": ({"Cookie": "session=alice"}, [], False),
    "/asked-with-authorization": ({"Authorization": "Basic YWxpY2U6eA=="}, [], False),
    "/private-first": ({}, [("Cache-Control", "private"), ("Cache-Control", "max-age=60")], False),
    "/private-second": ({}, [("Cache-Control", "max-age=60"), ("Cache-Control", "private")], False),
    "/no-store-second": ({}, [("Cache-Control", "public"), ("Cache-Control", "no-store")], False),
    "/private-in-list": ({}, [("Cache-Control", "public, max-age=60, Private")], False),
    "/sets-cookie": ({}, [("Set-Cookie", "session=bob; HttpOnly")], False),
    "/sets-cookie-second": ({}, [("X-Other", "1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], False),
    "/varies-on-cookie": ({}, [("Vary", "Cookie")], False),
    "/varies-on-cookie-second": ({}, [("Vary", "Accept-Encoding"), ("Vary", "cookie")], None),
    "/varies-on-language": ({}, [("Vary", "Accept-Language")], False),
    "/varies-on-encoding": ({}, [("Vary", "accept-encoding")], True),
    "/varies-in-list": ({}, [("Vary", "Accept-Encoding, Cookie")], False),
    "/varies-on-everything": ({}, [("Vary", "*")], False),
}

HOME_SERVER = r"""
import http.server, json, sys
cases = json.loads(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        path = self.path.split("?")[0]
        body = f"home answered {self.path} for cookie={self.headers.get('Cookie')}\n".encode()
        self.send_response(200)
        for name, value in cases.get(path, []):
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], 8080), H).serve_forever()
"""

NGINX_CONF = """\
daemon off;
user root;
pid {run}/nginx.pid;
error_log {run}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    include {out}/*.conf;
}}
"""

CONFIG = f"""\
[vps]
address = "203.0.113.10"
[tunnel]
subnet = "198.51.100.0/24"
[homes.home]
address = "{HOME}"
[services.blog]
listen = "80"
target = "8080"
hostname = "blog.example.org"
via = "proxy"
check = "http:/"
offline_copy = {sorted(CASES) + ["/query"]!r}
"""

# Runs in the namespace: GET each (path, headers) on a new connection to nginx on 127.0.0.1:80.
VISIT = r"""
import http.client, json, sys
out = []
for path, headers in json.loads(sys.argv[1]):
    c = http.client.HTTPConnection("127.0.0.1", 80, timeout=5)
    c.request("GET", path, headers={"Host": "blog.example.org", **headers})
    r = c.getresponse()
    out.append({"status": r.status, "cache": r.getheader("X-Cache-Status"),
                "body": r.read().decode("utf-8", "replace")})
print(json.dumps(out))
"""


def visit(ns: str, requests: list[tuple[str, dict[str, str]]]) -> list[dict]:
    import json

    proc = in_ns(ns, sys.executable, "-c", VISIT, json.dumps(requests), timeout=30)
    return json.loads(proc.stdout)


def wait_tcp(ns: str, host: str, port: int, limit: float = 10.0) -> None:
    probe = (f"import socket,time\nend=time.monotonic()+{limit}\n"
             f"while True:\n  try:\n    socket.create_connection(('{host}',{port}),0.5).close(); break\n"
             f"  except OSError:\n    assert time.monotonic()<end; time.sleep(0.1)\n")
    in_ns(ns, sys.executable, "-c", probe, timeout=limit + 5)


def test_nginx_keeps_no_personalised_answer_whatever_the_header_order(tmp_path: Path) -> None:
    import json

    out, run = tmp_path / "web", tmp_path / "run"
    run.mkdir()
    webserver.render_nginx(parse_text(CONFIG), out)
    (run / "nginx.conf").write_text(NGINX_CONF.format(run=run, out=out))
    with namespaces(unique("ngx")) as (ns,):
        in_ns(ns, "ip", "addr", "add", f"{HOME}/32", "dev", "lo")
        home = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", HOME_SERVER, HOME,
                                 json.dumps({p: h for p, (_, h, _) in CASES.items()})])
        nginx = subprocess.Popen(["ip", "netns", "exec", ns, NGINX, "-p", str(run), "-c", str(run / "nginx.conf"),
                                  "-e", str(run / "error.log")])
        try:
            wait_tcp(ns, HOME, 8080)
            wait_tcp(ns, "127.0.0.1", 80)
            asked = [(path, req) for path, (req, _, _) in CASES.items()] + [("/query?user=alice", {})]
            live = visit(ns, asked)
            assert all(a["status"] == 200 and "home answered" in a["body"] for a in live), live
            visit(ns, [(f"/plain?n={n}", {}) for n in range(20)])
            copies = sum(len(files) for _, _, files in os.walk(out / "cache"))
            # Not even for the second of two quick visits: a personalised answer is no HIT.
            again = visit(ns, asked)
            hits = {path: a for (path, _), a in zip(asked, again) if a["cache"] == "HIT"}
            assert set(hits) <= {p for p, (_, _, keep) in CASES.items() if keep is not False}, hits
            assert not any("alice" in a["body"] for a in hits.values()), hits

            home.kill()
            home.wait(timeout=10)
            # Past proxy_cache_valid (1 s, counted in whole seconds: up to 2 s after the last
            # fetch): what comes back now is the kept copy or nothing.
            time.sleep(2.5)
            anonymous = [(path, {}) for path in CASES] + [("/query?user=bob", {}), ("/query", {})]
            offline = dict(zip([p for p, _ in anonymous], visit(ns, anonymous)))
        finally:
            for proc in (nginx, home):
                proc.kill()
                proc.wait(timeout=10)
    for path, (_, _, keep) in CASES.items():
        answer = offline[path]
        assert "alice" not in answer["body"] and "bob" not in answer["body"], (path, answer)
        if keep is None:
            continue
        if keep:
            assert answer["status"] == 200 and answer["cache"] == "STALE", (path, answer)
        else:
            assert answer["status"] != 200 and answer["cache"] != "STALE", (path, answer)
    # The cache key is the path alone, and a query is never kept nor answered from a copy.
    for path in ("/query?user=bob", "/query"):
        assert offline[path]["status"] != 200 and "alice" not in offline[path]["body"], (path, offline[path])
    # One copy per kept path, however many query strings were asked (no flood of variants).
    assert copies <= sum(keep is not False for _, _, keep in CASES.values()), copies


# Home's answers on the paths of the next test: the body names the request's credentials.
LATER_VARY = {
    "/cookie-later": [("Vary", "Accept-Encoding"), ("Vary", "Cookie")],
    "/key-first": [("Vary", "X-Api-Key"), ("Vary", "Accept-Encoding")],
    "/key-later": [("Vary", "Accept-Encoding"), ("Vary", "X-Api-Key")],
}
LATER_HOME = HOME_SERVER.replace(
    "for cookie={self.headers.get('Cookie')}", "for cookie={self.headers.get('Cookie')} key={self.headers.get('X-Api-Key')}")


def test_a_later_vary_line_gives_no_visitor_another_visitors_page(tmp_path: Path) -> None:
    """nginx 1.22 shows only the first Vary line in $upstream_http_vary (and keys its own
    variants on the last): a ``Vary: Cookie`` on a later line is kept. That leaks nothing: a
    request with a cookie is never kept and never answered from the copy, so the copy is the
    answer for a request without one. A request header that is no credential (``X-Api-Key``)
    is refused on the first line and, on the last, nginx's own variants keep it apart."""
    import json

    out, run = tmp_path / "web", tmp_path / "run"
    run.mkdir()
    config = CONFIG.replace(f"offline_copy = {sorted(CASES) + ['/query']!r}", f"offline_copy = {sorted(LATER_VARY)!r}")
    webserver.render_nginx(parse_text(config), out)
    (run / "nginx.conf").write_text(NGINX_CONF.format(run=run, out=out))
    alice, key = {"Cookie": "session=alice"}, {"X-Api-Key": "alice-secret"}
    with namespaces(unique("ngx")) as (ns,):
        in_ns(ns, "ip", "addr", "add", f"{HOME}/32", "dev", "lo")
        home = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", LATER_HOME, HOME,
                                 json.dumps(LATER_VARY)])
        nginx = subprocess.Popen(["ip", "netns", "exec", ns, NGINX, "-p", str(run), "-c", str(run / "nginx.conf"),
                                  "-e", str(run / "error.log")])
        try:
            wait_tcp(ns, HOME, 8080)
            wait_tcp(ns, "127.0.0.1", 80)
            # Alice first (cookie; API key), then anonymous, then Alice again, all within 1 s.
            live = visit(ns, [("/cookie-later", alice), ("/cookie-later", {}), ("/cookie-later", alice),
                              ("/cookie-later", {}),
                              ("/key-first", key), ("/key-first", {}), ("/key-later", key), ("/key-later", {})])
            home.kill()
            home.wait(timeout=10)
            time.sleep(2.5)  # past proxy_cache_valid: only the kept copy answers now
            offline = visit(ns, [("/cookie-later", alice), ("/cookie-later", {}), ("/key-first", {}),
                                 ("/key-later", {}), ("/key-later", key)])
        finally:
            for proc in (nginx, home):
                proc.kill()
                proc.wait(timeout=10)
    # Home up: Alice always gets her own page from home, never a copy; anonymous gets the anonymous one.
    assert [a["cache"] for a in live[:4]] == ["BYPASS", "MISS", "BYPASS", "HIT"], live[:4]
    assert "alice" in live[0]["body"] and "alice" in live[2]["body"], live[:4]
    assert "cookie=None" in live[3]["body"], live[3]
    # A custom header on the first line: never kept; on the last: nginx's variant keeps it apart.
    assert all("alice" not in a["body"] for a in (live[5], live[7])), live[4:]
    # Home down: the copy is the anonymous page, and Alice gets no copy at all.
    assert offline[0]["cache"] != "STALE" and "alice" not in offline[0]["body"], offline[0]
    assert offline[1]["status"] == 200 and offline[1]["cache"] == "STALE", offline[1]
    assert "cookie=None key=None" in offline[1]["body"], offline[1]
    assert offline[2]["cache"] != "STALE" and "alice" not in offline[2]["body"], offline[2]
    assert "key=None" in offline[3]["body"], offline[3]  # the anonymous variant, not Alice's
    assert offline[4]["status"] != 200 or "key=alice-secret" in offline[4]["body"], offline[4]  # hers, if any
