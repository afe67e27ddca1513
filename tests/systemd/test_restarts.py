"""What systemd brings back, in the systemd lab (systemd as PID 1): a killed home OpenVPN
client, and the watchdog after the VPS end was stopped and started.

Debian's ``openvpn-client@`` has no ``Restart=``. In order:

1. both ends installed with ``install-service``, a visitor served from home;
2. the home's OpenVPN client SIGKILLed while the visitor is served: the home keeper asks
   systemd to restart ``vpnoffload-home`` (its ``down home`` + ``up home``), once; the
   visitor is served from home again within the budget, and ``status`` at home says the
   tunnel is up with the new keeper running;
3. ``systemctl stop`` then ``start`` of ``vpnoffload-vps``: the watchdog (stopped with it,
   ``PartOf=``) is started with it again, and the visitor is served from home.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.budget import budget
from tests.systemd.conftest import (HOME, HOME_UNIT, KEEPER_UNIT, RECOVERY_TIMEOUT, VPS_UNIT, WATCH_UNIT,
                                    SystemdLab, install_services, served_from_home)

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.timeout(600)]

CLIENT_UNIT = f"openvpn-client@vpnoffload-{HOME}.service"


def wait_active(lab: SystemdLab, host: str, unit: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while lab.systemctl(host, "is-active", unit).stdout.strip() != "active":
        if time.monotonic() > deadline:
            pytest.fail(f"{unit} on {host} not active within {timeout:g} s:\n{lab.journal(host, unit)}",
                        pytrace=False)
        time.sleep(0.3)


@pytest.fixture(scope="module")
def installed(systemd_lab: SystemdLab) -> SystemdLab:
    lab = systemd_lab
    install_services(lab)
    lab.wait_for("the visitor served from home", served_from_home, "/whoami", RECOVERY_TIMEOUT)
    wait_active(lab, "home", KEEPER_UNIT)
    wait_active(lab, "vps", WATCH_UNIT)
    return lab


def test_a_killed_home_client_comes_back_with_its_routes(installed: SystemdLab,
                                                         capsys: pytest.CaptureFixture) -> None:
    lab = installed
    assert served_from_home(lab.visitor_get("/whoami"))
    client_pid = lab.show("home", CLIENT_UNIT, "MainPID")
    keeper_pid = lab.show("home", KEEPER_UNIT, "MainPID")
    assert client_pid not in ("", "0") and keeper_pid not in ("", "0")
    before = lab.snapshot("home")
    lab.exec("home", "kill", "-KILL", client_pid, check=True)
    killed = time.monotonic()
    within = budget().restarted
    while not served_from_home(lab.visitor_get("/whoami")) or time.monotonic() - killed < 1.0:
        if time.monotonic() - killed > within:
            pytest.fail(f"the visitor not served from home {within:g} s after the client was killed\n"
                        f"{lab.journal('home', KEEPER_UNIT, HOME_UNIT, CLIENT_UNIT, lines=60)}", pytrace=False)
        time.sleep(0.3)
    took = time.monotonic() - killed
    with capsys.disabled():
        print(f"\n[home client SIGKILLed] served from home again {took:.1f} s later", flush=True)

    # systemd's restart of the end: a new client, a new keeper, and the keeper asked once.
    wait_active(lab, "home", KEEPER_UNIT)
    new_client, new_keeper = lab.show("home", CLIENT_UNIT, "MainPID"), lab.show("home", KEEPER_UNIT, "MainPID")
    assert new_client not in ("", "0", client_pid) and new_keeper not in ("", "0", keeper_pid)
    journal = lab.journal("home", KEEPER_UNIT, lines=200)
    assert journal.count("asked systemd to restart vpnoffload-home.service") == 1, journal
    assert "running up home" not in journal  # the daemon keeper's way: never under systemd
    assert lab.journal("home", HOME_UNIT, lines=200).count("Stopped vpnoffload") >= 1
    # The new keeper saw the client running and dropped the backoff.
    deadline = time.monotonic() + 10
    while lab.exec("home", "test", "-e", f"/etc/vpnoffload/state/run/home-keeper-{HOME}.restart").returncode == 0:
        assert time.monotonic() < deadline, lab.journal("home", KEEPER_UNIT, lines=40)
        time.sleep(0.3)

    # status at home: the tunnel up (exit 0), the new keeper running under systemd.
    done = lab.exec("home", "vpnoffload", "status", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tunnel up" in done.stdout and f"keeper running (pid {new_keeper}, under systemd)" in done.stdout, \
        done.stdout
    data = json.loads(lab.exec("home", "vpnoffload", "status", "--json", timeout=60).stdout)
    assert all(t["up"] for t in data["home"]["tunnels"] if t["set_up"]), data
    assert data["homes"][0]["keeper_pid"] == int(new_keeper), data
    assert data["homes"][0]["keeper_restarts_unit"] == HOME_UNIT, data
    assert f"has systemd restart {HOME_UNIT} when the OpenVPN client is gone" in done.stdout, done.stdout
    # The policy routing is back exactly as `up home` made it.
    after = lab.snapshot("home")
    for key in ("rules", "routes", "addresses"):
        assert after[key] == before[key], (key, before[key], after[key])


def test_stopping_and_starting_the_vps_end_brings_the_watchdog_back(installed: SystemdLab) -> None:
    lab = installed
    assert lab.systemctl("vps", "stop", VPS_UNIT).returncode == 0, lab.journal("vps", VPS_UNIT)
    assert lab.systemctl("vps", "is-active", WATCH_UNIT).stdout.strip() == "inactive"  # PartOf=
    assert lab.systemctl("vps", "start", VPS_UNIT).returncode == 0, lab.journal("vps", VPS_UNIT)
    wait_active(lab, "vps", WATCH_UNIT, timeout=30)  # WantedBy=vpnoffload-vps.service
    lab.wait_for("the visitor served from home after the VPS end's restart", served_from_home, "/whoami",
                 RECOVERY_TIMEOUT)
    lab.systemctl("home", "stop", HOME_UNIT)
    lab.systemctl("vps", "stop", VPS_UNIT)
