"""``vpnoffload install-service`` under a real systemd (PID 1 in Debian containers).

One lab for the module, the tests in order, each setting up the state it needs
(home up or down) so a failure in one does not hide the next:

1. install-service on both ends serves the visitor from home; a reboot of
   both (``docker restart``: systemd shuts down cleanly, running every
   ExecStop=) and a power cut at home (``docker kill``) come back by themselves;
2. the watchdog (Type=notify) is "started" only after its first round of
   checks has put the page in place;
3. ``systemctl restart vpnoffload-watch`` during an outage: every visitor gets the page;
4. a hung watchdog (SIGSTOP) is killed by WatchdogSec= (3 s from a runtime drop-in here) and restarted, the page staying up;
5. ``systemctl stop`` of the boot units runs ``down``: rules, routes,
   addresses, sysctls, the OpenVPN user and processes as before install-service.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.systemd.conftest import HOME, VPS_ADDRESS, SystemdLab, docker, snapshot_diff
from tests.systemd.conftest import (FAILOVER_TIMEOUT, HOME_UNIT, RECOVERY_TIMEOUT, VPS_UNIT, WATCH_UNIT, home_down,
                                     home_up, on_the_page, served_from_home)

# The first test also builds the image (cached by the hash of its inputs) and boots the lab.
pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.timeout(600)]

SERVER_UNIT, CLIENT_UNIT = "openvpn-server@vpnoffload.service", f"openvpn-client@vpnoffload-{HOME}.service"
#: WatchdogSec=10 in the unit, SIGABRT, RestartSec=2 and the watchdog's own start.
HANG_RESTART_TIMEOUT = 30.0
#: The hung-watchdog test lowers WatchdogSec= to this with a runtime drop-in (its rounds take well
#: under a second and each one pings systemd), so the hang is noticed in 3 s instead of the unit's 10.
HANG_WATCHDOG_SEC = 3
HANG_DROP_IN = f"/run/systemd/system/{WATCH_UNIT}.d/50-test-hang.conf"

#: Snapshots taken before install-service, for the last test.
BEFORE: dict[str, dict[str, str]] = {}


def active(lab: SystemdLab, host: str, *units: str) -> list[str]:
    return lab.systemctl(host, "is-active", *units).stdout.split()


def wait_active(lab: SystemdLab, host: str, unit: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while active(lab, host, unit) != ["active"]:
        if time.monotonic() > deadline:
            pytest.fail(f"{unit} on {host} not active within {timeout:g} s\n{lab.diagnostics()}", pytrace=False)
        time.sleep(0.3)


@pytest.fixture(scope="module")
def installed(systemd_lab: SystemdLab) -> SystemdLab:
    lab = systemd_lab
    for host in ("vps", "home"):
        BEFORE[host] = lab.snapshot(host)
    for host, argv in (("vps", ("vps",)), ("home", ("home", "--home", HOME))):
        done = lab.exec(host, "vpnoffload", "install-service", *argv, timeout=180)
        if done.returncode != 0:
            pytest.fail(f"install-service {' '.join(argv)} failed:\n{done.stdout}{done.stderr}\n{lab.diagnostics()}",
                        pytrace=False)
    lab.wait_for("the visitor was not served from home after install-service", served_from_home, "/whoami",
                 RECOVERY_TIMEOUT)
    return lab


def test_after_a_reboot_visitors_are_served_from_home_with_no_command_typed(installed: SystemdLab) -> None:
    lab = installed
    assert active(lab, "vps", VPS_UNIT, WATCH_UNIT, SERVER_UNIT) == ["active"] * 3, lab.diagnostics()
    assert active(lab, "home", HOME_UNIT, CLIENT_UNIT) == ["active"] * 2, lab.diagnostics()
    # Only the boot unit starts OpenVPN, so it can never come up before our rules do.
    assert lab.systemctl("vps", "is-enabled", SERVER_UNIT).stdout.strip() == "disabled"
    assert lab.systemctl("home", "is-enabled", CLIENT_UNIT).stdout.strip() == "disabled"

    # A clean reboot of both: systemd stops the units (ExecStop= runs `down`) and boots again.
    restarted = docker("restart", "--time", "30", lab.name("vps"), lab.name("home"), timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    started = time.monotonic()
    lab.wait_for("the visitor was not served from home after both rebooted", served_from_home, "/whoami",
                 RECOVERY_TIMEOUT)
    back_after = time.monotonic() - started
    for host in ("vps", "home"):
        lab.wait_booted(host)
    # The shutdown ran `down vps`, then the boot `up vps` (a container keeps the host's
    # boot id, so both boots are one "boot" to journalctl). systemd itself stopped
    # OpenVPN meanwhile (the units are not ordered), so `down` found it stopped.
    journal = lab.journal("vps", VPS_UNIT, lines=400)
    stopping, stopped = journal.find(f"Stopping {VPS_UNIT}"), journal.find(f"Stopped {VPS_UNIT}")
    assert 0 <= stopping < stopped < journal.rfind(f"Finished {VPS_UNIT}"), journal  # oneshot: "Finished"
    assert "delete chain VPNOFFLOAD-DNAT" in journal[stopping:stopped], journal
    for unit in (VPS_UNIT, WATCH_UNIT, SERVER_UNIT):
        wait_active(lab, "vps", unit)

    # A power cut at home: no ExecStop ran, /run is gone, the state dir says "up".
    assert docker("kill", lab.name("home")).returncode == 0
    assert docker("start", lab.name("home")).returncode == 0
    lab.wait_for("the visitor was not served from home after home's power cut", served_from_home, "/whoami",
                 RECOVERY_TIMEOUT)
    for unit in (HOME_UNIT, CLIENT_UNIT):  # `up home` may still be finishing: the visitor is served first
        wait_active(lab, "home", unit)
    print(f"served from home {back_after:.1f} s after the reboot")


def test_the_watchdog_reports_ready_only_once_it_has_checked(installed: SystemdLab) -> None:
    lab = installed
    home_up(lab)
    lab.wait_for("home's page", served_from_home, "/whoami", RECOVERY_TIMEOUT)
    # Stopping the watchdog leaves the rules as they are: still forwarding to home.
    assert lab.systemctl("vps", "stop", WATCH_UNIT).returncode == 0
    assert served_from_home(lab.visitor_get("/whoami"))

    home_down(lab)
    # `systemctl start` of a Type=notify unit returns once the service sent READY=1.
    start = lab.systemctl("vps", "start", WATCH_UNIT)
    assert start.returncode == 0, start.stderr + lab.diagnostics()
    first = lab.visitor_get("/")
    assert on_the_page(first), f"the first visitor after READY got {first!r}\n{lab.diagnostics()}"

    journal = lab.journal("vps", WATCH_UNIT, lines=200).splitlines()
    starting = max(i for i, ln in enumerate(journal) if f"Starting {WATCH_UNIT}" in ln)
    since = journal[starting:]
    checked = next(i for i, ln in enumerate(since) if "web: on fallback at start" in ln)
    ready = next(i for i, ln in enumerate(since) if f"Started {WATCH_UNIT}" in ln)
    assert checked < ready, "\n".join(since)
    # Inside the unit's sandbox the watchdog still makes its visitor-path probe namespace.
    assert not [ln for ln in since if "no probe namespace" in ln], "\n".join(since)
    for _ in range(50):  # made on the watchdog's first ticks
        probe = lab.exec("vps", "ip", "link", "show", "vpnoffload-pb")
        if probe.returncode == 0:
            break
        time.sleep(0.1)
    assert probe.returncode == 0, probe.stdout + probe.stderr + "\n".join(since)


def test_restarting_the_watchdog_during_an_outage_keeps_visitors_on_the_page(installed: SystemdLab) -> None:
    lab = installed
    home_down(lab)
    lab.wait_for("the friendly page while home is down", on_the_page, "/", FAILOVER_TIMEOUT)
    pid = lab.show("vps", WATCH_UNIT, "MainPID")
    # Visitors keep asking, 20 requests over ~4 s, while systemd restarts the watchdog.
    visitors = subprocess.Popen(
        ["docker", "exec", lab.name("visitor"), "sh", "-c",
         f"for i in $(seq 20); do curl -s -o /dev/null --max-time 2 -w '%{{http_code}}\\n' "
         f"http://{VPS_ADDRESS}/; sleep 0.2; done"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # pacing: the restart falls among the visitors' 4 s, not before the first
    assert lab.systemctl("vps", "restart", WATCH_UNIT).returncode == 0
    statuses = [int(s) for s in visitors.communicate(timeout=90)[0].split()]
    assert lab.show("vps", WATCH_UNIT, "MainPID") != pid
    assert statuses == [503] * 20, f"{statuses}\n{lab.diagnostics()}"


def test_a_hung_watchdog_is_killed_and_restarted_by_systemd(installed: SystemdLab) -> None:
    lab = installed
    assert lab.show("vps", WATCH_UNIT, "WatchdogUSec") == "10s"  # the unit as install-service wrote it
    lab.exec("vps", "sh", "-c", f"mkdir -p /run/systemd/system/{WATCH_UNIT}.d && printf '[Service]\\nWatchdogSec="
             f"{HANG_WATCHDOG_SEC}\\n' > {HANG_DROP_IN}", check=True)
    try:
        # A running service keeps the WatchdogSec= it started with: restart it with the drop-in's.
        assert lab.systemctl("vps", "daemon-reload").returncode == 0
        assert lab.systemctl("vps", "restart", WATCH_UNIT).returncode == 0, lab.diagnostics()
        assert lab.show("vps", WATCH_UNIT, "WatchdogUSec") == f"{HANG_WATCHDOG_SEC}s"
        hung_watchdog_restarted(lab)
    finally:
        lab.exec("vps", "rm", "-f", HANG_DROP_IN)
        lab.systemctl("vps", "daemon-reload")
    # The unit is the product's again (the running watchdog keeps 3 s until its next start).
    assert "WatchdogSec=3" not in lab.systemctl("vps", "cat", WATCH_UNIT).stdout


def hung_watchdog_restarted(lab: SystemdLab) -> None:
    """SIGSTOP to the running watchdog during an outage: systemd kills it and starts another, the page
    staying up all along; the new one sends visitors home when home returns."""
    home_down(lab)
    lab.wait_for("the friendly page while home is down", on_the_page, "/", FAILOVER_TIMEOUT)
    pid = lab.show("vps", WATCH_UNIT, "MainPID")
    restarts = int(lab.show("vps", WATCH_UNIT, "NRestarts"))
    assert lab.systemctl("vps", "kill", "--kill-whom=main", "--signal=SIGSTOP", WATCH_UNIT).returncode == 0

    deadline = time.monotonic() + HANG_RESTART_TIMEOUT
    statuses = []
    while time.monotonic() < deadline:
        statuses.append(getattr(lab.visitor_get("/"), "status", 0))
        if (int(lab.show("vps", WATCH_UNIT, "NRestarts")) > restarts and lab.show("vps", WATCH_UNIT, "MainPID") != pid
                and active(lab, "vps", WATCH_UNIT) == ["active"]):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the hung watchdog was not restarted within {HANG_RESTART_TIMEOUT:g} s\n{lab.diagnostics()}")
    journal = lab.journal("vps", WATCH_UNIT, lines=60)
    assert "Watchdog timeout" in journal, journal
    assert set(statuses) == {503}, statuses  # the page server is not the watchdog: it kept serving

    # The new watchdog does its job: home returns, visitors go back home.
    home_up(lab)
    lab.wait_for("home's page after the restarted watchdog saw home return", served_from_home, "/whoami",
                 RECOVERY_TIMEOUT)


def test_stopping_the_boot_units_runs_down_exactly(installed: SystemdLab) -> None:
    lab = installed
    home_up(lab)
    lab.wait_for("home's page", served_from_home, "/whoami", RECOVERY_TIMEOUT)
    # PartOf=: restarting the VPS end (down, up) restarts the watchdog with it, instead
    # of `down` terminating it behind systemd's back and leaving it dead.
    watchdog = lab.show("vps", WATCH_UNIT, "MainPID")
    assert lab.systemctl("vps", "restart", VPS_UNIT).returncode == 0, lab.diagnostics()
    wait_active(lab, "vps", WATCH_UNIT)  # systemctl waited for the VPS unit's job only
    assert lab.show("vps", WATCH_UNIT, "MainPID") != watchdog
    lab.wait_for("home's page after restarting the VPS end", served_from_home, "/whoami", RECOVERY_TIMEOUT)

    assert lab.systemctl("vps", "stop", VPS_UNIT).returncode == 0
    # PartOf=: the watchdog went first (it would otherwise write the chains back).
    assert active(lab, "vps", VPS_UNIT, WATCH_UNIT, SERVER_UNIT) == ["inactive"] * 3
    assert lab.systemctl("home", "stop", HOME_UNIT).returncode == 0
    assert active(lab, "home", HOME_UNIT, CLIENT_UNIT) == ["inactive"] * 2
    assert lab.visitor_get("/") is None  # nothing forwards or answers on :80 any more
    for host in ("vps", "home"):
        diff = snapshot_diff(BEFORE[host], lab.snapshot(host))
        assert not diff, f"{host} after systemctl stop differs from before install-service:\n{diff}"
