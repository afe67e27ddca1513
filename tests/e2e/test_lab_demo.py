"""``vpnoffload lab up|demo|down`` run as a user runs them: as a subprocess, as root.

Each test uses its own random prefix and always removes its lab in ``finally``,
whatever the command under test did.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.budget import budget
from tests.nslib import needs_root, unique
from tests.prereq import missing
from vpnoffload import users
from vpnoffload.errors import PrerequisiteError
from vpnoffload.lab.narrate import RecordingNarrator
from vpnoffload.lab.netns import Lab, check_prerequisites, child_env
from vpnoffload.lab.sites import LAB_ROOT, Sites
from vpnoffload.lab.steps import run_down

pytestmark = [needs_root, pytest.mark.root, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh lab prefix; whatever the test leaves under it is removed afterwards."""
    try:
        check_prerequisites()
    except PrerequisiteError as exc:
        missing(str(exc))
    name = unique("lab")
    try:
        yield name
    finally:
        try:
            run_down(name, RecordingNarrator())
        finally:
            Lab(name).destroy()
            Sites.for_prefix(name).remove()


def vpnoffload(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpnoffload", *args], capture_output=True, text=True,
                          timeout=timeout, env=child_env(), cwd=REPO, check=False)


# Links a container engine adds and removes on its own (a compose lab may run
# beside this test); the lab's own devices are named to-*, eth0 and vpnoffload0.
_ENGINE_LINK = re.compile(r"(veth[0-9a-f]{7}|br-[0-9a-f]{12}|docker0)(@.*)?")


def root_links() -> set[str]:
    """Interface names in the root namespace (flags and counters may move; names must not)."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = {line.split(":")[1].strip() for line in out.splitlines()}
    return {name for name in names if not _ENGINE_LINK.fullmatch(name)}


def lab_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{prefix}-")]


def test_up_serves_the_visitor_and_down_leaves_the_machine_as_found(prefix: str) -> None:
    links, user_existed = root_links(), users.exists()

    up = vpnoffload("lab", "up", "--prefix", prefix)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"ip netns exec {prefix}-visitor curl http://203.0.113.10/" in up.stdout
    assert f"vpnoffload lab down --prefix {prefix}" in up.stdout
    assert "vpnoffload -c" in up.stdout and " up vps" in up.stdout and " up home" in up.stdout

    lab = Lab(prefix)
    status, body = lab.http_get("visitor", "http://203.0.113.10/", timeout=5)
    assert status == 200 and "served from home" in body and lab.visitor_address in body, body

    again = vpnoffload("lab", "up", "--prefix", prefix)
    assert again.returncode == 2
    assert again.stderr.strip() == (f"vpnoffload: error: a lab named {prefix} is already up; "
                                    f"run 'vpnoffload lab down --prefix {prefix}' first")

    down = vpnoffload("lab", "down", "--prefix", prefix)
    assert down.returncode == 0, down.stdout + down.stderr
    assert lab_namespaces(prefix) == []
    assert root_links() == links
    assert not (LAB_ROOT / prefix).exists()
    assert users.exists() == user_existed

    twice = vpnoffload("lab", "down", "--prefix", prefix)
    assert twice.returncode == 0 and "nothing to do" in twice.stdout


def test_demo_tells_the_whole_story_and_cleans_up(prefix: str) -> None:
    links, user_existed = root_links(), users.exists()

    demo = vpnoffload("lab", "demo", "--prefix", prefix)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    failover = re.search(r"failover \(cable pulled -> friendly page\): (\d+\.\d) s", output)
    recovery = re.search(r"recovery \(cable back -> served from home\): (\d+\.\d) s", output)
    assert failover and recovery, output
    # The product's goals, not the demo's own give-up limits (15 s / 30 s), which it cannot exceed anyway.
    assert float(failover.group(1)) <= budget().failover and float(recovery.group(1)) <= budget().recovery, output
    # The demo teaches the real commands.
    for command in ("init --vps-address", "service add web", "render home", "up vps", "up home", "watch",
                    "down home", "down vps"):
        assert command in output, command

    assert lab_namespaces(prefix) == []
    assert root_links() == links
    assert not (LAB_ROOT / prefix).exists()
    assert users.exists() == user_existed


def test_missing_prerequisite_is_one_line_and_exit_4(prefix: str, tmp_path: Path) -> None:
    # Hide openvpn from PATH: the lab must refuse before touching anything.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").symlink_to(shutil.which("ip"))
    env = child_env() | {"PATH": str(bin_dir)}
    proc = subprocess.run([sys.executable, "-m", "vpnoffload", "lab", "up", "--prefix", prefix],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO, check=False)
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines() == ["vpnoffload: error: openvpn is not installed: apt-get install openvpn"]
    assert lab_namespaces(prefix) == []
