"""Fixtures for end-to-end tests: a fresh namespace lab per test, and the CLI run inside it.

Every test gets its own lab under a random prefix (see vpnoffload.lab.netns) and the
lab is always destroyed, killing whatever the test started in it (openvpn,
watchdogs, web servers). Without root, openvpn or /dev/net/tun the tests skip.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bench import crowd as crowd_script
from tests.helpers import BEFORE_THE_SWITCH, judge_crowd
from tests.nslib import unique
from tests.prereq import missing, need, tool_problem
from vpnoffload.errors import PrerequisiteError
from vpnoffload.lab.netns import Lab, check_prerequisites, lab_session
from vpnoffload.paths import CONFIG_ENV, STATE_ENV

if TYPE_CHECKING:  # faultlab imports this module
    from tests.e2e.faultlab import Deployment


@contextlib.contextmanager
def _test_lab(prefix: str, ipv6: bool = False, **options: bool) -> Iterator[Lab]:
    try:
        check_prerequisites()
    except PrerequisiteError as exc:
        missing(str(exc))
    from vpnoffload import users

    user_existed = users.exists()
    try:
        with lab_session(unique(prefix), ipv6=ipv6, **options) as made:
            yield made
    finally:
        # `up` creates OpenVPN's system user outside the namespaces; a test that
        # failed before `down` must not leave it behind.
        if not user_existed and users.exists():
            users.delete()


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A created lab (internet, vps, home, visitor, attic), destroyed after the test."""
    with _test_lab("e2e") as made:
        yield made


@pytest.fixture
def lab6() -> Iterator[Lab]:
    """The same lab with IPv6 (2001:db8::/32 documentation addresses) on every link."""
    with _test_lab("e2e6", ipv6=True) as made:
        yield made


@pytest.fixture
def lab2vps() -> Iterator[Lab]:
    """The lab with a second VPS, vps2 at 203.0.113.20 (its cable: to-vps2)."""
    with _test_lab("e2e2v", second_vps=True) as made:
        yield made


@pytest.fixture
def nat_lab() -> Iterator[Lab]:
    """The e2e lab with the VPS behind the router's 1:1 NAT (see vpnoffload.lab.netns)."""
    with _test_lab("nat", one_to_one_nat=True) as made:
        yield made


@pytest.fixture
def healthy(dep: Deployment) -> Deployment:
    """The module's ``dep`` fixture (a tests.e2e.faultlab Deployment), served from home with
    status exit 0: each test undoes its fault; a fault that lasts shows up here, in the next test."""
    from tests.e2e.faultlab import healthy_again

    healthy_again(dep, limit=30)
    return dep


def cli_argv(*args: str) -> list[str]:
    """The argv that runs this checkout's vpnoffload CLI."""
    return [sys.executable, "-m", "vpnoffload", *args]


def run_cli(lab: Lab, host: str, *args: str, config: Path | str | None = None,
            state: Path | str | None = None, check: bool = True, timeout: float = 60,
            env: dict[str, str] | None = None):
    """Run ``vpnoffload ARGS`` in ``host``'s namespace and return the CompletedProcess.

    The config file and state directory are passed through the environment
    (VPNOFFLOAD_CONFIG / VPNOFFLOAD_STATE_DIR), which works wherever the CLI
    puts its global options. Output is captured via files, so daemons the CLI
    leaves running do not hold this call. With ``check`` a non-zero exit fails
    the test and shows both streams.
    """
    env = dict(os.environ if env is None else env)
    if config is not None:
        env[CONFIG_ENV] = str(config)
    if state is not None:
        env[STATE_ENV] = str(state)
    result = lab.exec(host, *cli_argv(*args), check=False, timeout=timeout, env=env)
    if check and result.returncode != 0:
        pytest.fail(f"vpnoffload {' '.join(args)} in {host} exited {result.returncode}\n"
                    f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}", pytrace=False)
    return result


@pytest.fixture
def vpnoffload_cmd(lab: Lab) -> Callable[..., object]:
    """``run_cli`` bound to this test's lab: ``vpnoffload_cmd("vps", "up", "vps", config=cfg)``."""
    return functools.partial(run_cli, lab)


# --------------------------------------------------------------------------
# The two sites of a deployment, and the user's workflow on them


TUNNEL_SUBNET = "198.51.100.0/24"
HOME_TUNNEL_ADDRESS = "198.51.100.2"


@contextlib.contextmanager
def _site_dirs() -> Iterator[tuple[Path, Path]]:
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="vpnoffload-e2e-"))
    os.chmod(root, 0o755)
    vps, home = root / "vps", root / "home"
    vps.mkdir(mode=0o755)
    home.mkdir(mode=0o755)
    try:
        yield vps, home
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sites() -> Iterator[tuple[Path, Path]]:
    """Config dirs for the VPS and the home box, world-traversable like /etc/vpnoffload.

    OpenVPN drops to an unprivileged user and must then still read the CRL and
    per-home files, so the directories cannot be pytest's 0700 tmp dirs.
    """
    with _site_dirs() as made:
        yield made


@pytest.fixture(scope="module")
def module_lab() -> Iterator[Lab]:
    """One lab shared by the tests of a module: each test must leave it as it found it
    (the fault catalogue and the truth tests undo every fault they make)."""
    with _test_lab("e2m") as made:
        yield made


@pytest.fixture(scope="module")
def module_sites() -> Iterator[tuple[Path, Path]]:
    """``sites`` for a ``module_lab``."""
    with _site_dirs() as made:
        yield made


def cli(lab: Lab, host: str, site: Path, *args: str, check: bool = True, timeout: float = 90):
    """``vpnoffload -c SITE/vpnoffload.toml ARGS`` in ``host``; fails the test on a non-zero exit if ``check``."""
    proc = lab.exec(host, *cli_argv("-c", str(site / "vpnoffload.toml"), *args), check=False, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"vpnoffload {' '.join(args)} on {host} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    return proc


def configure(lab: Lab, vps_site: Path, home_site: Path, *services: list[str], init: tuple[str, ...] = ()) -> None:
    """What a user does on the VPS (init with ``init``'s further options, services, the home
    profile) and copies to home."""
    import shutil

    cli(lab, "vps", vps_site, "init", "--vps-address", lab.vps_address, "--tunnel-subnet", TUNNEL_SUBNET, *init)
    for service in services:
        cli(lab, "vps", vps_site, "service", "add", *service)
    (home_site / "state").mkdir(mode=0o755)
    cli(lab, "vps", vps_site, "render", "home", "--out", str(home_site / "state"))
    shutil.copy(vps_site / "vpnoffload.toml", home_site / "vpnoffload.toml")


def openvpn_pids(lab: Lab, host: str) -> list[str]:
    """Pids of OpenVPN processes left in ``host``'s namespace."""
    import subprocess

    out = subprocess.run(["ip", "netns", "pids", lab.namespace(host)], capture_output=True, text=True, check=False)
    found = []
    for pid in out.stdout.split():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "openvpn":
                found.append(pid)
        except OSError:
            continue
    return found


def crowd(lab: Lab, want: str, since: float, limit: float = 15, before: str = BEFORE_THE_SWITCH) -> float:
    """Visitors asking 5x a second on new connections: seconds from ``since`` until the
    first reply matching ``want`` (regex over "STATUS BODY") reached a visitor; the
    replies are judged by :func:`tests.helpers.judge_crowd` (nothing else after it, no
    second-long reply, nothing but ``before`` or ``want`` before it)."""
    results = crowd_script.run(lab, want, 0.2, limit, 5, host_header="blog.example.org")
    return judge_crowd(results, want, before, limit) - since


def prompt_crowd(lab: Lab, want: str, since: float, limit: float, prompt: float, every: float = 0.05) -> float | None:
    """A crowd (a new connection every ``every`` s) until 5 in a row match ``want``: seconds from
    ``since`` to the first matching reply that came within ``prompt`` s of its visitor's connect
    (None: no prompt one)."""
    pattern = re.compile(want, re.S)
    prompt_ones = [done for started, done, reply in crowd_script.run(lab, want, every, limit, 5,
                                                                    host_header="blog.example.org")
                   if pattern.search(reply) and done - started <= prompt]
    return min(prompt_ones) - since if prompt_ones else None


#: ufw keeps its rules and defaults in global files, shared by every namespace.
UFW_FILES = (Path("/etc/ufw"), Path("/etc/default/ufw"))


@pytest.fixture
def ufw_files(tmp_path: Path) -> Iterator[None]:
    """ufw's rules and defaults are global files: save them, and put them back exactly afterwards."""
    need(tool_problem("ufw", "apt-get install ufw"))
    saved = tmp_path / "ufw-saved"
    saved.mkdir()
    shutil.copytree(UFW_FILES[0], saved / "etc-ufw", symlinks=True)
    shutil.copy2(UFW_FILES[1], saved / "default-ufw")
    try:
        yield
    finally:
        shutil.rmtree(UFW_FILES[0])
        shutil.copytree(saved / "etc-ufw", UFW_FILES[0], symlinks=True)
        shutil.copy2(saved / "default-ufw", UFW_FILES[1])
