"""The systemd unit that runs ``vpnoffload watch`` (rendered from a template)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vpnoffload.errors import BackendError, PrerequisiteError
from vpnoffload.paths import Paths

UNIT = "vpnoffload-watch.service"
UNIT_DIR = Path("/etc/systemd/system")


def unit_text(paths: Paths, python: str = sys.executable) -> str:
    import jinja2

    from vpnoffload.render import _load_template

    env = jinja2.Environment(loader=jinja2.FunctionLoader(_load_template), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("vpnoffload-watch.service.j2").render(
        python=python, config=paths.config, state=paths.state, openvpn_unit="openvpn-server@vpnoffload.service")


def install(paths: Paths, out: Path | None = None) -> Path:
    from vpnoffload.config import write_atomic

    path = (out or UNIT_DIR) / UNIT
    write_atomic(path, unit_text(paths), mode=0o644)
    return path


def require_systemd() -> None:
    from vpnoffload.tunnel import systemd_manages_this_netns

    if not systemd_manages_this_netns():
        raise PrerequisiteError("systemd is not running here: run 'vpnoffload watch' in the foreground "
                                "(or write the unit elsewhere with --out)")


def enable() -> None:
    require_systemd()
    for args in (["daemon-reload"], ["enable", "--now", UNIT]):
        proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise BackendError(f"systemctl {' '.join(args)} failed: {proc.stderr.strip()}")
