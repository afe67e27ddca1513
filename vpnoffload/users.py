"""The dedicated unprivileged system user OpenVPN drops to after start.

OpenVPN's man page advises against ``nobody`` when other daemons use it, so
vpnoffload creates its own user when missing, and ``down`` removes it only if
``up`` created it.
"""

from __future__ import annotations

import pwd

from vpnoffload import proc

RUN_AS = "vpnoffload"


def exists(name: str = RUN_AS) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _run(argv: list[str]) -> None:
    proc.run(argv, hint="apt-get install passwd")


def create(name: str = RUN_AS) -> None:
    _run(["useradd", "--system", "--user-group", "--no-create-home",
          "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name])


def delete(name: str = RUN_AS) -> None:
    if exists(name):
        _run(["userdel", name])
