"""What tests/systemd found under a real systemd, pinned without one: OpenVPN's unit is
started and never enabled, the sandboxed watchdog knows systemd runs its netns, and
the units carry the settings that made the real runs pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vpnoffload import proc, tunnel
from vpnoffload.deploy.units import unit_text, up_unit_text
from vpnoffload.paths import Paths

PATHS = Paths(config=Path("/etc/vpnoffload/vpnoffload.toml"), state=Path("/etc/vpnoffload/state"))


def test_openvpn_unit_is_started_never_enabled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(proc, "run", lambda argv, **kw: calls.append(list(argv)) or proc.Result(argv, 0, "", ""))
    t = tunnel.SystemdTunnel(name="server", unit="openvpn-server@vpnoffload", wrapper=tmp_path / "s" / "w.conf",
                             wrapper_text="cd /x\n")
    t.start()
    # An enabled unit would start by itself at boot, before the boot unit put the rules back.
    assert calls == [["systemctl", "start", "--no-block", "openvpn-server@vpnoffload"]]


def test_sandboxed_service_without_ptrace_trusts_its_invocation_id(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    real_readlink = os.readlink

    def readlink(path: str) -> str:
        if path == "/proc/1/ns/net":  # what CapabilityBoundingSet= without CAP_SYS_PTRACE gives
            raise PermissionError(13, "Permission denied")
        return real_readlink(path)

    monkeypatch.setattr(tunnel, "Path", lambda p: tmp_path if p == "/run/systemd/system" else Path(p))
    monkeypatch.setattr(tunnel.os, "readlink", readlink)
    monkeypatch.setenv("INVOCATION_ID", "971809d4f9984ae394102e65b628ae45")
    assert tunnel.systemd_manages_this_netns()
    monkeypatch.delenv("INVOCATION_ID")
    assert not tunnel.systemd_manages_this_netns()


def test_units_have_what_real_systemd_needed() -> None:
    up = up_unit_text(PATHS, "vps", python="/usr/bin/python3")
    assert not [ln for ln in up.splitlines() if ln.startswith("Before=")]  # `up` starts OpenVPN and waits for it
    watch = unit_text(PATHS, python="/usr/bin/python3")
    for line in ("KillMode=process", "PartOf=vpnoffload-vps.service",
                 # NET_BIND_SERVICE: the friendly page's ports are below 1024 (root needs it too)
                 "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID "
                 "CAP_KILL CAP_SYS_ADMIN",
                 "RestrictNamespaces=net"):  # the probe namespace (unshare/setns of a network namespace)
        assert line in watch.splitlines(), line
