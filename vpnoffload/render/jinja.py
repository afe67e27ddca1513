"""The Jinja environments vpnoffload renders with, and where the shipped templates come from.

Two kinds, deliberately different:

* :func:`environment` for config files (OpenVPN, nginx, HAProxy, systemd units):
  ``autoescape=False`` on purpose (they are not HTML; each renderer's quoting
  filter keeps values to one word), ``StrictUndefined`` so a missing value is
  an error, not an empty string.
* :func:`page_environment` for the friendly HTML page: autoescape on, and
  sandboxed, because a custom ``page`` template is the user's file rendered as
  root (no attribute walks to ``__globals__``, no ``os``).

jinja2 (~10 MB) is imported only when an environment is made.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2


def templates_dir() -> Traversable:
    """The shipped templates, read through importlib.resources (an editable install, a wheel or a zip alike)."""
    try:
        return importlib.resources.files("vpnoffload.templates")
    except ModuleNotFoundError:
        # A plain source checkout that was never pip-installed: templates/
        # sits beside the package instead of inside it.
        return Path(__file__).resolve().parents[2] / "templates"


def load_template(name: str) -> str | None:
    try:
        return templates_dir().joinpath(name).read_text()
    except FileNotFoundError:
        return None  # jinja2 turns this into TemplateNotFound


def environment(*, trim: bool = True, **filters: Callable[..., Any]) -> jinja2.Environment:
    """A config-file environment over the shipped templates, with the renderer's quoting ``filters``.

    ``trim``: drop the newline after a block tag and the indentation before it
    (the systemd units are written without it)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load_template),
        autoescape=False,  # config files, not HTML: quoting is the filters' job
        undefined=jinja2.StrictUndefined,
        trim_blocks=trim,
        lstrip_blocks=trim,
        keep_trailing_newline=True,
    )
    env.filters.update(filters)
    return env


def page_environment(custom: bool = False) -> jinja2.Environment:
    """The friendly page's sandboxed HTML environment: for the shipped template, or (``custom``)
    for the user's own, which gets a loader that finds nothing: it is read as one file and may
    not include, import or extend another (see render/pages.py)."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    loader: jinja2.BaseLoader
    if custom:
        loader = jinja2.DictLoader({})
    else:
        loader = jinja2.FunctionLoader(load_template)
    return SandboxedEnvironment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
