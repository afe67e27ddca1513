"""Where vpnoffload keeps its files. Every path derives from two roots.

The config file is given by ``-c`` (or ``VPNOFFLOAD_CONFIG``); generated state
lives in ``state/`` beside it unless ``--state-dir`` says otherwise. Nothing
else on disk is written, so tests run entirely in a temp directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vpnoffload import runfiles

DEFAULT_CONFIG = Path("/etc/vpnoffload/vpnoffload.toml")
CONFIG_ENV = "VPNOFFLOAD_CONFIG"
STATE_ENV = "VPNOFFLOAD_STATE_DIR"


@dataclass(frozen=True)
class Paths:
    config: Path
    state: Path

    @classmethod
    def resolve(cls, config: "str | os.PathLike[str] | None" = None,
                state: "str | os.PathLike[str] | None" = None) -> "Paths":
        """From ``-c``/``--state-dir`` as given (a path or a string; None or "": the environment, then the default)."""
        cfg = Path(config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG).absolute()
        st = state or os.environ.get(STATE_ENV) or cfg.parent / "state"
        return cls(config=cfg, state=Path(st).absolute())

    def check(self) -> None:
        """``-c`` names a regular file or nothing, ``--state-dir`` a directory or nothing;
        ConfigError naming the option otherwise (a FIFO, a device, a symlink loop, a name
        too long), before a command reads, locks or creates anything there."""
        _kind_of(self.state, "--state-dir", stat.S_ISDIR, "not a directory")
        file_or_nothing(self.config, "--config")

    @property
    def pki(self) -> Path:
        """CA, certificates, keys, CRL. Directory 0700; private keys 0600."""
        return self.state / "pki"

    @property
    def server_dir(self) -> Path:
        """The rendered OpenVPN server config that ``up vps`` runs."""
        return self.state / runfiles.SERVER_DIR

    @property
    def server_conf(self) -> Path:
        return self.server_dir / runfiles.SERVER_CONF

    @property
    def run(self) -> Path:
        """Pidfiles, logs, what ``up`` changed (so ``down`` can undo it), locks."""
        return self.state / "run"

    @property
    def server_status(self) -> Path:
        """OpenVPN's status file on the VPS: which homes are connected."""
        return self.run / runfiles.OPENVPN_SERVER_STATUS

    @property
    def server_management(self) -> Path:
        """OpenVPN's management socket on the VPS: the live client list (root only)."""
        return self.run / runfiles.OPENVPN_SERVER_MANAGEMENT

    @property
    def watch_state(self) -> Path:
        """The watchdog's published view (states, last checks), read by ``status``."""
        return self.run / runfiles.WATCH_STATE

    @property
    def pages(self) -> Path:
        """Friendly pages rendered ahead of an outage, one per web service."""
        return self.run / runfiles.PAGES

    @property
    def lock(self) -> Path:
        return self.run / runfiles.LOCK

    def record(self, end: str) -> Path:
        """What ``up END`` changed (``down END`` undoes exactly that)."""
        return self.run / runfiles.record(end)

    def profile(self, home: str) -> Path:
        """Where ``up home`` looks for the client profile when ``--profile`` is not given."""
        return self.state / f"{home}.ovpn"


def file_or_nothing(path: Path, field: str) -> None:
    """ConfigError naming ``field`` unless ``path`` is a regular file or missing."""
    _kind_of(path, field, stat.S_ISREG, "not a regular file")


def _kind_of(path: Path, field: str, right: "Callable[[int], bool]", wrong: str) -> None:
    """``path`` is missing (fine: nothing there yet, or any more) or of the right kind."""
    from vpnoffload.errors import ConfigError
    from vpnoffload.names import shown

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{shown(str(path))}: {exc.strerror or exc}", field=field) from None
    if not right(mode):
        raise ConfigError(f"{shown(str(path))}: {wrong}", field=field)
