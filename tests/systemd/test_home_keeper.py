"""The home keeper under systemd: ``vpnoffload-home-keeper.service`` puts the home box's own
firewall openings back after the home's reload, in the systemd lab (systemd as PID 1).

``install-service home`` installs and starts it beside ``vpnoffload-home``; it runs
the keeper's host-firewall watch only (systemd runs the OpenVPN client). In order:

1. with ufw enabled at home: the keeper unit runs, hardened, and ``status`` on the home box
   says so (text and ``--json``);
2. ``ufw reload`` at home while a visitor is served: ours still in ufw, served again within 5 s;
3. home's end stopped (the keeper stops with it), ufw disabled, firewalld started at home, the
   end started again (the keeper comes with it): ``firewall-cmd --reload`` wipes the runtime
   rich rule, the keeper has it back and the visitor is served within 5 s, and ``status`` says
   the keeper put it back;
4. ``systemctl stop vpnoffload-home`` runs ``down home``: the keeper stopped cleanly, firewalld's
   runtime as before the end was started.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.systemd.conftest import (HOME_UNIT, KEEPER_UNIT, RECOVERY_TIMEOUT, VPS_UNIT, SystemdLab,
                                    install_services, served_from_home, wait_firewalld)

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.timeout(600)]

#: The home's openings back, and the visitor served again, at most this long after the reload returned.
BACK_WITHIN = 5.0
#: The service's target port at home (tests/systemd/conftest.py adds web 80 -> 8080).
TARGET_PORT = "8080"

FIREWALLD_BEFORE: dict[str, str] = {}


def active(lab: SystemdLab, unit: str) -> str:
    return lab.systemctl("home", "is-active", unit).stdout.strip()


def wait_active(lab: SystemdLab, unit: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while active(lab, unit) != "active":
        if time.monotonic() > deadline:
            pytest.fail(f"{unit} on home not active within {timeout:g} s:\n{lab.journal('home', unit)}",
                        pytrace=False)
        time.sleep(0.3)


def served_again_within(lab: SystemdLab, started: float, what: str) -> float:
    """Seconds from ``started`` until the visitor is served from home (fails after BACK_WITHIN)."""
    while time.monotonic() - started < BACK_WITHIN:
        if served_from_home(lab.visitor_get("/whoami")):
            return time.monotonic() - started
        time.sleep(0.2)
    pytest.fail(f"after {what} at home: the visitor not served within {BACK_WITHIN:g} s\n"
                f"{lab.journal('home', KEEPER_UNIT, lines=40)}", pytrace=False)


def home_status(lab: SystemdLab) -> tuple[str, dict]:
    text = lab.exec("home", "vpnoffload", "status", timeout=60).stdout
    data = json.loads(lab.exec("home", "vpnoffload", "status", "--json", timeout=60).stdout)
    return text, data["homes"][0]


def rich_rules(lab: SystemdLab) -> str:
    return lab.exec("home", "firewall-cmd", "--list-rich-rules", timeout=60).stdout


@pytest.fixture(scope="module")
def with_ufw_at_home(systemd_lab: SystemdLab) -> SystemdLab:
    lab = systemd_lab
    for argv in (("ufw", "--force", "enable"), ("ufw", "reload")):
        lab.exec("home", *argv, timeout=60, check=True)
    install_services(lab)
    lab.wait_for("the visitor served from home (ufw at home)", served_from_home, "/whoami", RECOVERY_TIMEOUT)
    wait_active(lab, KEEPER_UNIT)
    return lab


def test_install_service_home_runs_the_keeper_and_status_says_so(with_ufw_at_home: SystemdLab) -> None:
    lab = with_ufw_at_home
    assert lab.systemctl("home", "is-enabled", KEEPER_UNIT).stdout.strip() == "enabled"
    assert lab.show("home", KEEPER_UNIT, "CapabilityBoundingSet") == "cap_net_admin cap_net_raw"
    assert lab.show("home", KEEPER_UNIT, "NoNewPrivileges") == "yes"
    pid = lab.show("home", KEEPER_UNIT, "MainPID")
    text, home = home_status(lab)
    assert f"keeper running (pid {pid}, under systemd)" in text, text
    assert home["keeper_pid"] == int(pid) and home["keeper_mode"] == "firewall", home
    assert "ufw" in " ".join(home["host_firewall"]["found"]), home
    journal = lab.journal("home", KEEPER_UNIT)
    assert "systemd runs the OpenVPN client" in journal and "up home" not in journal.split("Started")[-1], journal


def test_ufw_reload_at_home_while_a_visitor_is_served(with_ufw_at_home: SystemdLab,
                                                      capsys: pytest.CaptureFixture) -> None:
    lab = with_ufw_at_home
    assert served_from_home(lab.visitor_get("/whoami"))
    pid = lab.show("home", KEEPER_UNIT, "MainPID")
    lab.exec("home", "ufw", "reload", timeout=60, check=True)
    took = served_again_within(lab, time.monotonic(), "ufw reload")
    with capsys.disabled():
        print(f"\n[ufw reload at home] served again {took:.1f} s after it returned", flush=True)
    assert "comment 'vpnoffload'" in lab.exec("home", "ufw", "show", "added", check=True).stdout
    assert lab.show("home", KEEPER_UNIT, "MainPID") == pid  # the keeper kept running through it


def test_firewalld_reload_at_home_is_undone_by_the_keeper(with_ufw_at_home: SystemdLab,
                                                          capsys: pytest.CaptureFixture) -> None:
    lab = with_ufw_at_home
    assert lab.systemctl("home", "stop", HOME_UNIT).returncode == 0, lab.journal("home", HOME_UNIT)
    assert active(lab, KEEPER_UNIT) == "inactive"  # PartOf=: it went with the end
    lab.exec("home", "ufw", "--force", "disable", timeout=60, check=True)
    assert lab.systemctl("home", "start", "firewalld.service").returncode == 0, lab.journal("home", "firewalld")
    wait_firewalld(lab, "home")
    FIREWALLD_BEFORE["rich"] = rich_rules(lab)
    assert lab.systemctl("home", "start", HOME_UNIT).returncode == 0, lab.journal("home", HOME_UNIT)
    wait_active(lab, KEEPER_UNIT)  # wanted by the end: it comes with it
    lab.wait_for("the visitor served from home (firewalld at home)", served_from_home, "/whoami",
                 RECOVERY_TIMEOUT)
    assert f'port port="{TARGET_PORT}"' in rich_rules(lab), rich_rules(lab)

    done = lab.exec("home", "firewall-cmd", "--reload", timeout=120)
    reloaded = time.monotonic()
    assert done.returncode == 0, done.stdout + done.stderr
    took = served_again_within(lab, reloaded, "firewall-cmd --reload")
    with capsys.disabled():
        print(f"\n[firewall-cmd --reload at home] served again {took:.1f} s after it returned", flush=True)
    assert f'port port="{TARGET_PORT}"' in rich_rules(lab), rich_rules(lab)
    assert "reopened in firewalld zone" in lab.journal("home", KEEPER_UNIT, lines=80)
    text, home = home_status(lab)
    assert "reopened by the home keeper after a host reload" in text and "keeper running" in text, text
    assert home["host_firewall"]["reopened"] >= 1, home


def test_stopping_the_home_end_stops_the_keeper_and_leaves_firewalld_as_before(
        with_ufw_at_home: SystemdLab) -> None:
    lab = with_ufw_at_home
    assert lab.systemctl("home", "stop", HOME_UNIT).returncode == 0, lab.journal("home", HOME_UNIT)
    assert active(lab, KEEPER_UNIT) == "inactive"  # stopped, not failed
    assert lab.show("home", KEEPER_UNIT, "Result") == "success"
    assert rich_rules(lab) == FIREWALLD_BEFORE["rich"]
    # `down home` removed the record: no keeper, and nothing of the end is reported as set up.
    data = json.loads(lab.exec("home", "vpnoffload", "status", "--json", timeout=60).stdout)
    assert all(h["keeper_pid"] is None for h in data.get("homes", [])), data
    assert "keeper running" not in lab.exec("home", "vpnoffload", "status", timeout=60).stdout
    lab.systemctl("home", "stop", "firewalld.service")
    lab.systemctl("vps", "stop", VPS_UNIT)
