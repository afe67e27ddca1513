"""Render each web service's friendly page to a file, ahead of any outage.

``up vps`` renders them into the run directory (it has jinja2 loaded anyway);
the page server that sends them never imports jinja2 (~10 MB) and only reads
the finished HTML. ``python -m vpnoffload.render.pages`` renders them by hand.
HTML autoescape is on here, unlike the OpenVPN templates: a hostname ends up
inside HTML. A custom ``page`` template is the user's file rendered as root, so
it gets jinja2's SandboxedEnvironment (no attribute walks to ``__globals__``,
no ``os``): a template can format the values it is given, nothing more. It is
read as one file (no symlink) and may not include, import or extend another, so
it cannot copy a root-readable file (``state/pki/ca.key``) into the public page.
"""

from __future__ import annotations

import sys
from typing import Any
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

    return jinja.page_environment(custom=service.page is not None)


#: Statements that would read another template file: a custom page may use none of them.
_PULLS_IN = ("Extends", "Include", "Import", "FromImport")


def _custom_template(env: Any, service: Service) -> Any:  # jinja2 Environment -> Template
    """The user's page as one template, read from the file itself (no symlink, no FIFO,
    at most 1 MiB): it is rendered as root, so it must not name other files."""
    from jinja2 import nodes

    from vpnoffload.fsio import read_regular

    field = f"services.{service.name}.page"
    assert service.page is not None
    try:
        source = read_regular(service.page, field, follow=False)
    except FileNotFoundError:
        raise ConfigError(f"{shown(str(service.page))} does not exist", field=field) from None
    tree = env.parse(source)
    pulled = [node for node in tree.find_all(tuple(getattr(nodes, n) for n in _PULLS_IN))]
    if pulled:
        word = type(pulled[0]).__name__.lower().replace("fromimport", "from ... import")
        raise ConfigError(f"a page template may not use {{% {word} %}}: it is one self-contained file",
                          field=field)
    return env.from_string(tree)


def render_page(config: Config, service: Service) -> str:
    import jinja2

    try:
        env = _environment(service)
        template = (_custom_template(env, service) if service.page is not None
                    else env.get_template(DEFAULT_TEMPLATE))
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
