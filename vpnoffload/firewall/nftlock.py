"""One lock for every nftables write vpnoffload makes, held from the read it is based on to its commit.

Several vpnoffload processes write nftables: ``up``/``down`` (vpnoffload's own
``ip``/``ip6 vpnoffload`` tables with the nft backend, and the openings in the
host's chains), the watchdog's swap child (the same own tables, on every
failover) and its reconcile child (the host's openings after a reload). Each
write is computed from what it read just before; two of them interleaving
(read A, read B, write A, write B) would commit B's stale view over A's. The
run lock cannot serve: a failover must not wait for a whole ``up vps``. So
each read-to-commit holds this short flock, machine-wide like iptables' own
``/run/xtables.lock``. It is re-entrant within a process (removing a host
opening holds it from reading the handle to deleting it, and the delete takes it again).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

DEFAULT_PATH = "/run/vpnoffload-nft.lock"
PATH_ENV = "VPNOFFLOAD_NFT_LOCK"  # tests point it into their temp dir
#: A write takes well under a second; a holder stuck longer than this is a hung nft.
TIMEOUT = 10.0

_depth = 0  # how deep this process already holds it


def path() -> str:
    return os.environ.get(PATH_ENV) or DEFAULT_PATH


@contextlib.contextmanager
def held(timeout: float = TIMEOUT) -> Iterator[None]:
    """Hold the nftables write lock (BackendError after ``timeout`` seconds of waiting)."""
    global _depth
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    from vpnoffload.locks import held as flock_held

    where = path()
    busy = f"another vpnoffload process has held the nftables lock {where} for {timeout:g} s; try again"
    with flock_held(where, timeout, lambda: busy):
        _depth = 1
        try:
            yield
        finally:
            _depth = 0
