"""The README's quickstart, run literally on two fresh Debian 12 machines with systemd as PID 1.

A VPS and a home box (compose/quickstart/Dockerfile: nothing of vpnoffload's
installed) and a visitor, on a TEST-NET network of their own. Before the
README's commands: vpnoffload's source is copied to /root/vpnoffload on both
(the README asks the reader to do that) and the VPS's root gets an SSH key the
home box's sshd accepts (the README's scp needs one). Then every ``sh`` block of
the README's quickstart runs, in order, on the machine its marker names
(tests/quickstart.py reads them), with only the values the README tells the
reader to replace: the VPS's address and the home box's SSH name. The home box
then starts a web server on 8080 ("run your web server on port 8080 at home"),
and the visitor must be served from home through the VPS, with `status` on the
VPS exiting 0.

Needs Docker (scripts/docker-up). Everything it creates carries the label
below and is removed at the end, always.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator

import pytest

from tests import quickstart
from tests.helpers import wheelhouse
from tests.prereq import need
from tests.systemd.conftest import (BASE_IMAGE, CONTEXT, REPO, SYSTEMD_OPTIONS, _checked, docker,
                                    engine_problem)

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.timeout(900)]

DOCKERFILE = CONTEXT / "quickstart" / "Dockerfile"
IMAGE = "vpnoffload-quickstart"
LABEL = "vpnoffload-quickstart-lab"
PREFIX = "vpnoffload-qs"
NETWORK = f"{PREFIX}-internet"
# TEST-NET-2, apart from the systemd lab (198.51.100.192/26) and the compose lab (192.0.2.192/26).
SUBNET, GATEWAY = "198.51.100.128/26", "198.51.100.129"
ADDRESSES = {"vps": "198.51.100.130", "home": "198.51.100.140", "visitor": "198.51.100.150"}
BOOT_TIMEOUT = 60.0
STEP_TIMEOUT = 300.0
SERVED_TIMEOUT = 60.0


def name(host: str) -> str:
    return f"{PREFIX}-{host}"


def run(host: str, *argv: str, timeout: float = 60, stdin: str | bytes | None = None) -> subprocess.CompletedProcess:
    text = not isinstance(stdin, bytes)
    return subprocess.run(["docker", "exec", *(["-i"] if stdin is not None else []), name(host), *argv],
                          input=stdin, capture_output=True, text=text, timeout=timeout, check=False)


def image_tag() -> str:
    """Build the fresh-server image unless one made from exactly these inputs exists."""
    wheelhouse()  # with the build tools (tests.helpers)
    digest = hashlib.sha256()
    for path in sorted([DOCKERFILE, CONTEXT / "systemd" / "lab-web.service", *(CONTEXT / "wheels").glob("*.whl")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(_checked(docker("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE), "image inspect").encode())
    tag = f"{IMAGE}:{digest.hexdigest()[:16]}"
    if docker("image", "inspect", tag).returncode != 0:
        _checked(docker("build", "--network", "host", "--quiet", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                        "--file", str(DOCKERFILE), "--tag", tag, str(CONTEXT), timeout=900), f"docker build {tag}")
        for old in docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", IMAGE).stdout.split():
            if old != tag:
                docker("image", "rm", old)
    return tag


def remove_leftovers() -> None:
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
    if ids:
        docker("rm", "-f", *ids, timeout=120)
    if docker("network", "inspect", NETWORK).returncode == 0:
        docker("network", "rm", NETWORK)


def source_tar() -> bytes:
    """vpnoffload's source as a reader copies it: the files git tracks, under vpnoffload/."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in filter(None, files.decode().split("\0")):
            if (REPO / rel).is_file():
                tar.add(REPO / rel, arcname=f"vpnoffload/{rel}", recursive=False)
    return buf.getvalue()


def wait_booted(host: str) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        state = run(host, "systemctl", "is-system-running").stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.3)
    pytest.fail(f"systemd in {host} is {state!r} after {BOOT_TIMEOUT:g} s", pytrace=False)


def ssh_from_vps_to_home() -> None:
    """The reader's own SSH access from the VPS to the home box (not part of the README)."""
    _checked(run("vps", "sh", "-c", "mkdir -p -m 0700 /root/.ssh && ssh-keygen -q -t ed25519 -N '' "
                 "-f /root/.ssh/id_ed25519"), "ssh-keygen on the VPS")
    key = _checked(run("vps", "cat", "/root/.ssh/id_ed25519.pub"), "read the VPS's key")
    _checked(run("home", "sh", "-c", "mkdir -p -m 0700 /root/.ssh && cat >> /root/.ssh/authorized_keys "
                 "&& chmod 600 /root/.ssh/authorized_keys", stdin=key), "authorize the VPS's key at home")
    deadline = time.monotonic() + 30
    while True:  # sshd starts with the boot; its host key goes into the VPS's known_hosts
        scan = run("vps", "sh", "-c", f"ssh-keyscan -T 5 {ADDRESSES['home']} >> /root/.ssh/known_hosts")
        if scan.returncode == 0 and run("vps", "grep", "-q", ADDRESSES["home"], "/root/.ssh/known_hosts").returncode == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"no sshd answered on the home box: {scan.stderr}", pytrace=False)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def fresh_machines() -> Iterator[None]:
    """Three booted fresh Debian 12 containers; vpnoffload's source on the VPS and home box."""
    need(engine_problem())
    tag = image_tag()
    remove_leftovers()
    try:
        _checked(docker("network", "create", "--label", LABEL, "--subnet", SUBNET, "--gateway", GATEWAY, NETWORK),
                 "docker network create")
        # /proc/sys is read-only in a container; a VPS's forwarding sysctl is set the only way it can be here.
        extra = {"vps": ("--sysctl", "net.ipv4.ip_forward=1"), "home": ("--sysctl", "net.ipv4.conf.default.rp_filter=2"),
                 "visitor": ()}
        for host, address in ADDRESSES.items():
            _checked(docker("run", "--detach", "--name", name(host), "--hostname", host, "--label", LABEL,
                            "--network", NETWORK, "--ip", address, *SYSTEMD_OPTIONS, *extra[host], tag),
                     f"docker run {host}")
        for host in ADDRESSES:
            wait_booted(host)
        tar = source_tar()
        for host in ("vps", "home"):
            _checked(run(host, "tar", "-x", "-C", "/root", stdin=tar), f"copy the source to {host}")
        ssh_from_vps_to_home()
        yield
    finally:
        if os.environ.get("VPNOFFLOAD_SYSTEMD_KEEP") != "1":
            remove_leftovers()


def visitor_get(path: str = "/whoami") -> tuple[int, str]:
    proc = run("visitor", "curl", "-sS", "--max-time", "2", "-w", "\n%{http_code}", f"http://{ADDRESSES['vps']}{path}",
               timeout=30)
    body, _, code = proc.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body.strip()


def test_the_readme_quickstart_serves_a_visitor_from_home(fresh_machines: None) -> None:
    steps = quickstart.steps(quickstart.README.read_text(),
                             {"203.0.113.10": ADDRESSES["vps"], "home.example.net": ADDRESSES["home"]})
    assert [s.host for s in steps] == ["vps", "home", "vps", "home"]
    for number, step in enumerate(steps, 1):
        started = time.monotonic()
        done = run(step.host, "bash", "-e", "-o", "pipefail", "-x", "-c", step.script, timeout=STEP_TIMEOUT)
        print(f"--- block {number} on {step.host}: exit {done.returncode} in {time.monotonic() - started:.0f} s\n"
              f"{done.stdout[-3000:]}{done.stderr[-6000:]}")
        assert done.returncode == 0, f"README quickstart block {number} ({step.host}) failed:\n{done.stderr[-6000:]}"

    # "Run your web server on port 8080 at home".
    _checked(run("home", "systemctl", "start", "vpnoffload-lab-web.service"), "start the home site")
    deadline = time.monotonic() + SERVED_TIMEOUT
    answer = (0, "")
    while time.monotonic() < deadline:
        answer = visitor_get()
        if answer == (200, ADDRESSES["visitor"]):
            break
        time.sleep(0.5)
    assert answer == (200, ADDRESSES["visitor"]), (
        f"the visitor was not served from home: {answer}\n"
        + run("vps", "journalctl", "--no-pager", "-n", "60", "-u", "vpnoffload-watch", "-u", "vpnoffload-vps").stdout
        + run("home", "journalctl", "--no-pager", "-n", "30", "-u", "vpnoffload-home").stdout)
    # What the README promises next: `status` on the VPS tells the truth (exit 0: all forwarding).
    deadline = time.monotonic() + 20
    while (status := run("vps", "vpnoffload", "status")).returncode != 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert status.returncode == 0, status.stdout + status.stderr
    # The files the README made secret are secret: the profile at home and the home box's dirs.
    modes = run("home", "stat", "-c", "%a %n", "/etc/vpnoffload", "/etc/vpnoffload/state",
                "/etc/vpnoffload/state/home.ovpn").stdout.split("\n")
    assert [m.split()[0] for m in modes if m] == ["700", "700", "600"], modes
    for unit in ("vpnoffload-vps", "vpnoffload-watch"):
        assert run("vps", "systemctl", "is-active", unit).stdout.strip() == "active", unit
    assert run("home", "systemctl", "is-active", "vpnoffload-home").stdout.strip() == "active"
