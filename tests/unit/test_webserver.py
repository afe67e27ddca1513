"""Shared address, routed by name: config validation of ``via``, the nginx and HAProxy
renders (golden files, then the real ``nginx -t`` / ``haproxy -c`` when installed),
the fail-fast OUTPUT rules, the health checks' mark, doctor and the CLI.

Rewrite the golden files after an intended template change with
``UPDATE_GOLDEN=1 python -m pytest tests/unit/test_webserver.py`` and review the diff.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import golden
from tests.prereq import requires, tool_problem
from vpnoffload import firewall as fw
from vpnoffload.cli.app import app
from vpnoffload.config import parse_text
from vpnoffload.deploy import doctor
from vpnoffload.errors import ConfigError
from vpnoffload.model import HEALTH_MARK
from vpnoffload.render import webserver
from vpnoffload.watch.health import connect

OUT = Path("/etc/vpnoffload/web")

BASE = """
[vps]
address = "203.0.113.10"
[tunnel]
subnet = "198.51.100.0/24"
[homes.home]
address = "198.51.100.2"
[homes.attic]
address = "198.51.100.3"
"""

SERVICES = """
[services.blog]
listen = "80"
target = "8080"
hostname = "blog.example.org"
via = "proxy"
check = "http:/"
[services.shop]
listen = "80"
target = "8081"
hostname = "shop.example.org"
via = "proxy"
homes = ["home", "attic"]
[services.blog-tls]
listen = "443"
target = "8443"
hostname = "blog.example.org"
via = "proxy"
homes = ["home", "attic"]
[services.wiki]
listen = "203.0.113.11:80"
target = "attic:80"
hostname = "wiki.example.org"
via = "proxy"
[services.git]
listen = "22"
target = "22"
"""


def config(services: str = SERVICES, extra: str = ""):
    return parse_text(BASE + extra + services)


# ------------------------------------------------------------------ config


def test_via_defaults_to_dnat_and_proxy_keys_have_defaults() -> None:
    cfg = config()
    assert cfg.services["git"].via == "dnat" and cfg.services["blog"].via == "proxy"
    assert cfg.services["blog-tls"].sni_routed and not cfg.services["blog"].sni_routed
    assert (cfg.proxy.server, cfg.proxy.local_https, cfg.proxy.connect_timeout) == ("nginx", "127.0.0.1:8443", 3)


def test_proxy_services_share_a_listen_port_by_name() -> None:
    cfg = config()
    shared = [s.name for s in cfg.services.values() if s.listen == "203.0.113.10:80"]
    assert shared == ["blog", "shop"]


PROXY_A = '[services.a]\nlisten = "80"\ntarget = "1"\nvia = "proxy"\nhostname = "a.example.org"\n'
PROXY_B = '[services.b]\nlisten = "80"\ntarget = "2"\nvia = "proxy"\nhostname = "b.example.org"\n'
DNAT_A = '[services.a]\nlisten = "80"\ntarget = "1"\n'


@pytest.mark.parametrize("services,field,words", [
    ('[services.a]\nlisten = "80"\ntarget = "1"\nvia = "proxy"\n', "services.a.hostname", "needs a hostname"),
    ('[services.a]\nlisten = "8080"\ntarget = "1"\nvia = "proxy"\nhostname = "a.example.org"\n',
     "services.a.listen", "port 80"),
    ('[services.a]\nlisten = "80"\ntarget = "1"\nvia = "proxy"\nhostname = "a.example.org"\nproto = "udp"\n',
     "services.a", "proto"),
    ('[services.a]\nlisten = "80"\ntarget = "1"\nvia = "nat"\n', "services.a.via", "'dnat'"),
    (PROXY_A + PROXY_B.replace("b.example.org", "a.example.org"), "services.b.hostname", "already routed"),
    (DNAT_A + PROXY_B, "services.b.listen", "already used by service 'a'"),
    (PROXY_B + DNAT_A, "services.a.listen", "already used by service 'b'"),
])
def test_bad_via_is_refused_with_the_field(services: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(services)
    assert err.value.field.startswith(field) and words in str(err.value)


@pytest.mark.parametrize("extra,field", [
    ('[proxy]\nserver = "apache"\n', "proxy.server"),
    ('[proxy]\nlocal_https = "localhost:8443"\n', "proxy.local_https"),
    ('[proxy]\nlocal_http = "127.0.0.1:99999"\n', "proxy.local_http"),
    ('[proxy]\nconnect_timeout = 0\n', "proxy.connect_timeout"),
    ('[proxy]\ncolour = "blue"\n', "proxy.colour"),
])
def test_bad_proxy_section(extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(extra=extra)
    assert err.value.field == field


# ------------------------------------------------------------------ renders


def test_nginx_render_is_exactly_this() -> None:
    files = webserver.nginx_files(config(), OUT)
    assert sorted(str(p.relative_to(OUT)) for p in files) == [
        "pages/blog.html", "pages/shop.html", "pages/wiki.html", "stream/vpnoffload.conf", "vpnoffload.conf"]
    golden("nginx-http.conf", files[OUT / "vpnoffload.conf"])
    golden("nginx-stream.conf", files[OUT / "stream/vpnoffload.conf"])
    assert "blog.example.org" in files[OUT / "pages/blog.html"]


def test_haproxy_render_is_exactly_this() -> None:
    files = webserver.haproxy_files(config(), OUT)
    golden("haproxy.cfg", files[OUT / "vpnoffload.cfg"])
    response = files[OUT / "pages/blog.http"]
    assert response.startswith("HTTP/1.1 503 Service Unavailable\r\n")
    assert "\r\nRetry-After: 30\r\n" in response and "\r\nCache-Control: no-store\r\n" in response


def test_no_stream_include_without_a_service_on_443() -> None:
    services = SERVICES.split("[services.blog-tls]")[0]
    files = webserver.nginx_files(config(services), OUT)
    assert OUT / "stream/vpnoffload.conf" not in files
    assert "stream" not in webserver.haproxy_files(config(services), OUT)[OUT / "vpnoffload.cfg"].split("#")[-1]


def test_reset_fallback_gets_no_page() -> None:
    services = SERVICES.replace('check = "http:/"', 'check = "http:/"\nfallback = "reset"')
    text = webserver.nginx_files(config(services), OUT)[OUT / "vpnoffload.conf"]
    assert "@vpnoffload_page_blog" not in text and "@vpnoffload_page_shop" in text


@pytest.mark.parametrize("bad", ["/etc/my web", "/etc/$x", "/etc/a;b", "/etc/{x}"])
def test_unsafe_words_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="cannot be written into a web server config"):
        webserver.nginx_files(config(), Path(bad))


def test_write_removes_only_its_own_stale_files(tmp_path: Path) -> None:
    webserver.render_nginx(config(), tmp_path)
    (tmp_path / "pages" / "mine.txt").write_text("keep me")
    (tmp_path / "other.conf").write_text("keep me too")
    services = SERVICES.split("[services.blog-tls]")[0]  # blog-tls and wiki gone
    written = webserver.render_nginx(config(services), tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == [".vpnoffload-files", "other.conf", "pages/blog.html", "pages/mine.txt", "pages/shop.html",
                    "vpnoffload.conf"]
    assert set(written) == {tmp_path / "vpnoffload.conf", tmp_path / "pages/blog.html", tmp_path / "pages/shop.html"}
    assert oct((tmp_path / "vpnoffload.conf").stat().st_mode & 0o777) == "0o644"


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


@requires(None if Path(NGINX).exists() else "nginx is not installed (apt-get install nginx-light)")
def test_real_nginx_accepts_the_render(tmp_path: Path) -> None:
    out = tmp_path / "web"
    webserver.render_nginx(config(), out)
    stream = f"load_module {STREAM_MODULE};\ninclude {out}/stream/*.conf;\n" if STREAM_MODULE.exists() else ""
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"{stream}pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n  server {{ listen 80 default_server; server_name www.example.org; }}\n"
                    f"  include {out}/*.conf;\n}}\n")
    if not stream:
        (out / "stream" / "vpnoffload.conf").unlink()
    proc = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


@requires(tool_problem("haproxy", "apt-get install haproxy"))
def test_real_haproxy_accepts_the_render(tmp_path: Path) -> None:
    webserver.render_haproxy(config(), tmp_path)
    proc = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "vpnoffload.cfg")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# ------------------------------------------------------------------ fail fast


def out_rules(ruleset: fw.Ruleset) -> list[str]:
    return [r.text for r in ruleset.rules_of("filter", fw.OUTPUT_CHAIN)]


REFUSE = "-m mark ! --mark 0x10000000/0x10000000 -j REJECT --reject-with tcp-reset"


def test_proxy_services_are_not_dnated_and_refuse_nothing_while_forwarding() -> None:
    rules = fw.vps_ruleset(config())
    text = "\n".join(rules.lines())
    assert "--to-destination 198.51.100.2:22" in text  # the dnat service is
    assert not any(x in text for x in ("198.51.100.2:8080", "198.51.100.2:8443", "198.51.100.3:80"))
    assert out_rules(rules) == ["-j RETURN"]
    assert fw.Rule("filter", "OUTPUT", ("-j", fw.OUTPUT_CHAIN)) in rules.rules


def test_dead_homes_of_proxy_services_are_refused_to_all_but_the_checks() -> None:
    rules = fw.vps_ruleset(config(), active={"blog": None, "shop": "attic", "blog-tls": "home", "git": None})
    assert out_rules(rules) == [
        f"-d 198.51.100.2/32 -p tcp -m tcp --dport 8080 {REFUSE}",  # blog: on fallback
        f"-d 198.51.100.2/32 -p tcp -m tcp --dport 8081 {REFUSE}",  # shop: home is before attic, so dead
        "-j RETURN",
    ]
    both = fw.vps_ruleset(config(), fallback=frozenset({"shop"}))
    assert out_rules(both)[:2] == [f"-d 198.51.100.2/32 -p tcp -m tcp --dport 8081 {REFUSE}",
                                   f"-d 198.51.100.3/32 -p tcp -m tcp --dport 8081 {REFUSE}"]


def test_no_output_chain_without_proxy_services() -> None:
    rules = fw.vps_ruleset(config('[services.git]\nlisten = "22"\ntarget = "22"\n'))
    assert ("filter", fw.OUTPUT_CHAIN) not in rules.chains


def test_health_checks_carry_the_mark() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with server, connect("127.0.0.1", server.getsockname()[1], 1.0) as sock:
        mark = sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)
    assert mark == (HEALTH_MARK if os.geteuid() == 0 else 0)  # without CAP_NET_ADMIN the check still runs


# ------------------------------------------------------------------ doctor, status, CLI


def proc_net(tmp_path: Path, *ports: int) -> Path:
    head = "  sl  local_address rem_address   st\n"
    lines = [f"   {i}: 00000000:{p:04X} 00000000:0000 0A 0 0\n" for i, p in enumerate(ports)]
    (tmp_path / "tcp").write_text(head + "".join(lines))
    (tmp_path / "udp").write_text(head)
    return tmp_path


def test_doctor_suggests_proxy_when_a_dnat_service_takes_the_web_servers_port(tmp_path: Path) -> None:
    cfg = config('[services.blog]\nlisten = "80"\ntarget = "8080"\n')
    findings = doctor.check_web_paths(cfg, proc_net(tmp_path, 80, 443))
    warn = [f for f in findings if f.level == "warn"]
    assert len(warn) == 1 and "--via proxy --hostname" in warn[0].hint and "dedicated address" in warn[0].hint
    assert doctor.check_port_conflicts(cfg, tmp_path) == []  # said once, not twice


def test_doctor_explains_the_paths(tmp_path: Path) -> None:
    cfg = config()
    ok = doctor.check_web_paths(cfg, proc_net(tmp_path, 80))
    assert [f.level for f in ok] == ["ok"] and "--via proxy" in ok[0].detail
    (tmp_path / "none").mkdir()
    missing = doctor.check_web_paths(cfg, proc_net(tmp_path / "none"))
    assert missing[-1].level == "warn" and "blog" in missing[-1].detail and "render nginx" in missing[-1].hint
    assert doctor.check_port_conflicts(cfg, proc_net(tmp_path, 80, 443)) == []  # the web server is meant to be there


def test_status_shows_the_path() -> None:
    from vpnoffload.status import _service, render_text

    cfg = config()
    rows = {name: _service(cfg, name, None, None).as_dict() for name in ("blog", "git")}
    assert rows["blog"]["path"] == "proxy via nginx" and rows["git"]["path"] == "dnat"
    data = {"tunnel": {"up": True, "server_running": True, "homes": []},
            "watchdog": {"running": False, "pid": None}, "services": list(rows.values())}
    text = "\n".join(render_text(data))
    assert "proxy via nginx (blog.example.org)" in text and " dnat " in text


def test_cli_service_add_via_proxy_and_render(tmp_path: Path) -> None:
    cfgfile = tmp_path / "vpnoffload.toml"
    cfgfile.write_text(BASE)

    def run(*args: str):
        return CliRunner().invoke(app, ["-c", str(cfgfile), *args])

    bad = run("service", "add", "blog", "--listen", "80", "--target", "8080", "--via", "proxy")
    assert bad.exit_code != 0 and "needs a hostname" in bad.output and "blog" not in cfgfile.read_text()
    added = run("service", "add", "blog", "--listen", "80", "--target", "8080", "--via", "proxy",
                "--hostname", "blog.example.org")
    assert added.exit_code == 0, added.output
    assert 'via = "proxy"' in cfgfile.read_text() and "render nginx" in added.output
    out = tmp_path / "nginx"
    rendered = run("render", "nginx", "--out", str(out))
    assert rendered.exit_code == 0, rendered.output
    assert f"include {out}/*.conf;" in rendered.output and (out / "pages/blog.html").is_file()
    haproxy = run("render", "haproxy", "--out", str(tmp_path / "haproxy"))
    assert haproxy.exit_code == 0 and (tmp_path / "haproxy/vpnoffload.cfg").is_file()


def test_a_dedicated_ipv6_address_is_bracketed() -> None:
    base = BASE.replace('subnet = "198.51.100.0/24"', 'subnet = "198.51.100.0/24"\nsubnet6 = "fd00:88::/64"')
    cfg = parse_text(base + '[services.v6]\nlisten = "[2001:db8::80]:80"\ntarget = "80"\n'
                            'hostname = "v6.example.org"\nvia = "proxy"\n')
    assert "    listen [2001:db8::80]:80;\n" in webserver.nginx_files(cfg, OUT)[OUT / "vpnoffload.conf"]
    assert "    bind [2001:db8::80]:80\n" in webserver.haproxy_files(cfg, OUT)[OUT / "vpnoffload.cfg"]
