"""The wheel ships every package of the tree.

``[tool.setuptools] packages`` is an explicit list (templates/ ships as
``vpnoffload.templates``), so a new subpackage that is not added there would
work from a checkout and be missing from every installed copy (the compose lab,
the systemd containers and users' pip installs).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for init in (ROOT / "vpnoffload").rglob("__init__.py") if "__pycache__" not in init.parts}
    assert found, "no package found under vpnoffload/"
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
