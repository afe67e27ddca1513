"""Render each web service's friendly page to a file, ahead of any outage.

``up vps`` renders them into the run directory (it has jinja2 loaded anyway);
the page server that sends them never imports jinja2 (~10 MB) and only reads
the finished HTML. ``python -m vpnoffload.render.pages`` renders them by hand.
HTML autoescape is on here, unlike the OpenVPN templates: a hostname ends up
inside HTML. A custom ``page`` template is the user's file rendered as root, so
it gets jinja2's SandboxedEnvironment (no attribute walks to ``__globals__``,
no ``os``): a template can format the values it is given, nothing more.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vpnoffload.errors import ConfigError
from vpnoffload.model import Config, Service
from vpnoffload.names import shown

if TYPE_CHECKING:
    import jinja2

DEFAULT_TEMPLATE = "fallback.html.j2"


def _environment(service: Service) -> jinja2.Environment:
    from vpnoffload.render import jinja

    return jinja.page_environment(service.page.parent if service.page is not None else None)


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
    except (jinja2.TemplateError, RecursionError, OverflowError, MemoryError) as exc:
        where = str(service.page) if service.page else DEFAULT_TEMPLATE
        raise ConfigError(f"cannot render {shown(where)}: {shown(str(exc) or type(exc).__name__)}",
                          field=f"services.{service.name}.page") from None


def page_path(out: Path, service: str) -> Path:
    return out / f"{service}.html"


def render_pages(config: Config, out: Path) -> list[Path]:
    """Write ``<service>.html`` for every service that serves a page; remove the stale ones it wrote."""
    from vpnoffload.render.outdir import write_tree

    out = Path(out).absolute()
    files = {page_path(out, svc.name): (render_page(config, svc), 0o644)
             for svc in config.services.values() if svc.serves_page}
    return write_tree(out, files, dir_mode=0o755, subdirs={})


def main(argv: list[str] | None = None) -> int:
    """``python -m vpnoffload.render.pages --config C --out DIR``."""
    from vpnoffload import config as cfg
    from vpnoffload.exits import run_main
    from vpnoffload.lean import options

    def body() -> int:
        given = options.parse(argv, values=("--config", "--out"), required=("--config", "--out"))
        render_pages(cfg.load(Path(str(given["--config"]))), Path(str(given["--out"])))
        return 0

    return run_main(body, prog="vpnoffload pages")


if __name__ == "__main__":
    sys.exit(main())
