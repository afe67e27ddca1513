"""Configuration for the web server the VPS already runs, for services with ``via = "proxy"``.

On a shared address, ports 80 and 443 belong to the VPS's own nginx or HAProxy,
and DNAT cannot tell ``blog.`` from ``www.``: the web server has to choose by
name. This module renders what it needs: HTTP routed by ``Host`` with the
friendly page (status 503) when home does not answer, and HTTPS routed by SNI
*without* terminating TLS (home keeps its own certificate). Everything not
named goes to the VPS's own sites.

The page comes at once, not after a connect timeout, because the watchdog
makes the VPS refuse a dead home to everyone but its own checks (see
``firewall._vps_output``); ``[proxy] connect_timeout`` only covers the second
or so before the watchdog notices.

Pure functions (``nginx_files``, ``haproxy_files``: path -> text, golden-tested)
plus one writer. Templates: ``templates/nginx-*.conf.j2`` and
``templates/haproxy.cfg.j2`` (autoescape off: these are not HTML; every value
that reaches them is checked by :func:`conf_word`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vpnoffload.errors import ConfigError
from vpnoffload.model import Config, Service
from vpnoffload.names import shown

if TYPE_CHECKING:
    import jinja2

#: Files vpnoffload owns in the output directory (nothing else there is touched).
NGINX_HTTP = "vpnoffload.conf"
NGINX_STREAM = "stream/vpnoffload.conf"
HAPROXY_CFG = "vpnoffload.cfg"
PAGES = "pages"

_WORD = re.compile(r"[A-Za-z0-9_./:@+,=\[\]-]+")


def conf_word(value: object, field: str | None = None) -> str:
    """``value`` as one bare word of an nginx/HAProxy config, or ConfigError naming ``field``.

    Both formats give ``$``, quotes, ``;``, ``#``, braces and spaces meaning, so
    anything outside a plain set of characters is refused rather than quoted.
    """
    text = str(value)
    if not _WORD.fullmatch(text):
        raise ConfigError(f"{shown(text)} cannot be written into a web server config (use plain characters)",
                          field=field)
    return text


@dataclass(frozen=True)
class Upstream:
    """One home box of a service, as the web server connects to it through the tunnel."""

    home: str
    address: str  # "198.51.100.2:8080"
    backup: bool


@dataclass(frozen=True)
class Site:
    """One proxy service, with everything the templates need."""

    name: str
    ident: str  # the service name, usable in nginx/HAProxy identifiers
    hostname: str
    nginx_listen: str  # "80", or "203.0.113.11:80" on a dedicated address
    haproxy_bind: str  # ":80", or "203.0.113.11:80"
    upstreams: tuple[Upstream, ...]
    page: bool  # the friendly page while home is down (else nginx's plain 502 / a closed connection)
    tls: bool  # port 443: passed through by SNI, never decrypted here
    #: offline_copy paths nginx keeps and serves stale while home is down (exact locations: no query strings).
    kept: tuple[str, ...] = ()


@dataclass(frozen=True)
class Listener:
    """One address:port that several services share (one nginx stream server / HAProxy frontend)."""

    index: int
    nginx_listen: str
    haproxy_bind: str
    sites: tuple[Site, ...]


def sites(config: Config) -> list[Site]:
    """The proxy services of ``config``, in config order."""
    found = [_site(config, svc) for svc in config.services.values() if svc.via == "proxy"]
    seen: dict[str, str] = {}
    for site in found:
        if site.ident in seen:  # "blog-tls" and "blog_tls" would name one nginx upstream
            raise ConfigError(f"services {seen[site.ident]!r} and {site.name!r} differ only in '-' and '_'; "
                              "rename one", field=f"services.{site.name}")
        seen[site.ident] = site.name
    return found


def _site(config: Config, svc: Service) -> Site:
    if svc.hostname is None:  # config validation guarantees one; guard the invariant anyway
        raise ConfigError("via = 'proxy' needs a hostname", field=f"services.{svc.name}.hostname")
    shared = svc.listen_address == config.vps.address
    # On a 1:1-NAT cloud a dedicated address arrives as its private one ([vps] nat): listen there.
    arrives = config.vps.local_of(svc.listen_address)
    own = f"[{arrives}]" if arrives.version == 6 else str(arrives)
    upstreams = tuple(
        Upstream(conf_word(h, f"homes.{h}"), conf_word(f"{config.homes[h].address}:{svc.target_port}", f"homes.{h}"), i > 0)
        for i, h in enumerate(svc.homes)
    )
    return Site(
        name=svc.name,
        ident=conf_word(svc.name.replace("-", "_"), f"services.{svc.name}"),
        hostname=conf_word(svc.hostname, f"services.{svc.name}.hostname"),
        # The VPS's own sites usually say `listen 80;`; nginx picks server blocks by
        # address first, so ours must say the same to be compared by name with theirs.
        nginx_listen=str(svc.listen_port) if shared else conf_word(f"{own}:{svc.listen_port}", f"services.{svc.name}.listen"),
        haproxy_bind=f":{svc.listen_port}" if shared else conf_word(f"{own}:{svc.listen_port}", f"services.{svc.name}.listen"),
        upstreams=upstreams,
        page=svc.serves_page and not svc.sni_routed,
        tls=svc.sni_routed,
        kept=tuple(conf_word(p, f"services.{svc.name}.offline_copy") for p in svc.offline_copy
                   if "?" not in p and not svc.sni_routed),
    )


def _listeners(found: list[Site], port: int) -> list[Listener]:
    groups: dict[str, list[Site]] = {}
    for site in found:
        if site.haproxy_bind.endswith(f":{port}"):
            groups.setdefault(site.haproxy_bind, []).append(site)
    return [Listener(i, g[0].nginx_listen, bind, tuple(g)) for i, (bind, g) in enumerate(groups.items())]


def _environment() -> jinja2.Environment:
    from vpnoffload.render import jinja

    return jinja.environment()  # conf_word keeps values to plain words


def _render(template: str, config: Config, out: Path, **values: object) -> str:
    found = sites(config)
    return _environment().get_template(template).render(
        out=conf_word(out, "--out"),
        pages=conf_word(out / PAGES, "--out"),
        http=_listeners(found, 80),
        tls=_listeners(found, 443),
        proxy=config.proxy,
        local_https=conf_word(config.proxy.local_https, "proxy.local_https"),
        local_http=conf_word(config.proxy.local_http, "proxy.local_http"),
        retry_after=config.watch.retry_after,
        kept_any=any(site.kept for site in found),
        cache=conf_word(out / "cache", "--out"),
        cache_max=max(1, config.watch.offline_copy_max_bytes // (1024 * 1024)),
        cache_valid=int(config.watch.offline_copy_every),
        **values,
    )


# ----- pure renderers -----------------------------------------------------------


def _page_files(config: Config, out: Path, *, raw_http: bool) -> dict[Path, str]:
    """``pages/<service>.html`` (and ``.http``, a whole HTTP response, for HAProxy's errorfile)."""
    from vpnoffload.render.pages import render_page

    files: dict[Path, str] = {}
    for site in sites(config):
        if not site.page:  # nothing to show over passed-through TLS either
            continue
        html = render_page(config, config.services[site.name])
        files[out / PAGES / f"{site.name}.html"] = html
        if raw_http:
            files[out / PAGES / f"{site.name}.http"] = _http_response(html, config.watch.retry_after)
    return files


def _http_response(html: str, retry_after: int) -> str:
    head = ("HTTP/1.1 503 Service Unavailable", "Content-Type: text/html; charset=utf-8",
            f"Retry-After: {retry_after}", "Cache-Control: no-store", "Connection: close")
    return "\r\n".join(head) + "\r\n\r\n" + html


def nginx_files(config: Config, out: Path) -> dict[Path, str]:
    """What ``render nginx`` writes into ``out`` (an absolute path): path -> text.

    ``vpnoffload.conf`` goes inside ``http { }``; ``stream/vpnoffload.conf``
    (only when a service listens on 443) at the top level of nginx.conf.
    """
    out = _absolute(out)
    files = {out / NGINX_HTTP: _render("nginx-http.conf.j2", config, out)}
    if _listeners(sites(config), 443):
        files[out / NGINX_STREAM] = _render("nginx-stream.conf.j2", config, out)
    files.update(_page_files(config, out, raw_http=False))
    return files


def haproxy_files(config: Config, out: Path) -> dict[Path, str]:
    """What ``render haproxy`` writes into ``out``: ``vpnoffload.cfg`` and the pages."""
    out = _absolute(out)
    files = {out / HAPROXY_CFG: _render("haproxy.cfg.j2", config, out)}
    files.update(_page_files(config, out, raw_http=True))
    return files


def _absolute(out: Path) -> Path:
    # The includes name the pages by absolute path: the web server's working
    # directory is not ours.
    return Path(out).absolute()


# ----- the writer -----------------------------------------------------------------


def write_files(files: dict[Path, str], out: Path, owned: tuple[str, ...]) -> list[Path]:
    """Write ``files`` (0644) into ``out`` through :func:`vpnoffload.render.outdir.write_tree`:
    an existing ``out`` keeps its mode, a symlinked ``stream/`` or ``pages/`` is refused, and of
    the files matching the ``owned`` globs only those vpnoffload wrote are deleted when no longer
    wanted (a stream include, pages of removed services)."""
    from vpnoffload.render.outdir import write_tree

    out = _absolute(out)
    subdirs = {Path(p).parts[0]: 0o755 for p in (NGINX_STREAM, f"{PAGES}/x")}
    wanted = {path: (text, 0o644) for path, text in files.items()}
    return write_tree(out, wanted, dir_mode=0o755, subdirs=subdirs, owned_globs=owned)


def render_nginx(config: Config, out: Path) -> list[Path]:
    return write_files(nginx_files(config, out), out, (NGINX_STREAM, f"{PAGES}/*.html"))


def render_haproxy(config: Config, out: Path) -> list[Path]:
    return write_files(haproxy_files(config, out), out, (f"{PAGES}/*.html", f"{PAGES}/*.http"))
