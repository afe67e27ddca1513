"""The Ansible collection's systemd path: vpnoffload.fleet.site on a VPS and a home box whose
PID 1 is systemd (the systemd lab's containers, reached with docker exec: that image has no sshd;
the SSH path is tests/e2e/test_fleet_ansible.py). vpnoffload_systemd is left unset, so the roles
find systemd themselves: the units are installed and running, the watchdog is a unit, both machines
rebooted come back serving without Ansible, and runs before and after the reboot succeed, changing
nothing on either machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prereq import missing
from tests.systemd.conftest import (HOME, HOME_UNIT, RECOVERY_TIMEOUT, TUNNEL_SUBNET, VPS_ADDRESS, VPS_UNIT, WATCH_UNIT,
                                    SystemdLab, docker, served_from_home)

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def playbook(lab: SystemdLab, tmp_path: Path) -> dict[str, dict[str, int]]:
    if not (BIN / "ansible-playbook").exists():
        missing("ansible-core in the venv (pip install -e '.[test]')")
    common = {"ansible_connection": "dockerexec", "ansible_python_interpreter": "/usr/bin/python3",
              "vpnoffload_bin": "/opt/vpnoffload/bin/vpnoffload"}
    inventory = {
        "vpnoffload_vps": {"hosts": {"vps": {**common, "ansible_host": lab.name("vps"),
                                             "vpnoffload_public_address": VPS_ADDRESS,
                                             "vpnoffload_tunnel_subnet": TUNNEL_SUBNET,
                                             "vpnoffload_services": [{"name": "web", "listen": 80, "target": 8080,
                                                                      "check": "http:/", "homes": [HOME]}]}}},
        "vpnoffload_home": {"hosts": {HOME: {**common, "ansible_host": lab.name("home")}}},
    }
    path = tmp_path / "inventory.yml"
    path.write_text(json.dumps(inventory))
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / "ansible"), "ANSIBLE_PIPELINING": "1",
           "ANSIBLE_CONNECTION_PLUGINS": str(Path(__file__).parent / "ansible_connection"),
           "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_NOCOLOR": "1"}
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(path), "vpnoffload.fleet.site", "--diff"], env=env,
                          capture_output=True, text=True, timeout=400, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    changed, task = [], ""
    for line in out.splitlines():
        if line.startswith("TASK ["):
            task = line[6:].split("]", 1)[0]
        elif line.startswith("changed: ["):
            changed.append(f"{line[10:].split(']', 1)[0]}: {task}")
    print(f"ansible-playbook: changed: {changed}")
    for block in out.split("TASK ["):
        if block.startswith("vpnoffload.fleet.vps : Up vps") and "changed: [" in block:
            print(f"the up vps plan: {block[:1500]}")
    return {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", out, re.M)}


def active(lab: SystemdLab, host: str, *units: str) -> dict[str, str]:
    return {unit: lab.systemctl(host, "is-active", unit).stdout.strip() for unit in units}


def test_the_fleet_under_systemd(systemd_lab: SystemdLab, tmp_path: Path) -> None:
    lab = systemd_lab
    recap = playbook(lab, tmp_path)
    assert set(recap) == {"vps", HOME}, recap
    assert active(lab, "vps", VPS_UNIT, WATCH_UNIT) == {VPS_UNIT: "active", WATCH_UNIT: "active"}
    assert active(lab, "home", HOME_UNIT) == {HOME_UNIT: "active"}
    assert lab.systemctl("vps", "is-enabled", WATCH_UNIT).stdout.strip() == "enabled"
    lab.wait_for("served from home after the play", served_from_home, "/whoami")

    # A second run changes nothing on either machine (the watchdog unit stops the page server that
    # `up vps` started as the vpnoffload user: that signal needs CAP_KILL in its bounding set).
    recap = playbook(lab, tmp_path)
    assert recap[HOME]["changed"] == 0 and recap["vps"]["changed"] == 0, recap

    # Both machines rebooted: systemd brings everything back, no Ansible needed.
    for host in ("vps", "home"):
        assert docker("restart", lab.name(host), timeout=120).returncode == 0
    for host in ("vps", "home"):
        lab.wait_booted(host)
    lab.wait_for("served from home after both reboots", served_from_home, "/whoami", RECOVERY_TIMEOUT)
    assert active(lab, "vps", VPS_UNIT, WATCH_UNIT) == {VPS_UNIT: "active", WATCH_UNIT: "active"}
    assert active(lab, "home", HOME_UNIT) == {HOME_UNIT: "active"}
    # A run after the reboot changes nothing either.
    recap = playbook(lab, tmp_path)
    assert recap[HOME]["changed"] == 0 and recap["vps"]["changed"] == 0, recap
