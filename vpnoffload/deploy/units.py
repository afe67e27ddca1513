"""The systemd units: ``vpnoffload-vps``/``vpnoffload-home`` bring an end up at
boot (and down when stopped); ``vpnoffload-watch`` runs the watchdog."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vpnoffload.errors import BackendError, PrerequisiteError
from vpnoffload.paths import Paths

UNIT = "vpnoffload-watch.service"
UNIT_DIR = Path("/etc/systemd/system")


def _template(name: str, **values: object) -> str:
    import jinja2

    from vpnoffload.render.openvpn import _load_template

    env = jinja2.Environment(loader=jinja2.FunctionLoader(_load_template), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(name).render(**values)


def unit_text(paths: Paths, python: str = sys.executable) -> str:
    """The watchdog's unit."""
    return _template("vpnoffload-watch.service.j2", python=python, config=paths.config, state=paths.state,
                     openvpn_unit="openvpn-server@vpnoffload.service")


def up_unit_text(paths: Paths, end: str, home: str | None = None, python: str = sys.executable) -> str:
    """The unit that runs `up END` at boot and `down END` when stopped."""
    extra = f" --home {home}" if home else ""
    openvpn_unit = "openvpn-server@vpnoffload.service" if end == "vps" else f"openvpn-client@vpnoffload-{home}.service"
    return _template("vpnoffload-up.service.j2", python=python, config=paths.config, state=paths.state,
                     end=end, extra=extra, openvpn_unit=openvpn_unit)


def units(paths: Paths, end: str, home: str | None = None) -> dict[str, str]:
    """File name -> text of the units for one end: the VPS also gets the watchdog."""
    found = {f"vpnoffload-{end}.service": up_unit_text(paths, end, home)}
    if end == "vps":
        found[UNIT] = unit_text(paths)
    return found


def install(paths: Paths, end: str = "vps", home: str | None = None, out: Path | None = None) -> list[Path]:
    from vpnoffload.config import write_atomic

    written = []
    for name, text in units(paths, end, home).items():
        path = (out or UNIT_DIR) / name
        write_atomic(path, text, mode=0o644)
        written.append(path)
    return written


def require_systemd() -> None:
    from vpnoffload.tunnel import systemd_manages_this_netns

    if not systemd_manages_this_netns():
        raise PrerequisiteError("systemd is not running here: run 'vpnoffload watch' in the foreground "
                                "(or write the unit elsewhere with --out)")


def enable(names: list[str]) -> None:
    require_systemd()
    for args in (["daemon-reload"], ["enable", "--now", *names]):
        proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise BackendError(f"systemctl {' '.join(args)} failed: {proc.stderr.strip()}")
