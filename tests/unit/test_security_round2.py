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


# ------------------------------------------------------------------ medium 4: render --out and its manifest

PROXY = CONFIG + """[services.blog]
listen = "80"
target = "8080"
hostname = "blog.example.org"
via = "proxy"
"""
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files of another user")
NOBODY = 65534


def _plant(path: Path, text: str, uid: int = NOBODY) -> Path:
    path.write_text(text)
    os.chown(path, uid, uid)
    return path


@needs_root
def test_render_out_deletes_nothing_a_planted_manifest_names(tmp_path: Path) -> None:
    """A sticky shared directory: another user plants the manifest and names their own
    and root's files in it; root's render deletes none of them."""
    import json

    from vpnoffload import config as cfg
    from vpnoffload.render import webserver

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    theirs = _plant(shared / "their.conf", "# vpnoffload: not really\n")
    (shared / "pages").mkdir()
    page = _plant(shared / "pages" / "their.html", "<p>theirs</p>")
    roots = shared / "root.conf"
    roots.write_text("root's own, not written by render\n")
    _plant(shared / ".vpnoffload-files", json.dumps(["their.conf", "root.conf", "pages/their.html"]))
    webserver.render_nginx(cfg.parse_text(PROXY), shared)
    assert theirs.exists() and page.exists() and roots.exists()
    assert (shared / "vpnoffload.conf").exists()


@needs_root
def test_render_out_deletes_only_its_own_regular_files(tmp_path: Path) -> None:
    """Root's own manifest lists a file that another user has since put in its place, and
    a hard link to a file elsewhere: neither is deleted; root's stale page is."""
    import json

    from vpnoffload import config as cfg
    from vpnoffload.render import webserver

    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o1777)
    config = cfg.parse_text(PROXY)
    webserver.render_nginx(config, out)
    stale = out / "pages" / "old.html"
    stale.write_text("<p>a service removed since</p>")
    swapped = _plant(out / "pages" / "gone.html", "<p>someone else's now</p>")
    elsewhere = tmp_path / "elsewhere.html"
    elsewhere.write_text("keep me")
    os.link(elsewhere, out / "pages" / "linked.html")
    listed = json.loads((out / ".vpnoffload-files").read_text())
    (out / ".vpnoffload-files").write_text(json.dumps(listed + ["pages/old.html", "pages/gone.html",
                                                                "pages/linked.html"]))
    webserver.render_nginx(config, out)
    assert not stale.exists()
    assert swapped.exists() and elsewhere.read_text() == "keep me" and (out / "pages" / "linked.html").exists()
