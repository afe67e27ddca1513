"""Stopping a process vpnoffload started (OpenVPN without systemd, the watchdog).

The page server and the watchdog's other children are started by
:mod:`vpnoffload.lean.spawn`; this is the one SIGTERM-then-wait used to stop them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path



def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def terminate(pid: int, timeout: float = 10.0, *, kill: bool = True) -> None:
    """SIGTERM ``pid`` and wait up to ``timeout`` s for it to go; then SIGKILL it if ``kill``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    if kill and alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
