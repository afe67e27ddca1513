"""The systemd units: ``vpnoffload-vps``/``vpnoffload-home`` bring an end up at
boot (and down when stopped); ``vpnoffload-watch`` runs the watchdog, and
``vpnoffload-home-keeper`` keeps the home box's own firewall open for the tunnel.

Every value a unit gets is quoted by systemd's own rules (systemd.syntax,
systemd.service "Command lines"): one double-quoted word with ``\\`` and ``"``
escaped, ``%`` doubled (specifiers expand even inside quotes) and, on Exec
lines, ``$`` doubled (variables expand there); control characters are refused.
The units run Python isolated (``-I``) from ``/``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from vpnoffload import proc, runfiles
from vpnoffload.errors import ConfigError, PrerequisiteError
from vpnoffload.names import shown
from vpnoffload.hometunnels import Slot
from vpnoffload.paths import Paths


_PLAIN = re.compile(r"[A-Za-z0-9_./:+@=,-]+")


def systemd_word(value: object, *, exec_line: bool = True) -> str:
    """``value`` as one quoted word of a unit file (an Exec argument, or a path list entry)."""
    text = str(value)
    if not text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError(f"{shown(text)} cannot be written into a systemd unit (empty or control characters)")
    if _PLAIN.fullmatch(text):
        return text  # nothing systemd would split, expand or unescape
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if exec_line:
        text = text.replace("$", "$$")
    return f'"{text}"'

UNIT = "vpnoffload-watch.service"
UNIT_DIR = Path("/etc/systemd/system")


def _template(name: str, **values: object) -> str:
    from vpnoffload.render import jinja

    env = jinja.environment(trim=False, arg=systemd_word, path=lambda value: systemd_word(value, exec_line=False))
    return env.get_template(name).render(**values)


def unit_text(paths: Paths, python: str = sys.executable) -> str:
    """The watchdog's unit."""
    return _template("vpnoffload-watch.service.j2", python=python, config=paths.config, state=paths.state,
                     openvpn_unit=f"{runfiles.SERVER_UNIT}.service")


def up_unit_text(paths: Paths, end: str, home: str | None = None, python: str = sys.executable) -> str:
    """The unit that runs `up END` at boot and `down END` when stopped."""
    extra = f" --home {systemd_word(home)}" if home else ""
    client = _home_slot(paths).tunnel_name(home or "home").removeprefix("home-")
    openvpn_unit = f"{runfiles.SERVER_UNIT}.service" if end == "vps" else f"openvpn-client@vpnoffload-{client}.service"
    return _template("vpnoffload-up.service.j2", python=python, config=paths.config, state=paths.state,
                     end=end, extra=extra, openvpn_unit=openvpn_unit)


def keeper_unit_text(paths: Paths, home: str, up_unit: str, python: str = sys.executable) -> str:
    """The home keeper's unit: the host-firewall watch of ``home``'s tunnel, and the end's unit
    restarted when its OpenVPN client is gone; never ``up home`` itself."""
    from vpnoffload.homekeeper import watch_only_argv

    slot = _home_slot(paths)
    openvpn_unit = f"openvpn-client@vpnoffload-{slot.tunnel_name(home).removeprefix('home-')}.service"
    # The client has no Restart=: the keeper asks systemd to restart the end (homekeeper.UnitRestarter).
    argv = watch_only_argv(python, str(paths.run / runfiles.home_keeper_pid(home)), f"home-{home}",
                           restart=(slot.device, openvpn_unit, up_unit))
    return _template("vpnoffload-home-keeper.service.j2", argv=argv, state=paths.state, home=home,
                     up_unit=up_unit, openvpn_unit=openvpn_unit)


def units(paths: Paths, end: str, home: str | None = None) -> dict[str, str]:
    """File name -> text of the units for one end: the VPS also gets the watchdog, a home box its keeper."""
    # A home box's further VPS configs (vpnoffload.hometunnels) get units of their own:
    # one keeper per tunnel too (see the keeper's template for why).
    index = _home_slot(paths).index if end == "home" else 0
    suffix = f"-t{index}" if index else ""
    up_unit = f"vpnoffload-{end}{suffix}.service"
    found = {up_unit: up_unit_text(paths, end, home)}
    if end == "vps":
        found[UNIT] = unit_text(paths)
    else:
        found[f"vpnoffload-home-keeper{suffix}.service"] = keeper_unit_text(paths, home or "home", up_unit)
    return found


def _home_slot(paths: Paths) -> Slot:
    """This config's tunnel on a home box (slot 0 when the config does not load: that is
    reported by the command that needs it)."""
    from vpnoffload import config as cfg
    from vpnoffload import hometunnels
    from vpnoffload.errors import VpnOffloadError

    try:
        return hometunnels.slot_of(paths.config, cfg.load(paths.config))
    except VpnOffloadError:
        return Slot()


def install(paths: Paths, end: str = "vps", home: str | None = None, out: Path | None = None) -> list[Path]:
    from vpnoffload.fsio import make_dir, write_atomic

    written = []
    directory = make_dir(out or UNIT_DIR, 0o755)
    for name, text in units(paths, end, home).items():
        path = directory / name
        write_atomic(path, text, 0o644)
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
        proc.run(["systemctl", *args], timeout=60)
