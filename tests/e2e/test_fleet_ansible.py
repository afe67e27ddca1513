"""The Ansible collection vpnoffload.fleet end to end: real ansible-playbook over real SSH.

Two VPSes and two home boxes of the namespace lab, each with its own sshd; the controller is a
namespace of its own on the lab's internet. The inventory: vps1's service ``web`` names both homes
(home, then attic), vps2's names home only, so home sits behind both VPSes (its vps2 config one
directory down) and attic behind vps1. One run of ``vpnoffload.fleet.site`` must serve the visitor
through both VPSes with the visitor's own address; a new service is reported by ``--check`` and not
made, then made, and that run changes nothing else (the second run for everything but vps2); a
service removed from the inventory is removed, and the home box no service names any more is revoked
and leaves (``down home`` there); a last run changes nothing at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import openvpn_pids
from tests.e2e.labkit import attach_controller, ssh_keys, start_sshd, wait_served
from tests.nslib import namespaces, unique
from tests.prereq import missing
from vpnoffload.lab.netns import Lab

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SECOND_SUBNET = "10.89.0.0/24"
WEB = {"name": "web", "listen": 80, "target": 8080, "check": "http:/"}
API = {"name": "api", "listen": 8081, "target": 8080, "check": "tcp", "homes": ["home"]}


@pytest.fixture
def root() -> Iterator[Path]:
    made = Path(tempfile.mkdtemp(prefix="vpnoffload-fleet-"))
    os.chmod(made, 0o755)  # OpenVPN drops privileges and must still read the VPS's files
    yield made
    shutil.rmtree(made, ignore_errors=True)


def inventory(lab: Lab, root: Path, vps2_services: list[dict], vps1_homes: list[str]) -> Path:
    """The fleet's inventory (JSON is YAML); every host's config dir its own, below ``root``."""
    hosts = {"vps1": lab.vps_address, "vps2": lab.vps2_address,
             "home": lab.home_uplink_address, "attic": lab.attic_uplink_address}
    data = {
        "all": {"vars": {
            "ansible_user": "root",
            "ansible_python_interpreter": sys.executable,
            "vpnoffload_bin": str(VENV_BIN / "vpnoffload"),
            "vpnoffload_systemd": False,
            "vpnoffload_watch_log": str(root / "watch.log"),
        }},
        "vpnoffload_vps": {"hosts": {
            "vps1": {"ansible_host": hosts["vps1"], "vpnoffload_public_address": lab.vps_address,
                     "vpnoffload_tunnel_subnet": "198.51.100.0/24", "vpnoffload_config_dir": str(root / "vps1"),
                     "vpnoffload_watch_log": str(root / "vps1-watch.log"),
                     "vpnoffload_services": [{**WEB, "homes": vps1_homes}]},
            "vps2": {"ansible_host": hosts["vps2"], "vpnoffload_public_address": lab.vps2_address,
                     "vpnoffload_tunnel_subnet": SECOND_SUBNET, "vpnoffload_config_dir": str(root / "vps2"),
                     "vpnoffload_watch_log": str(root / "vps2-watch.log"),
                     "vpnoffload_services": vps2_services},
        }},
        "vpnoffload_home": {"hosts": {
            name: {"ansible_host": hosts[name], "vpnoffload_config_dir": str(root / name)} for name in ("home", "attic")
        }},
    }
    path = root / "inventory.yml"
    path.write_text(json.dumps(data, indent=1))
    return path


def playbook(controller: str, root: Path, inv: Path, *extra: str) -> tuple[str, dict[str, dict[str, int]], list[str]]:
    """``ansible-playbook -i INV vpnoffload.fleet.site EXTRA`` in the controller's namespace: output, recap,
    and the changed tasks as "HOST: ROLE : TASK"."""
    env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / "ansible"),
        "ANSIBLE_SSH_ARGS": f"-F {root / 'ssh' / 'ssh_config'}",
        "ANSIBLE_PIPELINING": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
        "ANSIBLE_HOME": str(root / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(root / "ansible-home" / "tmp"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORKS": "4",
    })
    argv = ["ip", "netns", "exec", controller, str(VENV_BIN / "ansible-playbook"), "-i", str(inv),
            "vpnoffload.fleet.site", *extra]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, check=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"ansible-playbook {' '.join(extra)} exited {proc.returncode}:\n{out[-6000:]}", pytrace=False)
    recap = {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
             for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", out, re.M)}
    changed, task = [], ""
    for line in out.splitlines():
        if line.startswith("TASK ["):
            task = line[6:].split("]", 1)[0]
        elif line.startswith("changed: ["):
            changed.append(f"{line[10:].split(']', 1)[0]}: {task}")
    print(f"ansible-playbook {' '.join(extra)}: {time.monotonic() - started:.1f} s, changed: {changed}")
    return out, recap, changed


def services(site: Path) -> dict:
    """The services of the config in ``site`` (the namespaces share this filesystem)."""
    import tomllib

    return tomllib.loads((site / "vpnoffload.toml").read_text()).get("services", {})


def test_fleet_from_one_inventory(lab2vps: Lab, root: Path) -> None:
    if shutil.which("ssh") is None or not Path("/usr/sbin/sshd").exists():
        missing("openssh-client and openssh-server (apt-get install openssh-client openssh-server)")
    if not (VENV_BIN / "ansible-playbook").exists():
        missing("ansible-core in the venv (pip install -e '.[test]')")
    lab = lab2vps
    keys = root / "ssh"
    keys.mkdir(mode=0o700)
    ssh_keys(keys)
    for host, address in (("vps", lab.vps_address), ("vps2", lab.vps2_address),
                          ("home", lab.home_uplink_address), ("attic", lab.attic_uplink_address)):
        start_sshd(lab, host, address, keys)
    webs = {name: lab.popen(name, sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080", "--name", name)
            for name in ("home", "attic")}
    for name in webs:
        assert lab.wait_tcp(name, "127.0.0.1", 8080)

    with namespaces(unique("ctl")) as (controller,):
        attach_controller(lab, controller)
        inv = inventory(lab, root, [{**WEB, "homes": ["home"]}], ["home", "attic"])

        # The whole fleet from nothing.
        out, recap, _ = playbook(controller, root, inv)
        assert set(recap) == {"vps1", "vps2", "home", "attic"}, out[-3000:]
        for address in (lab.vps_address, lab.vps2_address):
            assert f"you are {lab.visitor_address}" in wait_served(lab, address, "served from home", 20)
        # home's second VPS config sits one directory down; attic joined vps1 only.
        assert (root / "home" / "vps2" / "vpnoffload.toml").exists()
        assert not (root / "attic" / "vps2").exists()
        for box in ("home", "attic"):
            profile = root / box / "state" / f"{box}.ovpn"
            assert profile.stat().st_mode & 0o777 == 0o600
        # No profile was written on the controller, not even for a moment in a scratch dir left behind.
        assert not list(Path(tempfile.gettempdir()).glob("vpnoffload-profile-*"))
        assert "PRIVATE KEY" not in out
        # Nor in Ansible's own files on the controller (its temp dir, facts, retry files).
        assert not [p for p in (root / "ansible-home").rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]

        # The service naming two homes: home's server stops, vps1 serves from attic (vps2 has only home).
        webs["home"].kill()
        assert f"you are {lab.visitor_address}" in wait_served(lab, lab.vps_address, "served from attic", 15)
        webs["home"] = lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080",
                                 "--name", "home")
        wait_served(lab, lab.vps_address, "served from home", 15)

        # A new service on vps2: --check reports it and makes nothing.
        inv = inventory(lab, root, [{**WEB, "homes": ["home"]}, API], ["home", "attic"])
        out, recap, _ = playbook(controller, root, inv, "--check", "--diff")
        assert recap["vps2"]["changed"] >= 1 and recap["vps1"]["changed"] == 0, out[-6000:]
        assert "[services.api]" in out, out[-6000:]
        assert "api" not in services(root / "vps2")
        assert lab.tcp_probe("visitor", lab.vps2_address, 8081) != "open"
        # ... and a normal run makes it, through to home. It is also the second real run for all
        # the rest (vps1's service naming two homes, attic, home's join of vps1): nothing else
        # changes. (vps2 and home's join of vps2 rerun unchanged at the end, after the removal.)
        out, recap, changed = playbook(controller, root, inv)
        assert recap["vps1"]["changed"] == 0 and recap["attic"]["changed"] == 0, out[-6000:]
        others = [c for c in changed if not (c.startswith("vps2: ") or (c.startswith("home: ") and "vps2" in c))]
        assert not others, f"a run that only adds api to vps2 changed {others}:\n{out[-6000:]}"
        assert "api" in services(root / "vps2")
        assert "api" in services(root / "home" / "vps2")  # home opened its port too
        assert f"you are {lab.visitor_address}" in wait_served(lab, lab.vps2_address, "served from home", 20,
                                                             port=8081)

        # Removed from the inventory: removed. attic named by no service any more: revoked.
        inv = inventory(lab, root, [{**WEB, "homes": ["home"]}], ["home"])
        out, recap, _ = playbook(controller, root, inv)
        assert "api" not in services(root / "vps2")
        assert services(root / "vps1")["web"]["homes"] == ["home"]
        pki = lab.exec("vps", str(VENV_BIN / "vpnoffload"), "-c", str(root / "vps1" / "vpnoffload.toml"),
                       "pki", "list").stdout
        assert re.search(r"^attic\s+client\s+\S+\s+\S+\s+revoked", pki, re.M), pki
        assert lab.tcp_probe("visitor", lab.vps2_address, 8081, wait=3) != "open"
        # attic left vps1: down home there, its config and profile gone.
        assert not (root / "attic" / "vpnoffload.toml").exists()
        assert not (root / "attic" / "state" / "attic.ovpn").exists()
        assert not openvpn_pids(lab, "attic")
        for address in (lab.vps_address, lab.vps2_address):
            assert f"you are {lab.visitor_address}" in wait_served(lab, address, "served from home", 20)
        # A second run changes nothing (the state of the first run, but for attic and api).
        out, recap, _ = playbook(controller, root, inv)
        assert all(host["changed"] == 0 for host in recap.values()), out[-6000:]
