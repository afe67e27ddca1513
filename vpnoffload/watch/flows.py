"""Visitors' own flows as evidence: are a service's forwarded connections being answered?

When the visitor-path check of a service gets no answer, the check alone cannot tell a
VPS rule that drops that service's traffic from a tunnel so loaded that one SYN was lost
(the benchmark's 1000 connections). The visitors' connections can: the VPS gives every
DNATed connection of a service its connmark, so conntrack holds that service's flows and
nobody else's. Replies arriving from the home on them mean the path works and the home is
only busy; connections of that service left unanswered mean it is broken.

One reading lists the service's established connections to one home (``conntrack -L -p tcp
--state ESTABLISHED --mark VALUE/MASK --reply-src HOME``, filtered by the kernel and the
tool, not by this process) with their reply packet counts (``nf_conntrack_acct``, which
``up vps`` turns on; without it an answered connection counts 1). Two readings one round
apart tell whether replies flowed in between: a connection that is new and answered, or
an old one whose reply count grew. A block stops both; connections answered before it
keep their counts, so they prove nothing. Nothing here looks at other services' flows,
at ping or at the tunnel's total traffic.

The tool runs in a short-lived child (``lean/spawn``), bounded by :data:`READ_TIMEOUT`,
and only for a service whose visitor-path check was just lost. Lean like the watchdog:
stdlib ``os`` and ``time`` only.
"""

from __future__ import annotations

import os
import time

from vpnoffload.lean import spawn
from vpnoffload.lean.say import Log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    #: read(mark, mask, home_address) -> {connection: reply packets}, None: no evidence (no tool, no answer)
    Reader = Callable[[int, int, str], "dict[int, int] | None"]

log = Log("vpnoffload.watch")
#: The conntrack child is killed after this long: then there is no evidence this round.
READ_TIMEOUT = 1.0
#: An earlier reading older than this (seconds) is not compared with: take a new baseline.
MAX_GAP = 10.0
#: At most this many connections are kept from one reading (memory stays bounded).
MAX_ENTRIES = 20000


def parse(text: str) -> dict[int, int]:
    """Answered connections in ``conntrack -L`` (or /proc/net/nf_conntrack) lines -> their
    reply packet count (1 when the kernel does not count packets). Keyed by a hash of the
    original tuple: the same connection in two readings has the same key."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        if "[UNREPLIED]" in line or "src=" not in line:
            continue
        fields = line.split()
        originals: list[str] = []
        packets: list[int] = []
        seen_src = 0
        for field in fields:
            if field.startswith("src="):
                seen_src += 1
            if seen_src == 1 and field.startswith(("src=", "dst=", "sport=", "dport=")):
                originals.append(field)
            elif field.startswith("packets="):
                try:
                    packets.append(int(field[8:]))
                except ValueError:
                    pass
        if seen_src < 2:
            continue
        out[hash(" ".join(originals))] = packets[1] if len(packets) >= 2 else 1
        if len(out) >= MAX_ENTRIES:
            break
    return out


def conntrack_binary() -> str | None:
    for where in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        candidate = os.path.join(where, "conntrack")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def read_conntrack(mark: int, mask: int, home: str) -> dict[int, int] | None:
    """The service's answered connections to ``home`` now; None when they cannot be read."""
    binary = conntrack_binary()
    if binary is None:
        return None
    # Only ESTABLISHED ones: at most the connections open now (a new-connection load leaves
    # tens of thousands in TIME_WAIT, which would only cost memory here).
    argv = [binary, "-L", "-f", "ipv6" if ":" in home else "ipv4", "-p", "tcp", "--state", "ESTABLISHED",
            "--mark", f"{mark:#x}/{mask:#x}", "--reply-src", home]
    try:
        child = spawn.spawn(argv, stdout=True, stderr=True)
    except OSError:
        return None
    try:
        out, _ = child.communicate(b"", READ_TIMEOUT)
    except TimeoutError:
        child.kill()
        return None
    if child.returncode != 0:
        return None
    return parse(out.decode("latin-1"))


class FlowEvidence:
    """Per (service mark, home): the last reading, to compare the next one with."""

    def __init__(self, read: "Reader" = read_conntrack, clock: "Callable[[], float]" = time.monotonic) -> None:
        self.read, self.clock = read, clock
        self._last: dict[tuple[int, str], tuple[float, dict[int, int]]] = {}
        self._said_missing = False

    def replies_flowing(self, mark: int, mask: int, home: str) -> bool | None:
        """Did the home answer this service's visitors since the last reading? None: no
        earlier reading to compare with (this one becomes it), or no reading at all."""
        now = self.read(mark, mask, home)
        key = (mark, home)
        if now is None:
            if not self._said_missing:
                self._said_missing = True
                log.warning("cannot read conntrack (is the 'conntrack' tool installed?): a lost visitor-path "
                            "check is then never taken for load")
            self._last.pop(key, None)
            return None
        taken = self.clock()
        before = self._last.get(key)
        self._last[key] = (taken, now)
        if before is None or taken - before[0] > MAX_GAP:
            return None
        old = before[1]
        return any(count > old.get(conn, 0) for conn, count in now.items())

    def forget(self, mark: int, home: str) -> None:
        """The check passed again: the next doubt starts from a new reading."""
        self._last.pop((mark, home), None)

    def clear(self) -> None:
        self._last.clear()
