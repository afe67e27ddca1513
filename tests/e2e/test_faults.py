"""Issue 17, item 2 (part): faults during setup, in the namespace lab.

- ``up home`` and ``up vps`` get SIGTERM halfway (``systemctl stop``, a reboot):
  they roll back what they did, exit 130, and leave the host exactly as before;
- the disk under the state directory is full during ``service add``, ``pki issue``
  and ``up vps``: one clear line, a non-zero exit, nothing half-written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import cli, cli_argv, configure
from tests.helpers import wait_until
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot, snapshot_diff

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def _term_when(proc: subprocess.Popen, out: Path, marker: str, limit: float = 30.0) -> str:
    """SIGTERM ``proc`` as soon as its output shows ``marker``; its whole output once it exited."""
    deadline = time.monotonic() + limit
    while marker not in out.read_text(errors="replace"):
        assert proc.poll() is None, f"exited before {marker!r}:\n{out.read_text()}"
        assert time.monotonic() < deadline, f"no {marker!r} within {limit} s:\n{out.read_text()}"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    return out.read_text(errors="replace")


def test_sigterm_halfway_through_up_rolls_back_on_both_ends(lab: Lab, sites: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    vps_site, home_site = sites
    configure(lab, vps_site, home_site, ["web", "--listen", "80", "--target", "8080"])
    before = {host: snapshot(lab, host) for host in ("vps", "home")}

    # up home with the VPS not up yet: it is waiting for the tunnel when the SIGTERM comes.
    out = tmp_path / "up-home.log"
    with out.open("w") as log:
        proc = lab.popen("home", *cli_argv("-c", str(home_site / "vpnoffload.toml"), "up", "home"),
                         stdout=log, stderr=subprocess.STDOUT)
    text = _term_when(proc, out, "start OpenVPN client")
    time.sleep(0)  # (the kill happened while the client was still connecting)
    assert proc.returncode == 130, text
    assert "interrupted" in text
    after = snapshot(lab, "home")
    assert after == before["home"], snapshot_diff(before["home"], after)

    # up vps: SIGTERM once it starts applying (the OpenVPN server takes ~1 s to be ready).
    out = tmp_path / "up-vps.log"
    with out.open("w") as log:
        proc = lab.popen("vps", *cli_argv("-c", str(vps_site / "vpnoffload.toml"), "up", "vps"),
                         stdout=log, stderr=subprocess.STDOUT)
    text = _term_when(proc, out, "start OpenVPN server")
    if proc.returncode == 0:  # it beat the signal: then down must still restore everything
        cli(lab, "vps", vps_site, "down", "vps")
    else:
        assert proc.returncode == 130, text
    after = snapshot(lab, "vps")
    assert after == before["vps"], snapshot_diff(before["vps"], after)
    # ...and the interrupted ends come up cleanly afterwards.
    # Served from home, through the tunnel: "nothing answered" or any error is a failure.
    lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080", "--name", "home")
    assert lab.wait_tcp("home", "127.0.0.1", 8080)
    cli(lab, "vps", vps_site, "up", "vps")
    cli(lab, "home", home_site, "up", "home")
    wait_until("the visitor served from home after the interrupted ups",
               lambda: ((reply := lab.http_get("visitor", f"http://{lab.vps_address}/", timeout=3))[0] == 200
                        and "served from home" in reply[1], reply), limit=20)
    cli(lab, "home", home_site, "down", "home")
    cli(lab, "vps", vps_site, "down", "vps")


def _in_full_disk(lab: Lab, host: str, state: Path, *commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Run ``commands`` in ``host`` with a full tmpfs mounted over ``state`` (a private mount
    namespace: the mount vanishes with the commands)."""
    script = ["set -e", f"mount -t tmpfs -o size=4m tmpfs {state}",
              f"cp -a {state}.seed/. {state}/",
              f"dd if=/dev/zero of={state}/filler bs=4k 2>/dev/null || true", "set +e"]
    for i, argv in enumerate(commands):
        script.append(f"({' '.join(argv)}) > {state}.out{i} 2>&1; echo $? > {state}.rc{i}")
    script.append(f"cp -a {state}/. {state}.after/ 2>/dev/null || true; rm -f {state}.after/filler")
    lab.exec(host, "unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script), timeout=120)
    results = []
    for i, argv in enumerate(commands):
        results.append(subprocess.CompletedProcess(argv, int(Path(f"{state}.rc{i}").read_text()),
                                                   Path(f"{state}.out{i}").read_text(), ""))
    return results


def tree(path: Path) -> dict[str, bytes]:
    """Every file's bytes, but the (empty) lock files a command takes: they are no half-written state."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.endswith("lock")}


def test_full_disk_under_the_state_dir_is_a_clear_error_and_changes_nothing(lab: Lab, sites: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    vps_site, _ = sites
    cli(lab, "vps", vps_site, "init", "--vps-address", lab.vps_address, "--tunnel-subnet", "198.51.100.0/24")
    cli(lab, "vps", vps_site, "service", "add", "web", "--listen", "80", "--target", "8080")
    # The config lives beside the state dir; put it inside the full disk too.
    state = vps_site / "state"
    config = state / "vpnoffload.toml"
    (vps_site / "vpnoffload.toml").rename(config)
    seed = Path(f"{state}.seed")
    state.rename(seed)
    state.mkdir(mode=0o755)
    Path(f"{state}.after").mkdir(mode=0o755)
    before = tree(seed)
    before_snapshot = snapshot(lab, "vps")

    base = [*cli_argv("-c", str(config), "--state-dir", str(state))]
    results = _in_full_disk(lab, "vps", state,
                            [*base, "service", "add", "blog", "--listen", "81", "--target", "8081"],
                            [*base, "pki", "issue", "attic"],
                            [*base, "up", "vps"])
    for result in results:
        text = result.stdout.strip()
        print(f"[full disk] {' '.join(result.args[-4:])}: exit {result.returncode}: {text}")
        assert result.returncode != 0, f"{result.args[-3:]} succeeded on a full disk:\n{text}"
        assert "Traceback" not in text and len(text.splitlines()) == 1, text
        assert "No space left on device" in text or "no space" in text.lower(), text
    after = tree(Path(f"{state}.after"))
    assert after == before, sorted(set(after) ^ set(before)) or [k for k in after if after[k] != before.get(k)]
    assert snapshot(lab, "vps") == before_snapshot
