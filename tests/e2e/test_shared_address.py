"""Issue 7 (2) end to end: one shared VPS address whose :80/:443 belong to a real
nginx. ``www.example.org`` is the VPS's own site; ``blog.example.org`` (via proxy)
is served from home through the tunnel, by Host on :80 and by SNI on :443 with
TLS passed through untouched (home holds blog's certificate). While home is
down, nginx answers blog at once with the friendly page, because the watchdog
makes the VPS refuse the dead home; www never notices. Measured times are printed.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.budget import budget
from tests.e2e.conftest import cli, cli_argv, configure, crowd
from tests.helpers import self_signed
from tests.prereq import missing
from tests.helpers import wait_until
from vpnoffload.lab.netns import Lab

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

# A site: plain HTTP and TLS (its own certificate) on two ports, saying who served
# it and whom the VPS says it forwards for. Home runs blog's; under HAProxy the
# VPS's own www site runs on loopback too.
SITE_SERVER = r"""
import http.server, ssl, sys, threading
cert, key, bind, http_port, https_port, who = sys.argv[1:7]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        tls = isinstance(self.connection, ssl.SSLSocket)
        body = (f"{who}{' over tls' if tls else ''}; "
                f"forwarded for {self.headers.get('X-Forwarded-For', '-')}\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
plain = http.server.ThreadingHTTPServer((bind, int(http_port)), H)
secure = http.server.ThreadingHTTPServer((bind, int(https_port)), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
threading.Thread(target=plain.serve_forever, daemon=True).start()
secure.serve_forever()
"""

# The VPS's nginx as a user has it: its own www site on :80 and (moved for SNI
# routing) on 127.0.0.1:8443, plus vpnoffload's two includes.
NGINX_CONF = """\
load_module {module};
daemon off;
pid {run}/nginx.pid;
error_log {run}/error.log notice;
events {{ worker_connections 256; }}
include {out}/stream/*.conf;
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    server {{
        listen 80 default_server;
        server_name www.example.org;
        location / {{ return 200 "www served by the VPS\\n"; }}
    }}
    server {{
        listen 127.0.0.1:8443 ssl;
        server_name www.example.org;
        ssl_certificate {run}/www.crt;
        ssl_certificate_key {run}/www.key;
        location / {{ return 200 "www served by the VPS over tls\\n"; }}
    }}
    include {out}/*.conf;
}}
"""

# Runs in the visitor's namespace: one GET per argument ("http:HOST" or "https:SNI"),
# each on a new connection (TLS not verified: the lab's certificates are self-signed).
# Prints [status or 0, body or error, seconds, lower-cased headers] for each.
VISIT = r"""
import http.client, json, socket, ssl, sys, time
vps = sys.argv[1]
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
out = []
for spec in sys.argv[2:]:
    scheme, name = spec.split(":")
    start = time.monotonic()
    try:
        c = http.client.HTTPConnection(vps, 80 if scheme == "http" else 443, timeout=5)
        if scheme == "https":  # connect ourselves, to set the SNI to the name, not the address
            c.sock = ctx.wrap_socket(socket.create_connection((vps, 443), timeout=5), server_hostname=name)
        c.request("GET", "/", headers={"Host": name})
        r = c.getresponse()
        body = r.read().decode("utf-8", "replace")
        out.append([r.status, body, time.monotonic() - start, {k.lower(): v for k, v in r.getheaders()}])
    except Exception as e:
        out.append([0, f"{type(e).__name__}: {e}", time.monotonic() - start, {}])
print(json.dumps(out))
"""


def visit(lab: Lab, *specs: str) -> list[list]:
    proc = lab.exec("visitor", sys.executable, "-c", VISIT, lab.vps_address, *specs, timeout=60)
    return json.loads(proc.stdout)


def wait_for(lab: Lab, spec: str, want: str, limit: float = 20) -> list:
    return wait_until(f"{spec}: {want!r} in the reply",
                      lambda: (want in f"{(r := visit(lab, spec)[0])[0]} {r[1]}", r), limit, 0.2)



def start_nginx(lab: Lab, vps_site: Path, out: Path) -> Path:
    """The VPS's nginx with its own www site and vpnoffload's includes; returns its run dir."""
    run = vps_site / "web-run"
    run.mkdir(mode=0o755)
    self_signed("www.example.org", run / "www.crt", run / "www.key")
    conf = run / "nginx.conf"
    conf.write_text(NGINX_CONF.format(module=STREAM_MODULE, run=run, out=out))
    test = lab.exec("vps", NGINX, "-t", "-p", str(run), "-e", str(run / "error.log"), "-c", str(conf), check=False)
    assert test.returncode == 0, test.stderr
    lab.popen("vps", NGINX, "-p", str(run), "-e", str(run / "error.log"), "-c", str(conf),
              stderr=(run / "stderr.log").open("w"))
    return run


def start_haproxy(lab: Lab, vps_site: Path, out: Path) -> Path:
    """The VPS's HAProxy with vpnoffload's frontends; its own www site moved to loopback."""
    run = vps_site / "web-run"
    run.mkdir(mode=0o755)
    self_signed("www.example.org", run / "www.crt", run / "www.key")
    lab.popen("vps", sys.executable, "-c", SITE_SERVER, str(run / "www.crt"), str(run / "www.key"),
              "127.0.0.1", "8080", "8443", "www served by the VPS")
    assert lab.wait_tcp("vps", "127.0.0.1", 8443)
    cfg = out / "vpnoffload.cfg"
    test = lab.exec("vps", HAPROXY, "-c", "-f", str(cfg), check=False)
    assert test.returncode == 0, test.stdout + test.stderr
    lab.popen("vps", HAPROXY, "-db", "-f", str(cfg), stdout=(run / "stdout.log").open("w"),
              stderr=(run / "stderr.log").open("w"))
    return run


@pytest.mark.parametrize("server", ["nginx", "haproxy"])
def test_names_on_a_shared_address_go_home_or_stay(server: str, lab: Lab, sites: tuple[Path, Path], capsys) -> None:
    if server == "nginx" and not (Path(NGINX).exists() and STREAM_MODULE.exists()):
        missing("nginx with its stream module is not installed (apt-get install nginx-light libnginx-mod-stream)")
    if server == "haproxy" and not Path(HAPROXY).exists():
        missing("haproxy is not installed (apt-get install haproxy)")
    vps_site, home_site = sites
    configure(
        lab, vps_site, home_site,
        ["blog", "--listen", "80", "--target", "8080", "--hostname", "blog.example.org", "--via", "proxy",
         "--check", "http:/"],
        ["blog-tls", "--listen", "443", "--target", "8443", "--hostname", "blog.example.org", "--via", "proxy"],
    )
    with (vps_site / "vpnoffload.toml").open("a") as toml:
        toml.write(f'\n[proxy]\nserver = "{server}"\n')
    self_signed("blog.example.org", home_site / "blog.crt", home_site / "blog.key")
    lab.popen("home", sys.executable, "-c", SITE_SERVER, str(home_site / "blog.crt"), str(home_site / "blog.key"),
              "0.0.0.0", "8080", "8443", "served from home")
    assert lab.wait_tcp("home", "127.0.0.1", 8443)

    out = vps_site / server
    rendered = cli(lab, "vps", vps_site, "render", server, "--out", str(out)).stdout
    assert "wrote" in rendered and (out / "pages" / "blog.html").is_file()
    run = (start_nginx if server == "nginx" else start_haproxy)(lab, vps_site, out)
    assert lab.wait_tcp("vps", lab.vps_address, 80) and lab.wait_tcp("vps", lab.vps_address, 443)
    cli(lab, "vps", vps_site, "up", "vps")
    cli(lab, "home", home_site, "up", "home")
    lab.popen("vps", *cli_argv("-c", str(vps_site / "vpnoffload.toml"), "watch"))

    # Same address and port, chosen by name: blog from home, www from the VPS.
    blog = wait_for(lab, "http:blog.example.org", "served from home")
    assert f"forwarded for {lab.visitor_address}" in blog[1]  # home learns the real visitor from the header
    # HAProxy started before the tunnel, so it marked both home servers down; each
    # comes back on its own next check: wait for the TLS one too.
    blog_tls = wait_for(lab, "https:blog.example.org", "served from home over tls")
    assert blog_tls[0] == 200  # TLS ended at home, not on the VPS
    www, www_tls = visit(lab, "http:www.example.org", "https:www.example.org")
    assert www[0] == 200 and www[1].startswith("www served by the VPS")
    assert www_tls[0] == 200 and www_tls[1].startswith("www served by the VPS over tls")
    status = json.loads(cli(lab, "vps", vps_site, "status", "--json", check=False).stdout)
    assert {s["name"]: s["path"] for s in status["services"]} == {"blog": f"proxy via {server}",
                                                                  "blog-tls": f"proxy via {server}"}

    # Home's cable pulled: the page for blog quickly, and every later visitor gets it at once.
    pulled = time.time()
    lab.pull_cable("home")
    # Until the swap the VPS's web server still proxies to the vanished home and answers
    # 502/504 itself (with dnat a visitor gets no reply instead): the outage before detection.
    took = crowd(lab, r"^503 .*Back in a moment", since=pulled, before=r"^(0 |50[234] )")
    www, blog_tls = visit(lab, "http:www.example.org", "https:blog.example.org")
    page = visit(lab, "http:blog.example.org")[0]
    with capsys.disabled():
        print(f"\n[shared address, {server}] cable pulled -> blog's page after {took:.2f} s (a page request "
              f"then takes {page[2] * 1000:.0f} ms; blog over TLS refused in {blog_tls[2] * 1000:.0f} ms)")
    assert took <= budget().failover
    assert page[0] == 503 and page[2] < budget().page_reply  # fail fast: not the web server's connect timeout
    assert page[3].get("retry-after") == "30" and page[3].get("cache-control") == "no-store"
    assert www[0] == 200 and www[1].startswith("www served by the VPS")
    assert blog_tls[0] == 0 and blog_tls[2] < budget().closed_at_once  # closed at once, not left hanging

    # Plugged back: blog returns over both schemes.
    plugged = time.time()
    lab.plug_cable("home")
    took = crowd(lab, "^200 served from home", since=plugged, limit=30)
    with capsys.disabled():
        print(f"[shared address, {server}] cable back -> blog served from home again after {took:.2f} s")
    assert "served from home over tls" in wait_for(lab, "https:blog.example.org", "served from home")[1]
    logs = "".join(f.read_text() for f in run.glob("*.log")).splitlines()
    # A backend with no server left is HAProxy's normal "home is down" alert.
    errors = [line for line in logs if ("[emerg]" in line or "[ALERT]" in line) and "has no server available" not in line]
    assert not errors, "\n".join(errors)
