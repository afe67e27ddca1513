"""Render each web service's friendly page to a file, ahead of any outage.

``up vps`` renders them into the run directory (it has jinja2 loaded anyway);
the page server that sends them never imports jinja2 (~10 MB) and only reads
the finished HTML. ``python -m vpnoffload.render.pages`` renders them by hand. HTML autoescape is on here, unlike the OpenVPN templates:
a hostname ends up inside HTML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vpnoffload.errors import ConfigError, VpnOffloadError
from vpnoffload.model import Config, Service

DEFAULT_TEMPLATE = "fallback.html.j2"


def _environment(service: Service):  # -> jinja2.Environment
    import jinja2

    from vpnoffload.render.openvpn import _load_template

    if service.page is not None:
        loader: jinja2.BaseLoader = jinja2.FileSystemLoader(str(service.page.parent))
    else:
        loader = jinja2.FunctionLoader(_load_template)
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)


def render_page(config: Config, service: Service) -> str:
    import jinja2

    name = service.page.name if service.page is not None else DEFAULT_TEMPLATE
    try:
        template = _environment(service).get_template(name)
        return template.render(
            hostname=service.hostname or str(service.listen_address),
            service=service.name,
            retry_after=config.watch.retry_after,
        )
    except jinja2.TemplateError as exc:
        where = str(service.page) if service.page else DEFAULT_TEMPLATE
        raise ConfigError(f"cannot render {where}: {exc}", field=f"services.{service.name}.page") from None


def page_path(out: Path, service: str) -> Path:
    return out / f"{service}.html"


def render_pages(config: Config, out: Path) -> list[Path]:
    """Write ``<service>.html`` for every service that serves a page; remove stale ones."""
    from vpnoffload.config import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for svc in config.services.values():
        if svc.serves_page:
            path = page_path(out, svc.name)
            write_atomic(path, render_page(config, svc), mode=0o644)
            written.append(path)
    for stale in set(out.glob("*.html")) - set(written):
        stale.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpnoffload.render.pages")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from vpnoffload import config as cfg

    try:
        render_pages(cfg.load(args.config), args.out)
    except VpnOffloadError as exc:
        print(f"vpnoffload pages: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
