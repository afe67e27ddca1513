"""The one error type of vpnoffload, and the exit status each kind maps to.

Every module raises :class:`VpnOffloadError` (or a subclass); only ``cli`` turns
it into a one-line message and an exit code. Library errors (python-iptables,
pyroute2, OSError) are translated at the backend boundary, never passed up raw.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Process exit codes. ``status`` uses UNHEALTHY for "up but degraded"."""

    OK = 0
    UNHEALTHY = 1
    BAD_INPUT = 2  # bad config, bad argument, or not set up: nothing was changed
    FAILED = 3  # a change to the system failed (and was rolled back)
    MISSING_PREREQUISITE = 4  # not root, no openvpn, no /dev/net/tun, ...
    INTERRUPTED = 130


class VpnOffloadError(Exception):
    """Root of every error vpnoffload raises on purpose.

    ``message`` is one line meant for a human; ``field`` names the config field
    or option at fault when there is one.
    """

    exit_status: ExitStatus = ExitStatus.FAILED

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.message = message
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ConfigError(VpnOffloadError):
    """The config file or an argument is wrong. Nothing was changed."""

    exit_status = ExitStatus.BAD_INPUT


class NotSetUpError(VpnOffloadError):
    """The command needs state (config, PKI, a running tunnel) that is not there."""

    exit_status = ExitStatus.BAD_INPUT


class PrerequisiteError(VpnOffloadError):
    """The machine lacks something vpnoffload needs (root, openvpn, /dev/net/tun)."""

    exit_status = ExitStatus.MISSING_PREREQUISITE


class ApplyError(VpnOffloadError):
    """Changing the system failed; what this run had changed was rolled back."""

    exit_status = ExitStatus.FAILED


class BackendError(VpnOffloadError):
    """A kernel or process operation failed (raised by backends, wrapped by plan)."""

    exit_status = ExitStatus.FAILED
