"""Fixtures for the Docker Compose lab (compose/): pytest-docker, pointed at it.

pytest-docker starts the lab once per session (``docker_services``: our
``docker_setup`` commands, then ``down -v`` at the end, always). Everything
here skips, never fails, when there is no engine: no docker-compose binary, no
answer from ``docker info`` (run ``scripts/docker-up`` first), or no
pytest-docker. Commands run without a shell; visitors only ever talk to the
lab's own TEST-NET addresses.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import wheelhouse
from tests.prereq import missing

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose" / "docker-compose.yml"
#: Fixed, so scripts/docker-down can remove what a cut-short run left behind.
PROJECT = "vpnoffloadtest"

# The addresses compose/docker-compose.yml gives each container.
VPS_ADDRESS = "192.0.2.200"
HOME_ADDRESS = "192.0.2.210"
VISITOR_ADDRESS = "192.0.2.220"

#: How long the lab may take from `up -d` to serving the visitor (first OpenVPN connect included).
READY_TIMEOUT = 120.0
REQUEST_TIMEOUT = 3


def engine_problem() -> str | None:
    """Why the compose lab cannot run here, or None when it can."""
    try:
        import pytest_docker  # noqa: F401
    except ImportError:
        return "pytest-docker is not installed (pip install -e '.[test]')"
    for tool in ("docker", "docker-compose"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/docker-up installs it)"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 30 s"
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker engine answers ({last}); start one with scripts/docker-up"
    return None


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: str


@dataclass(frozen=True)
class ComposeLab:
    """The running lab: run commands in its containers, fetch pages as the visitor."""

    command: tuple[str, ...]  # e.g. ("docker-compose", "-f", FILE, "-p", PROJECT)

    def compose(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.command, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def exec(self, service: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.compose("exec", "-T", service, *argv, timeout=timeout)

    def logs(self, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", f"--tail={tail}").stdout

    def visitor_get(self, path: str) -> Response | None:
        """GET http://VPS_ADDRESS<path> from the visitor container; None if no answer in time."""
        proc = self.exec("visitor", "curl", "-sS", "-i", "--max-time", str(REQUEST_TIMEOUT),
                         f"http://{VPS_ADDRESS}{path}", timeout=REQUEST_TIMEOUT + 30)
        if proc.returncode != 0 or not proc.stdout.startswith("HTTP/"):
            return None
        head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
        status_line, *header_lines = head.splitlines()
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Response(status=int(status_line.split()[1]), headers=headers, body=body)

    def wait_for(self, what: str, predicate: Callable[[Response | None], bool], path: str,
                 timeout: float) -> Response | None:
        """Poll ``path`` until ``predicate`` holds; fail with the lab's logs after ``timeout``."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.visitor_get(path)
            if predicate(last):
                return last
            time.sleep(0.5)
        pytest.fail(f"{what} within {timeout:g} s; last answer: {last!r}\n--- lab logs\n{self.logs()}",
                    pytrace=False)


# -- pytest-docker's configuration fixtures, overridden for this lab ------------


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    return "docker-compose"  # v1, what Debian 12 ships


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return PROJECT


@pytest.fixture(scope="session")
def lab_wheelhouse() -> Path:
    """Rebuild compose/wheels so the image runs this checkout's code, not a stale wheel
    (once per session: tests.helpers.wheelhouse)."""
    return wheelhouse()


@pytest.fixture(scope="session")
def docker_setup(lab_wheelhouse: Path) -> list[str]:
    # A leftover lab of a cut-short run would hold the fixed addresses: clear it first.
    # `up --wait` (pytest-docker's default) is Compose v2 only; readiness is polled below.
    return ["down -v --remove-orphans -t 3", "up --build -d"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --remove-orphans -t 3"]


@pytest.fixture(scope="module")
def compose_lab(request: pytest.FixtureRequest) -> Iterator[ComposeLab]:
    """The lab, up and forwarding: the visitor already gets home's /whoami through the VPS.

    Taken down as soon as this module is done (pytest-docker's own ``down -v``
    comes only at the end of the session, and the rest of the suite need not
    run beside three idle containers).
    """
    problem = engine_problem()
    if problem:
        missing(problem)
    compose_command = request.getfixturevalue("docker_compose_command")
    request.getfixturevalue("docker_services")  # pytest-docker: up now, down -v at session end
    lab = ComposeLab(command=(*shlex.split(compose_command), "-f", str(COMPOSE_FILE), "-p", PROJECT))
    try:
        lab.wait_for("the visitor did not get home's /whoami through the VPS",
                     lambda r: r is not None and r.status == 200, "/whoami", READY_TIMEOUT)
        yield lab
    finally:
        lab.compose("down", "-v", "--remove-orphans", "-t", "3", timeout=120)
