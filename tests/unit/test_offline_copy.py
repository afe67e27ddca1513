"""Offline copies (issue 16): config, fetch rules, size cap, conditional refresh, path-to-file mapping,
the schedule, and the page server answering from a copy (200, Content-Type, Age, banner, HEAD; 503 else)."""

from __future__ import annotations

import http.client
import http.server
import marshal
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.prereq import requires
from vpnoffload.cli.app import app
from vpnoffload.config.files import parse_text
from vpnoffload.errors import ConfigError
from vpnoffload.fallback import copier, copies, page, pageloop
from vpnoffload.fallback.copyhttp import banner, copy_head, request_target

BASE = """\
[vps]
address = "203.0.113.10"
[homes.home]
address = "10.88.0.2"
[services.blog]
listen = "80"
target = "8080"
hostname = "blog.example.org"
"""


# ------------------------------------------------------------------ config


def test_config_offline_copy_and_watch_defaults() -> None:
    config = parse_text(BASE + 'offline_copy = ["/", "/about.html", "/feed?x=1"]\n')
    svc = config.services["blog"]
    assert svc.offline_copy == ("/", "/about.html", "/feed?x=1") and svc.offline_banner is True
    assert config.watch.offline_copy_every == 600 and config.watch.offline_copy_max_bytes == 20 * 1024 * 1024
    config = parse_text(BASE + "offline_banner = false\n[watch]\noffline_copy_every = 60\n"
                        "offline_copy_max_bytes = 4096\n")
    assert config.services["blog"].offline_copy == () and config.services["blog"].offline_banner is False
    assert config.watch.offline_copy_every == 60 and config.watch.offline_copy_max_bytes == 4096


@pytest.mark.parametrize("extra, words", [
    ('offline_copy = "/"\n', "must be a list"),
    ('offline_copy = ["about.html"]\n', "not a path"),
    ('offline_copy = ["/a/../etc/passwd"]\n', "'..' segment"),
    ('offline_copy = ["/", "/"]\n', "listed twice"),
    ('offline_copy = ["/a b"]\n', "not a path"),
    ('offline_copy = ["/x#frag"]\n', "not a path"),
    ('offline_copy = ["/"]\nfallback = "reset"\n', "fallback = 'page'"),
    ('offline_banner = "yes"\n', "true or false"),
])
def test_config_offline_copy_refused(extra: str, words: str) -> None:
    with pytest.raises(ConfigError, match="services.blog.offline") as info:
        parse_text(BASE + extra)
    assert words in str(info.value)


def test_config_offline_copy_proxy_needs_port_80() -> None:
    proxy = BASE.replace('listen = "80"', 'listen = "443"') + 'via = "proxy"\noffline_copy = ["/"]\n'
    with pytest.raises(ConfigError, match="needs port 80"):
        parse_text(proxy)
    assert parse_text(BASE + 'via = "proxy"\noffline_copy = ["/"]\n').services["blog"].offline_copy == ("/",)


def test_config_watch_limits() -> None:
    with pytest.raises(ConfigError, match="watch.offline_copy_every"):
        parse_text(BASE + "[watch]\noffline_copy_every = 1\n")
    with pytest.raises(ConfigError, match="watch.offline_copy_max_bytes"):
        parse_text(BASE + "[watch]\noffline_copy_max_bytes = 1.5\n")


def test_cli_service_add_offline_copy(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(BASE.split("[services.blog]")[0])
    result = CliRunner().invoke(app, ["-c", str(cfg), "service", "add", "blog", "--listen", "80", "--target", "8080",
                                      "--hostname", "blog.example.org", "--offline-copy", "/",
                                      "--offline-copy", "/about.html"])
    assert result.exit_code == 0, result.output
    assert "2 page(s) kept" in result.output
    assert parse_text(cfg.read_text()).services["blog"].offline_copy == ("/", "/about.html")
    before = cfg.read_text()
    result = CliRunner().invoke(app, ["-c", str(cfg), "service", "add", "git", "--listen", "22", "--target", "22",
                                      "--offline-copy", "/"])
    assert result.exit_code == 2 and "offline_copy" in result.output and cfg.read_text() == before


# ------------------------------------------------------------------ fetch rules


@pytest.mark.parametrize("status, headers, outcome", [
    (200, [("Content-Type", "text/html")], copier.KEEP),
    (200, [("Cache-Control", "public, max-age=60")], copier.KEEP),
    (304, [], copier.RENEW),
    (200, [("Cache-Control", "no-store")], copier.REFUSE),
    (200, [("cache-control", "max-age=0, Private")], copier.REFUSE),
    (200, [("Cache-Control", 'private="set-cookie"')], copier.REFUSE),
    (200, [("Set-Cookie", "sid=1")], copier.REFUSE),
    (401, [("WWW-Authenticate", "Basic")], copier.REFUSE),
    (403, [], copier.REFUSE),
    (200, [("WWW-Authenticate", "Bearer")], copier.REFUSE),
    (200, [("Content-Encoding", "gzip")], copier.REFUSE),
    (200, [("Content-Encoding", "identity")], copier.KEEP),
    (500, [], copier.FAIL),
    (302, [("Location", "/x")], copier.FAIL),
    (404, [], copier.FAIL),
])
def test_verdict(status: int, headers: list[tuple[str, str]], outcome: str) -> None:
    assert copier.verdict(status, headers)[0] == outcome


def test_conditional_headers() -> None:
    assert copier.conditional_headers(None) == []
    assert copier.conditional_headers({"etag": '"v1"', "last_modified": "Tue, 01 Dec 2026 10:00:00 GMT"}) == [
        ("If-None-Match", '"v1"'), ("If-Modified-Since", "Tue, 01 Dec 2026 10:00:00 GMT")]


# ------------------------------------------------------------------ path-to-file mapping


def test_body_names_never_come_from_the_path(tmp_path: Path) -> None:
    names = {copies.body_name(p) for p in ("/", "/../../etc/passwd", "/a/b", "/\x00")}
    assert len(names) == 4 and all(copies.safe_name(n) and "/" not in n and "." not in n for n in names)
    assert copies.body_name("/").split("-")[0] == copies.body_name("/").split("-")[0]  # same hash, fresh suffix
    assert copies.body_name("/") != copies.body_name("/")
    for bad in ("../index", "index", "x" * 41, None, copies.body_name("/")[:-1] + "g"):
        assert not copies.safe_name(bad)
    for bad in ("", "../x", ".x", "a/b"):
        with pytest.raises(ValueError, match="not a service name"):
            copies.service_dir(str(tmp_path), bad)


def test_open_kept_skips_odd_index_entries(tmp_path: Path) -> None:
    run = str(tmp_path)
    os.makedirs(copies.service_dir(run, "blog"))
    (tmp_path / "secret").write_text("no")
    good = copies.body_name("/")
    (Path(copies.service_dir(run, "blog")) / good).write_bytes(b"hello")
    copies.write_index(run, "blog", {"format": 1, "pages": {
        "/": {"file": good, "size": 5, "type": "text/plain", "fetched": 1.0},
        "/evil": {"file": "../../secret", "size": 2, "type": "text/plain", "fetched": 1.0},
        "/short": {"file": good, "size": 9, "type": "text/plain", "fetched": 1.0},
    }, "last_fetch": 1.0, "result": "x"})
    kept = copies.open_kept(run, "blog", ["/", "/evil", "/short", "/missing"])
    assert list(kept) == ["/"] and os.pread(kept["/"].fd, 10, 0) == b"hello"


# ------------------------------------------------------------------ fetching from a fake home


class _Home(http.server.BaseHTTPRequestHandler):
    pages: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        status, headers, body = self.pages.get(self.path, (404, [], b"no"))
        if self.headers.get("If-None-Match") and dict(headers).get("ETag") == self.headers["If-None-Match"]:
            status, body = 304, b""
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def home():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Home)
    _Home.pages, _Home.seen = {}, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _job(run: str, server, paths: list[str], max_bytes: int = 1 << 20) -> dict:
    return {"run": run, "max_bytes": max_bytes, "timeout": 3.0, "counted": ["blog"],
            "services": [{"name": "blog", "address": "127.0.0.1", "port": server.server_address[1],
                          "host": "blog.example.org", "tls": False, "paths": paths}]}


def test_fetch_keeps_cacheable_refuses_private_and_refreshes_conditionally(tmp_path: Path, home,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = str(tmp_path)
    _Home.pages = {
        "/": (200, [("Content-Type", "text/html; charset=utf-8"), ("ETag", '"v1"')], b"<p>home</p>"),
        "/private": (200, [("Content-Type", "text/html"), ("Cache-Control", "private")], b"secret"),
        "/cookie": (200, [("Set-Cookie", "a=b")], b"c"),
    }
    copier.run(_job(run, home, ["/", "/private", "/cookie", "/gone"]))
    index = copies.read_index(run, "blog")
    assert set(index["pages"]) == {"/"} and "1/4 fetched" in index["result"]
    assert "private" in index["paths"]["/private"] and "cookie" in index["paths"]["/cookie"]
    assert all(s.get("host") == "blog.example.org" and "cookie" not in s and "authorization" not in s
               for s in _Home.seen)
    first = index["pages"]["/"]
    assert Path(copies.service_dir(run, "blog"), first["file"]).read_bytes() == b"<p>home</p>"
    assert os.stat(copies.service_dir(run, "blog")).st_mode & 0o077 == 0
    # Refresh: conditional, 304 renews the copy (same file, new time). The clock moves a
    # minute on, so "renewed" cannot pass by the old time being kept.
    _Home.seen = []
    later = first["fetched"] + 60
    with monkeypatch.context() as clock:
        clock.setattr(copier.time, "time", lambda: later)
        copier.run(_job(run, home, ["/"]))
    assert _Home.seen[0]["if-none-match"] == '"v1"'
    again = copies.read_index(run, "blog")["pages"]["/"]
    assert again["file"] == first["file"] and again["fetched"] == later
    # A failed fetch keeps the old copy; a page that became private is dropped.
    _Home.pages["/"] = (500, [], b"oops")
    copier.run(_job(run, home, ["/"]))
    assert copies.read_index(run, "blog")["pages"]["/"]["file"] == first["file"]
    _Home.pages["/"] = (200, [("Cache-Control", "no-store")], b"now private")
    copier.run(_job(run, home, ["/"]))
    assert copies.read_index(run, "blog")["pages"] == {}
    assert sorted(os.listdir(copies.service_dir(run, "blog"))) == ["index"]


def test_fetch_home_down_keeps_the_old_copy(tmp_path: Path, home) -> None:
    run = str(tmp_path)
    _Home.pages = {"/": (200, [("Content-Type", "text/plain")], b"v1")}
    copier.run(_job(run, home, ["/"]))
    job = _job(run, home, ["/"])
    job["services"][0]["port"] = 1  # nothing listens: refused
    copier.run(job)
    index = copies.read_index(run, "blog")
    assert "/" in index["pages"] and "0/1 fetched" in index["result"] and "fail" in index["paths"]["/"]


def test_size_cap_for_all_kept_pages_together(tmp_path: Path, home) -> None:
    run = str(tmp_path)
    _Home.pages = {"/a": (200, [], b"a" * 3000), "/b": (200, [], b"b" * 3000), "/c": (200, [], b"c" * 500)}
    copier.run(_job(run, home, ["/a", "/b", "/c"], max_bytes=4000))
    index = copies.read_index(run, "blog")
    assert set(index["pages"]) == {"/a", "/c"} and "room left" in index["paths"]["/b"]
    assert copies.summary(run, "blog")["bytes"] == 3500
    # Growing beyond the cap on refresh fails and keeps the old copy.
    _Home.pages["/a"] = (200, [], b"A" * 3600)
    copier.run(_job(run, home, ["/a", "/c"], max_bytes=4000))
    kept = copies.read_index(run, "blog")["pages"]
    assert kept["/a"]["size"] == 3000 and sum(p["size"] for p in kept.values()) <= 4000


def test_copier_main_reads_its_job_on_stdin(tmp_path: Path, home, monkeypatch) -> None:
    import io

    _Home.pages = {"/": (200, [], b"x")}
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(marshal.dumps(_job(str(tmp_path), home, ["/"])))))
    assert copier.main([]) == 0 and "/" in copies.read_index(str(tmp_path), "blog")["pages"]


# ------------------------------------------------------------------ the schedule


class _Svc:
    def __init__(self, name: str, paths: tuple[str, ...]) -> None:
        self.name, self.offline_copy, self.hostname = name, paths, f"{name}.example.org"
        self.listen_address, self.listen_port, self.target_port, self.page_over_tls = "203.0.113.10", 80, 8080, False


class _Cfg:
    class watch:  # noqa: N801
        offline_copy_every, offline_copy_max_bytes, timeout, interval = 600.0, 1000, 0.6, 0.5

    class _Home:
        address = "10.88.0.2"

    services = {"blog": _Svc("blog", ("/",)), "git": _Svc("git", ())}
    homes = {"home": _Home}


class _Child:
    def __init__(self) -> None:
        self.done, self.killed = False, False

    def poll(self):
        return 0 if self.done else None

    def kill(self) -> None:
        self.killed = True


def test_schedule_first_soon_then_every_interval_only_while_home(tmp_path: Path) -> None:
    now = [100.0]
    started: list[dict] = []
    children: list[_Child] = []

    def start(job: bytes) -> _Child:
        started.append(marshal.loads(job))
        children.append(_Child())
        return children[-1]

    sched = copies.CopySchedule(str(tmp_path), start, clock=lambda: now[0])
    healthy = lambda n: True  # noqa: E731
    assert not sched.tick(_Cfg, {"blog": "home"}, healthy)  # not yet
    now[0] += copies.FIRST_AFTER
    assert copies.FIRST_AFTER < 15 and sched.tick(_Cfg, {"blog": "home", "git": "home"}, healthy)
    assert [s["name"] for s in started[0]["services"]] == ["blog"]
    assert started[0]["services"][0]["host"] == "blog.example.org" and started[0]["max_bytes"] == 1000
    children[0].done = True
    now[0] += 10
    assert not sched.tick(_Cfg, {"blog": "home"}, healthy)  # reaped; next one in 600 s
    now[0] += 600
    assert not sched.tick(_Cfg, {"blog": None}, healthy)  # on fallback: nothing fetched
    now[0] += 600
    assert not sched.tick(_Cfg, {"blog": "home"}, lambda n: False)  # failing: nothing fetched
    now[0] += 600
    assert sched.tick(_Cfg, {"blog": "home"}, healthy)
    now[0] += copies.COPIER_TIMEOUT + 1
    sched.tick(_Cfg, {"blog": "home"}, healthy)
    assert children[1].killed  # a hung copier is killed


# ------------------------------------------------------------------ answering from a copy


def test_request_target_and_head() -> None:
    assert request_target(b"GET /about.html HTTP/1.1\r\nHost: x\r\n\r\n") == ("GET", "/about.html")
    assert request_target(b"HEAD http://blog.example.org/a?b HTTP/1.1\r\n\r\n") == ("HEAD", "/a?b")
    assert request_target(b"garbage\r\n\r\n") == ("", None)

    class P:
        size, fetched, content_type = 11, 1000.0, "text/html\r\nSet-Cookie: x"

    head = copy_head(P, 5, now=1042.0).decode()
    assert head.startswith("HTTP/1.1 200 OK\r\n") and "Content-Length: 16\r\n" in head and "Age: 42\r\n" in head
    assert "\r\nSet-Cookie" not in head
    assert b"A copy from 00:16 UTC; the live site is back soon." in banner(1000.0, now=1042.0)


def _kept_server(tmp_path: Path, monkeypatch, *, banner_on: bool = True):
    run = str(tmp_path)
    directory = copies.service_dir(run, "blog")
    os.makedirs(directory)
    pages = {"/": ("text/html; charset=utf-8", b"<html><body><p>home's front page</p></body></html>" * 500),
             "/logo.txt": ("text/plain", b"plain")}
    entries = {}
    for path, (ctype, body) in pages.items():
        name = copies.body_name(path)
        Path(directory, name).write_bytes(body)
        entries[path] = {"file": name, "size": len(body), "type": ctype, "fetched": 1.0e9}
    copies.write_index(run, "blog", {"format": 1, "pages": entries, "last_fetch": 1.0e9, "result": "ok"})
    dest = ("203.0.113.10", 80)
    monkeypatch.setattr(pageloop, "original_destination", lambda sock: dest)
    server = page.FallbackServer(("127.0.0.1", 0), {dest: b"<p>friendly</p>"})
    server.set_kept({dest: copies.open_kept(run, "blog", ["/", "/logo.txt"])}, {dest: banner_on})
    server.start()
    return server, pages


def _get(server, method: str, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    conn.request(method, path)
    reply = conn.getresponse()
    return reply, reply.read()


def test_page_server_answers_kept_paths_from_the_copy(tmp_path: Path, monkeypatch) -> None:
    server, pages = _kept_server(tmp_path, monkeypatch)
    try:
        reply, body = _get(server, "GET", "/")
        assert reply.status == 200 and reply.getheader("Content-Type") == "text/html; charset=utf-8"
        assert int(reply.getheader("Age")) > 1000 and reply.getheader("X-Offline-Copy") == "1"
        assert body.startswith(pages["/"][1]) and b"the live site is back soon" in body[len(pages["/"][1]):]
        assert int(reply.getheader("Content-Length")) == len(body) > page.FILE_CHUNK  # streamed in chunks
        reply, body = _get(server, "GET", "/logo.txt")
        assert reply.status == 200 and body == b"plain"  # no banner outside HTML
        reply, body = _get(server, "HEAD", "/")
        assert reply.status == 200 and body == b"" and int(reply.getheader("Content-Length")) > len(pages["/"][1])
        for method, path in (("GET", "/other"), ("POST", "/"), ("GET", "/logo.txt?x")):
            reply, body = _get(server, method, path)
            assert reply.status == 503 and body == b"<p>friendly</p>"
    finally:
        server.shutdown()
        server.server_close()


def test_banner_can_be_turned_off(tmp_path: Path, monkeypatch) -> None:
    server, pages = _kept_server(tmp_path, monkeypatch, banner_on=False)
    try:
        reply, body = _get(server, "GET", "/")
        assert reply.status == 200 and body == pages["/"][1]
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ via = "proxy": nginx keeps them itself

PROXY = """\
[vps]
address = "203.0.113.10"
[tunnel]
subnet = "198.51.100.0/24"
[homes.home]
address = "198.51.100.2"
[services.blog]
listen = "80"
target = "8080"
hostname = "blog.example.org"
via = "proxy"
check = "http:/"
offline_copy = ["/", "/about.html", "/feed?page=1"]
[services.shop]
listen = "80"
target = "8081"
hostname = "shop.example.org"
via = "proxy"
"""
WEB_OUT = Path("/etc/vpnoffload/web")


def _golden(name: str, text: str) -> None:
    from tests.helpers import golden

    golden(name, text)


def test_nginx_render_with_kept_pages() -> None:
    from vpnoffload.render import webserver

    text = webserver.nginx_files(parse_text(PROXY), WEB_OUT)[WEB_OUT / "vpnoffload.conf"]
    _golden("nginx-http-offline.conf", text)
    assert "proxy_cache_path /etc/vpnoffload/web/cache " in text and "max_size=20m" in text
    assert text.count("location = ") == 2 and "location = /feed" not in text  # no query strings in locations
    assert "proxy_cache_use_stale error timeout" in text


def test_haproxy_render_documents_the_limitation() -> None:
    from vpnoffload.render import webserver

    text = webserver.haproxy_files(parse_text(PROXY), WEB_OUT)[WEB_OUT / "vpnoffload.cfg"]
    _golden("haproxy-offline.cfg", text)
    assert "offline_copy (/ /about.html): HAProxy's cache cannot" in text


@requires(None if Path("/usr/sbin/nginx").exists() else "nginx is not installed (apt-get install nginx-light)")
def test_real_nginx_accepts_the_kept_pages(tmp_path: Path) -> None:
    import subprocess

    from vpnoffload.render import webserver

    out = tmp_path / "web"
    webserver.render_nginx(parse_text(PROXY), out)
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n  include {out}/*.conf;\n}}\n")
    proc = subprocess.run(["/usr/sbin/nginx", "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                           "-c", str(conf)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


@requires(None if Path("/usr/sbin/haproxy").exists() else "haproxy is not installed (apt-get install haproxy)")
def test_real_haproxy_accepts_the_kept_pages(tmp_path: Path) -> None:
    import subprocess

    from vpnoffload.render import webserver

    webserver.render_haproxy(parse_text(PROXY), tmp_path)
    proc = subprocess.run(["/usr/sbin/haproxy", "-c", "-f", str(tmp_path / "vpnoffload.cfg")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0 and "WARNING" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# ------------------------------------------------------------------ status and metrics


def test_metrics_and_status_show_the_copies(tmp_path: Path) -> None:
    from vpnoffload import status
    from vpnoffload.watch import metrics

    run = str(tmp_path)
    os.makedirs(copies.service_dir(run, "blog"))
    copies.write_index(run, "blog", {"format": 1, "last_fetch": 1000.0, "result": "1/1 fetched",
                                     "pages": {"/": {"file": "x", "size": 7, "fetched": 900.0}}})
    assert copies.summary(run, "blog", now=1000.0) == {"kept": 1, "bytes": 7, "oldest_age": 100,
                                                      "last_fetch": 1000.0, "result": "1/1 fetched"}

    class Dog:
        class config:  # noqa: N801
            services = {"blog": _Svc("blog", ("/",)), "git": _Svc("git", ())}
            homes: dict = {}
            watch = _Cfg.watch
        status: dict = {}
        openvpn = None

        @staticmethod
        def homes_seen() -> dict:
            return {}

    text = metrics.exposition(Dog, run)  # type: ignore[arg-type]
    assert 'vpnoffload_offline_copy_pages{service="blog"} 1' in text
    assert 'vpnoffload_offline_copy_age_seconds{service="blog"} ' in text and 'service="git"' not in text
    assert "offline_copy" not in metrics.exposition(Dog)  # type: ignore[arg-type]
    data = {"tunnel": {"up": True, "server_running": True, "homes": []},
            "watchdog": {"running": True, "pid": 1, "updated": None},
            "services": [{"name": "blog", "listen": "203.0.113.10:80/tcp", "target": "home:8080", "state": "fallback",
                          "home": None, "fallback": "page", "healthy": False, "last_check": None, "latency_ms": None,
                          "last_change": None, "path": "dnat", "hostname": None,
                          "offline_copy": {"paths": 2, **copies.summary(run, "blog")}}]}
    line = [ln for ln in status.render_text(data) if ln.startswith("offline copy of blog")]
    assert line and "1/2 page(s) kept (7 bytes" in line[0] and "1/1 fetched" in line[0]
