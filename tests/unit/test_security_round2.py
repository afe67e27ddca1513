"""Issue 23: each finding of the second security review, as a test that failed on main before its fix.

The real-process parts live beside the features they guard: the nginx cache in
``tests/integration/test_nginx_cache.py``, OpenVPN's log in ``tests/integration/test_tunnel.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vpnoffload.errors import ConfigError

CONFIG = """[vps]
address = "203.0.113.10"

[tunnel]
subnet = "198.51.100.0/24"

[homes.home]
address = "198.51.100.2"
"""


# ------------------------------------------------------------------ medium 3: custom page templates


def _page_config(page: Path):
    from vpnoffload import config as cfg

    return cfg.parse_text(CONFIG + f'[services.blog]\nlisten = "80"\ntarget = "80"\npage = "{page}"\n')


@pytest.mark.parametrize("statement", [
    '{% include "secret.key" %}',
    '{% import "secret.key" as s %}',
    '{% from "secret.key" import x %}',
    '{% extends "secret.key" %}',
    '{% include ["nothing", "secret.key"] %}',
])
def test_a_page_template_cannot_pull_in_another_file(tmp_path: Path, statement: str) -> None:
    from vpnoffload.render.pages import render_page

    (tmp_path / "secret.key").write_text("-----BEGIN PRIVATE KEY----- top secret")
    page = tmp_path / "page.html"
    page.write_text(f"<p>down</p>{statement}")
    config = _page_config(page)
    with pytest.raises(ConfigError, match="services.blog.page") as caught:
        render_page(config, config.services["blog"])
    assert "top secret" not in str(caught.value)


def test_a_page_template_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    from vpnoffload.render.pages import render_page

    (tmp_path / "secret.key").write_text("top secret")
    page = tmp_path / "page.html"
    page.symlink_to(tmp_path / "secret.key")
    config = _page_config(page)
    with pytest.raises(ConfigError, match="services.blog.page"):
        render_page(config, config.services["blog"])


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_a_page_template_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    from vpnoffload.render.pages import render_page

    page = tmp_path / "page.html"
    page.mkdir() if kind == "dir" else os.mkfifo(page)
    config = _page_config(page)
    with pytest.raises(ConfigError, match="services.blog.page"):
        render_page(config, config.services["blog"])


def test_a_plain_page_template_still_renders(tmp_path: Path) -> None:
    from vpnoffload.render.pages import render_page

    page = tmp_path / "page.html"
    page.write_text("<h1>{{ hostname }} is resting</h1>{% if retry_after %}<p>{{ retry_after }}</p>{% endif %}")
    config = _page_config(page)
    assert render_page(config, config.services["blog"]) == "<h1>203.0.113.10 is resting</h1><p>30</p>"
