"""Unit tests never look at this machine's own interfaces.

``init`` asks the kernel where ``--vps-address`` arrives (1:1-NAT clouds, see
vpnoffload.routing.nat); in unit tests that question goes to an empty fake
kernel instead, so what init writes does not depend on the machine they run on.
Tests of the detection itself pass their own fake backend.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_host_interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes import FakeRoutingBackend
    from vpnoffload.routing import nat

    monkeypatch.setattr(nat, "_backend", lambda backend: FakeRoutingBackend() if backend is None else backend)


@pytest.fixture
def env(tmp_path):
    """deploy's up/down on fake backends (tests.fakes.deploy_env): test_deploy, test_deploy_run."""
    from tests.fakes import deploy_env

    return deploy_env(tmp_path)


@pytest.fixture(autouse=True)
def _nft_lock_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """vpnoffload's nftables write lock lives in a temp dir, not /run (no root needed)."""
    from vpnoffload.firewall import nftlock

    monkeypatch.setenv(nftlock.PATH_ENV, str(tmp_path_factory.getbasetemp() / "nft.lock"))
