"""Tiny helpers for tests that build network namespaces with iproute2.

Every namespace a test makes carries a unique prefix and is deleted in a
``finally`` (deleting a namespace also deletes its veth ends and processes'
network, so nothing leaks). Only TEST-NET addresses are used for "public" links.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence

from tests.prereq import needs_openvpn, needs_root  # noqa: F401  (where the integration tests import them)


def sh(*args: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, timeout=timeout, capture_output=True, text=True, **kw)


def in_ns(ns: str, *args: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """Run a command inside namespace ``ns``."""
    return sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout, **kw)


def unique(prefix: str) -> str:
    return f"vt{prefix}{uuid.uuid4().hex[:6]}"


def kill_ns_processes(ns: str) -> None:
    pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


@contextlib.contextmanager
def namespaces(*names: str) -> Iterator[list[str]]:
    """Create namespaces (with loopback up); always kill their processes and delete them."""
    made: list[str] = []
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            made.append(name)
            in_ns(name, "ip", "link", "set", "lo", "up")
        yield made
    finally:
        for name in made:
            kill_ns_processes(name)
            sh("ip", "netns", "del", name, check=False)


def link(ns_a: str, addr_a: str, ns_b: str, addr_b: str, *, names: Sequence[str] | None = None) -> tuple[str, str]:
    """A veth pair between two namespaces, with addresses like '203.0.113.1/24'."""
    a, b = names or (f"v{uuid.uuid4().hex[:8]}", f"v{uuid.uuid4().hex[:8]}")
    sh("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
    for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
        in_ns(ns, "ip", "addr", "add", addr, "dev", dev)
        in_ns(ns, "ip", "link", "set", dev, "up")
    return a, b
