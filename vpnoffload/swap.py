"""Apply a watchdog decision: rewrite the owned rules, then forget the affected flows.

Runs as a short-lived child of the watchdog (``python -m vpnoffload.swap``),
so python-iptables (~20 MB) and pyroute2 (~23 MB) are loaded only for the
fraction of a second a swap takes and never stay in the watchdog's memory.

Conntrack entries of every changed service are deleted by the service's
connection mark in one netlink call, in both directions: after a swap to the
page no visitor keeps retransmitting into a dead tunnel, and after a swap back
nobody keeps being sent to the page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vpnoffload.errors import BackendError, VpnOffloadError
from vpnoffload.model import Config


def apply_swap(config: Config, fallback: frozenset[str], changed: frozenset[str], firewall_backend=None) -> None:
    from vpnoffload import firewall, plan

    backend = firewall_backend or firewall.default_backend()
    plan.apply(firewall.plan(backend, firewall.vps_ruleset(config, fallback)))
    flush_conntrack([firewall.service_mark(config, name) for name in sorted(changed)])


def flush_conntrack(marks: list[tuple[int, int]]) -> None:
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
                if exc.code != 2:  # ENOENT: no entry had that mark; nothing to forget
                    raise BackendError(f"cannot delete conntrack entries with mark {value:#x}: {exc}") from None
    finally:
        ct.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpnoffload.swap", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--fallback", default="", help="comma-separated services that go to fallback")
    parser.add_argument("--changed", default="", help="comma-separated services whose flows to forget")
    parser.add_argument("--stdin", action="store_true",
                        help="load everything, then read 'FALLBACK CHANGED' (comma lists, '-' for none) from stdin; "
                             "EOF means no swap after all")
    args = parser.parse_args(argv)
    from vpnoffload import config as cfg

    def names(text: str) -> frozenset[str]:
        return frozenset(n for n in text.split(",") if n and n != "-")

    try:
        config = cfg.load(args.config)
        fallback, changed = names(args.fallback), names(args.changed)
        if args.stdin:
            # Warm start: the watchdog forks us at the first failed check, so the
            # ~1 s it takes to load python-iptables and pyroute2 is spent while
            # the next check runs, not after the decision.
            from vpnoffload import firewall, plan  # noqa: F401
            import iptc  # noqa: F401
            from pyroute2 import Conntrack  # noqa: F401

            line = sys.stdin.readline().split()
            if not line:
                return 0
            fallback, changed = names(line[0]), names(line[1] if len(line) > 1 else "")
        apply_swap(config, fallback, changed)
    except VpnOffloadError as exc:
        print(f"vpnoffload swap: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
