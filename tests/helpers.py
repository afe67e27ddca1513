"""Helpers shared by test modules of every layer (no root needed to import them).

Test modules import helpers from here (or tests/nslib.py, tests/fakes.py,
tests/e2e/conftest.py for the namespace lab), never from each other.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

#: Exactly this value rewrites golden files; anything else compares.
UPDATE_GOLDEN_ENV = "UPDATE_GOLDEN"


def wait_until(what: str, check: Callable[[], tuple[bool, T]], limit: float, interval: float = 0.1) -> T:
    """Call ``check`` (-> (done, last seen)) until it is done; fail the test naming ``what`` and
    the last thing seen when ``limit`` seconds pass. Returns the last seen value.

    A wait on a condition, never a fixed sleep: fast when the machine is fast, and only
    ``limit`` (generous) says when to give up.
    """
    deadline = time.monotonic() + limit
    while True:
        done, last = check()
        if done:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {limit} s; last: {last!r}", pytrace=False)
        time.sleep(interval)


def seconds_until(what: str, check: Callable[[], tuple[bool, object]], limit: float, interval: float = 0.2) -> float:
    """Like :func:`wait_until`, but returns how many seconds it took (for a test's report)."""
    start = time.monotonic()
    wait_until(what, check, limit, interval)
    return time.monotonic() - start


#: What a visitor may get before the change a crowd waits for: no reply (a connection that
#: hung or was reset while the switch happened) or the friendly page (the state a recovery
#: leaves). Never an error page, another site, or a reply from somewhere else.
BEFORE_THE_SWITCH = r"^(0 |503 )"


def judge_crowd(results: list[list], want: str, before: str = BEFORE_THE_SWITCH, limit: float = 15) -> float:
    """The wall-clock time the first reply matching ``want`` reached a visitor, from a crowd's
    ``[started, finished, "STATUS BODY"]`` results. Fails the test when none matched, when a
    request started after it got anything else or took a second or more, or when one started
    up to then got something matching neither ``want`` nor ``before``."""
    pattern = re.compile(want, re.S)
    firsts = [done for _, done, reply in results if pattern.search(reply)]
    if not firsts:
        pytest.fail(f"no reply matching {want!r} within {limit} s: {[r[2][:40] for r in results]}", pytrace=False)
    first = min(firsts)
    earlier = [r for r in results if r[0] <= first and not pattern.search(r[2])]
    odd = [r for r in earlier if not re.match(before, r[2], re.S)]
    assert not odd, f"before the first {want!r} visitors got neither that nor {before!r}: {odd}"
    bad = [r for r in results if r[0] > first and (not pattern.search(r[2]) or r[1] - r[0] >= 1.0)]
    assert not bad, bad
    return first


#: Where the unit tests' golden files live.
GOLDEN = Path(__file__).resolve().parent / "unit" / "golden"


def golden(name: str, text: str, directory: Path = GOLDEN) -> None:
    """Compare ``text`` with the golden file ``directory/name``; ``UPDATE_GOLDEN=1`` (exactly
    that: not any non-empty value) rewrites it, to review with ``git diff``."""
    path = directory / name
    if os.environ.get(UPDATE_GOLDEN_ENV) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with {UPDATE_GOLDEN_ENV}=1 once and review the diff"
    assert text == path.read_text(), f"{path.name} differs from the golden file (UPDATE_GOLDEN=1 rewrites it)"


def self_signed(name: str, cert: Path, key: Path) -> None:
    """Write a self-signed EC certificate for ``name`` (valid for a day) and its key (PEM)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key.chmod(0o600)


# -- one home box behind several VPSes (issue 25)


def home_box_config(vps: str, subnet: str, port: int = 1194) -> str:
    """A VPS's config as a home box gets it: that VPS, its tunnel subnet, home at .2, one web service."""
    home = IPv4Network(subnet).network_address + 2
    return (f'[vps]\naddress = "{vps}"\n[tunnel]\nsubnet = "{subnet}"\nport = {port}\n'
            f'[homes.home]\naddress = "{home}"\n[services.web]\nlisten = "80"\ntarget = "8080"\n')


def write_home_box_config(path: Path, text: str) -> Path:
    """Put a config on a home box at ``path``, with ``state/home.ovpn`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    (path.parent / "state").mkdir(exist_ok=True)
    (path.parent / "state" / "home.ovpn").write_text("client\n")
    return path


# ------------------------------------------------------------------ Prometheus rules and scrapes

#: The alert rules and the Grafana dashboard the fleet collection ships.
MONITORING = Path(__file__).resolve().parent.parent / "ansible/ansible_collections/vpnoffload/fleet/files/monitoring"
RULES = MONITORING / "vpnoffload.rules.yml"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of a Prometheus text exposition; a line that is
    neither a comment nor a sample fails the test (the server must emit only valid lines)."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        found.append((name, dict(_LABEL.findall(labels or "")), float(value)))
    return found


def firing_test(samples: list[tuple[str, dict[str, str], float]], firing: list[dict[str, str]],
                now: float, instance: str = "vps-a", up: int = 1) -> dict:
    """A ``promtool test rules`` file (JSON is YAML) for the shipped rules: ``samples`` (one scrape at
    wall time ``now``) as a target's series held for 10 minutes, and exactly the alerts ``firing``
    (their labels, ``alertname`` included) at 5 minutes. A ``*_timestamp_seconds`` sample moves
    with the test's clock, as a live watchdog's does. ``up``: 0 for a scrape that got no answer."""
    base = {"job": "vpnoffload", "instance": instance}
    series = [{"series": _series("up", base), "values": f"{up}x10"}]
    for name, labels, value in samples:
        moving = name.endswith("_timestamp_seconds")
        values = f"{value - now:g}+60x10" if moving else f"{value:g}x10"
        series.append({"series": _series(name, {**labels, **base}), "values": values})
    expect = [{"labels": _series("ALERTS", {**labels, **base, "alertstate": "firing"}), "value": 1}
              for labels in firing]
    return {"rule_files": [str(RULES)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [
                {"eval_time": "5m", "expr": 'ALERTS{alertstate="firing"}', "exp_samples": expect}]}]}


def _series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def promtool(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    """Run ``promtool ARGS``: (exit status, its output). A missing promtool is a missing prerequisite."""
    import subprocess

    from tests.prereq import need, tool_problem

    need(tool_problem("promtool", "apt-get install --no-install-recommends prometheus"))
    proc = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    return proc.returncode, proc.stdout + proc.stderr


def run_rule_test(path: Path, test: dict) -> tuple[int, str]:
    """Write ``test`` (see :func:`firing_test`) to ``path`` and run ``promtool test rules`` on it."""
    import json

    path.write_text(json.dumps(test, indent=1))
    return promtool("test", "rules", str(path))


#: The wheelhouse the Docker labs' images install vpnoffload from (compose/build-wheels).
BUILD_WHEELS = Path(__file__).resolve().parent.parent / "compose" / "build-wheels"
#: The build tools pip needs to build vpnoffload from its source (pyproject's build-system):
#: the quickstart image installs from the source tarball, offline.
BUILD_TOOLS = ("setuptools>=77", "wheel")


@functools.cache
def wheelhouse() -> Path:
    """Run compose/build-wheels once per pytest session, add the build tools, return compose/wheels.

    The compose lab, each systemd module and the quickstart image all need this checkout's
    wheel; the tree does not change during a run, so one build serves them all (each build
    is a pip wheel of the project, ~6-10 s on the CI machine). The build tools are in it from
    the start, so the directory (and with it the systemd image's tag, a hash of its wheels)
    is the same for every module: the image is built once per run, not again after the
    quickstart added them. Fails the test when either step fails.
    """
    proc = subprocess.run([str(BUILD_WHEELS)], capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"compose/build-wheels failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    wheels = BUILD_WHEELS.parent / "wheels"
    if not list(wheels.glob("setuptools-*.whl")) or not list(wheels.glob("wheel-*.whl")):
        python = os.environ.get("PYTHON") or str(BUILD_WHEELS.parent.parent / ".venv" / "bin" / "python")
        proc = subprocess.run([python, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest",
                               str(wheels), *BUILD_TOOLS], capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            pytest.fail(f"pip download of {' '.join(BUILD_TOOLS)} failed:\n{proc.stdout}\n{proc.stderr}",
                        pytrace=False)
    return wheels
