"""Forgetting connections: delete conntrack entries by their mark (pyroute2, netfilter).

After a swap, a service's old flows must not keep going to a dead target; the
entries of each such service are deleted by the service's connmark. pyroute2
is imported only when there is something to delete (~23 MB RSS).
"""

from __future__ import annotations

import errno

from vpnoffload.errors import BackendError


def flush_marked(marks: list[tuple[int, int]]) -> None:
    """Delete every conntrack entry carrying one of ``marks`` (value, mask)."""
    if not marks:
        return
    from pyroute2 import Conntrack
    from pyroute2.netlink.exceptions import NetlinkError

    ct = Conntrack()
    try:
        for value, mask in marks:
            try:
                ct.flush(mark=value, mark_mask=mask)
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:  # no entry had that mark: nothing to forget
                    raise BackendError(f"cannot delete conntrack entries with mark {value:#x}: {exc}") from None
    finally:
        ct.close()


def preload() -> None:
    """Import pyroute2's conntrack now, so a later flush does not wait for it."""
    from pyroute2 import Conntrack  # noqa: F401
