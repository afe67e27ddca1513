"""The watchdog's look at the host's own firewall: put back openings a host reload wiped.

Lean like the rest of the watchdog (stdlib ``os`` and :mod:`.spawn` only): every
:data:`EVERY` seconds one ``nft -s list ruleset`` (stateless: no counters, so
the text changes only when rules do). Only when that text changed since the
last look does a short-lived child (``python -I -m
vpnoffload.firewall.host.plan``) compare the ruleset with the record of ``up
vps`` and re-add what is missing, printing one line per opening put back.
When ``up`` recorded no opening, the child says so (exit 3) and nothing runs
again until the record file changes; when it could not look (the run lock
held, firewalld mid-restart: exit 4), the next round runs it again.
"""

from __future__ import annotations

import os

from vpnoffload import runfiles
from vpnoffload.errors import VpnOffloadError
from vpnoffload.lean import spawn

#: Every look is one ``nft -s list ruleset`` child (a few ms); a reload is undone within about this
#: plus one reconcile child (~1 s).
EVERY = 2.0
CHILD_TIMEOUT = 20.0
NOTHING_RECORDED = 3
TRY_AGAIN = 4  # vpnoffload.firewall.host.plan.TRY_AGAIN (not imported: the watchdog stays lean)


def _which(name: str) -> str | None:
    for d in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(os.pathsep) + ["/usr/sbin", "/sbin"]:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return None


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


class HostFirewallWatch:
    """Call :meth:`tick` from the loop; it returns what was put back (lines for the log)."""

    def __init__(self, run_dir: str, clock_start: float, end: str = "vps") -> None:
        """``end``: whose record to keep in place ("vps"; "home-NAME" for the home keeper)."""
        self.run_dir, self.end = run_dir, end
        self.record = os.path.join(run_dir, runfiles.record(end))
        self.nft = _which("nft")
        self.last_look = clock_start - EVERY  # look at once
        self.seen: int | None = None  # hash of the ruleset text when all was in place
        self.idle_mtime: int | None = None  # the record's mtime when it held no opening

    def tick(self, now: float) -> list[str]:
        if self.nft is None or now - self.last_look < EVERY:
            return []
        self.last_look = now
        if self.idle_mtime is not None and _mtime(self.record) == self.idle_mtime:
            return []
        self.idle_mtime = None
        try:
            child = spawn.spawn([self.nft, "-s", "list", "ruleset"], stdout=True)
            out, _ = child.communicate(b"", CHILD_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            return [f"cannot read the host's ruleset: {exc}"]
        text = hash(out)
        if text == self.seen:
            return []
        self.seen = text
        return self._reconcile()

    def _reconcile(self) -> list[str]:
        argv = spawn.full_argv("vpnoffload.firewall.host.plan", "--run", self.run_dir, "--end", self.end)
        try:
            child = spawn.spawn(argv, stdout=True, stderr=True)
            out = spawn.finish(child, b"", CHILD_TIMEOUT, "the host firewall check",
                               ok=(0, NOTHING_RECORDED, TRY_AGAIN))
        except (OSError, VpnOffloadError) as exc:
            self.seen = None  # try again next time
            return [f"host firewall check failed: {exc}"]
        if child.returncode == NOTHING_RECORDED:
            self.idle_mtime = _mtime(self.record)
            return []
        lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
        if lines or child.returncode == TRY_AGAIN:
            self.seen = None  # our own re-adds changed the ruleset: take the next look as the new baseline
        return lines
