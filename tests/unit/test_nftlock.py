"""vpnoffload's nftables writes take one lock from their read to their commit, so a ``up vps`` (or
``down``) and the watchdog's swap or reconcile child cannot interleave (issue 29)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

import pytest

from tests.fakes import FakeNft
from vpnoffload.errors import BackendError
from vpnoffload.firewall import nft, nftlock
from vpnoffload.firewall.host import nft as host_nft
from vpnoffload.firewall.host.openings import Opening, Placement
from vpnoffload.firewall.rules import Rule, Ruleset

CONTENT = Ruleset(frozenset({("nat", "VPNOFFLOAD-DNAT")}), (
    Rule("nat", "PREROUTING", ("!", "-i", "tun0", "-j", "VPNOFFLOAD-DNAT")),
    Rule("nat", "VPNOFFLOAD-DNAT", ("-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination",
                                    "198.51.100.2:8080")),
))


def locked_elsewhere() -> bool:
    """Another process (another open file) could not take the lock now."""
    fd = os.open(nftlock.path(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_every_nft_call_of_a_write_runs_under_the_lock() -> None:
    fake = FakeNft()
    seen: list[tuple[str, bool]] = []

    def run(argv: list[str], stdin: str | None) -> str:
        seen.append((" ".join(argv[:3]), locked_elsewhere()))
        return fake(argv, stdin)

    nft.NftBackend(run=run).write("nat", CONTENT)
    assert [held for _, held in seen] == [True] * len(seen) and len(seen) >= 2  # snapshot reads and the commit
    assert not locked_elsewhere()  # released afterwards


def test_host_opening_writes_run_under_the_lock(monkeypatch) -> None:
    calls: list[bool] = []

    def run(argv, **kwargs):
        calls.append(locked_elsewhere())
        return subprocess.CompletedProcess(argv, 0, '{"nftables": [{"insert": {"rule": {"handle": 7}}}]}', "")

    monkeypatch.setattr(host_nft, "run", run)
    place = Placement("nft", "inet", "filter", "input", Opening("input", 4, "udp", dport=1194))
    host_nft.insert([place])
    host_nft.delete([("inet", "filter", "input", 7)])
    assert calls == [True, True]


def test_a_second_writer_waits_for_the_first_to_commit(tmp_path) -> None:
    """A writer in another process (the watchdog's swap child, say) holds the lock: our write's
    first read comes only after it let go, never between its read and its commit."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vpnoffload.firewall import nftlock\n"
         "with nftlock.held():\n    print('held', flush=True)\n    time.sleep(0.6)\n"
         "    print(time.monotonic(), flush=True)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, nftlock.PATH_ENV: nftlock.path()})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        fake = FakeNft()
        first: list[float] = []

        def run(argv: list[str], stdin: str | None) -> str:
            first.append(time.monotonic())
            return fake(argv, stdin)

        nft.NftBackend(run=run).write("nat", CONTENT)
        released = float(holder.stdout.readline())
    finally:
        holder.wait(10)
    assert first and first[0] >= released


def test_it_is_reentrant_and_fails_clearly_when_held_too_long() -> None:
    with nftlock.held():
        with nftlock.held():  # a removal: handle read, then the delete inside
            assert locked_elsewhere()
        assert locked_elsewhere()
    assert not locked_elsewhere()
    fd = os.open(nftlock.path(), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(BackendError, match="nftables lock"):
            with nftlock.held(timeout=0.2):
                pass
    finally:
        os.close(fd)
