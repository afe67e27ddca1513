"""Apply a watchdog decision: rewrite the owned rules, then forget the affected flows.

Runs as a short-lived child of the watchdog (``python -m vpnoffload.watch.swap``),
so python-iptables (~20 MB) and pyroute2 (~23 MB) are loaded only for the
fraction of a second a swap takes and never stay in the watchdog's memory.

Conntrack entries of every changed service are deleted by the service's
connection mark in one netlink call, in both directions: after a swap to the
page no visitor keeps retransmitting into a dead tunnel, and after a swap back
nobody keeps being sent to the page.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from vpnoffload.errors import ConfigError
from vpnoffload.firewall.rules import Backend
from vpnoffload.model import Config


#: Written on stdout the moment the rules are committed (before the flows are forgotten):
#: the watchdog publishes its new state on it, so status and the rules change together.
APPLIED = b"applied\n"


def apply_swap(config: Config, active: Mapping[str, str | None], flush: frozenset[str],
               firewall_backend: Backend | None = None, applied: Callable[[], None] | None = None) -> None:
    """Point each service at ``active[name]`` (a home box, or None: fallback), call ``applied()``,
    then forget the flows of the services in ``flush``."""
    from vpnoffload import firewall, plan
    from vpnoffload.firewall import conntrack

    backend = firewall_backend or firewall.default_backend()
    known = {name: home for name, home in active.items() if name in config.services}
    plan.apply(firewall.plan(backend, firewall.vps_ruleset(config, active=known)))
    if applied is not None:
        applied()
    conntrack.flush_marked([firewall.service_mark(config, name) for name in sorted(flush) if name in config.services])


def main(argv: list[str] | None = None) -> int:
    """``--config C [--decision JSON]``: the decision is JSON ``{"active": {service: home or null},
    "flush": [service, ...]}``; without it, that one line is read from stdin once everything is loaded."""
    from vpnoffload.exits import run_main
    from vpnoffload.lean import options

    def body() -> int:
        given = options.parse(argv, values=("--config", "--decision"), required=("--config",))
        decision = given.get("--decision")
        return _swap(Path(str(given["--config"])), str(decision) if decision is not None else None)

    return run_main(body, prog="vpnoffload swap")


def _swap(config_path: Path, text: str | None) -> int:
    from vpnoffload import config as cfg

    config = cfg.load(config_path)
    backend = None
    if text is None:
        # Warm start: the watchdog forks us at the first failed check, or as soon as the tunnel
        # goes silent during a round (watch/pace.py), so the time it takes to load python-iptables
        # is spent while the checks run, not after the decision. EOF: no swap after all.
        from vpnoffload import firewall

        # Only what the commit needs: pyroute2's conntrack (~0.15 s) is loaded after it, for the flush.
        backend = firewall.default_backend()
        backend.preload()

        text = sys.stdin.readline()
        if not text.strip():
            return 0
    try:
        decision = json.loads(text)
        active, flush = decision["active"], frozenset(decision.get("flush", ()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"bad decision: {exc}", field="decision") from None
    apply_swap(config, active, flush, backend, applied=_say_applied)
    return 0


def _say_applied() -> None:
    try:
        sys.stdout.buffer.write(APPLIED)
        sys.stdout.flush()
    except OSError:
        pass  # nobody listens (run by hand with --decision and stdout closed): nothing to tell

if __name__ == "__main__":
    sys.exit(main())
