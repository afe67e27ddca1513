"""A VPS with a running firewalld (issue 29), under systemd as PID 1 with D-Bus, in the systemd lab.

firewalld (Debian's package, nftables backend) runs on the VPS before
``install-service``: ``up vps`` opens its way through ``firewall-cmd``, in the
runtime configuration only. In order:

1. visitors are served from home; the openings are firewalld's own (a rich rule
   in the public zone, the probe veth in ``trusted``), and doctor and status name firewalld;
2. while home is down visitors get the friendly page;
3. ``firewall-cmd --reload`` and ``systemctl restart firewalld``: the watchdog has the
   openings back within 5 s, and visitors are served;
4. ``systemctl stop`` of the boot units runs ``down``: firewalld's runtime and permanent
   configuration are exactly as before, and so is everything the systemd lane compares.
"""

from __future__ import annotations

import time

import pytest

from tests.systemd.conftest import HOME, VPS_ADDRESS, SystemdLab, snapshot_diff
from tests.systemd.conftest import (FAILOVER_TIMEOUT, RECOVERY_TIMEOUT, VPS_UNIT, WATCH_UNIT, home_down,
                                        home_up, on_the_page, served_from_home, wait_firewalld)

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.timeout(600)]

#: What firewalld must have back after a reload or a restart, at most this long after it answers again.
BACK_WITHIN = 5.0
OPENVPN_RULE = f'rule family="ipv4" destination address="{VPS_ADDRESS}" port port="1194" protocol="udp" accept'
PROBE_DEVICE = "vpnoffload-pb"

BEFORE: dict[str, str] = {}


def firewalld_config(lab: SystemdLab) -> dict[str, str]:
    """firewalld's runtime and permanent configuration as firewall-cmd tells it, and its files."""
    out = {}
    for mode in ("", "--permanent"):
        for what in ("--list-all-zones", "--list-all-policies", "--direct --get-all-rules"):
            argv = ["firewall-cmd", *([mode] if mode else []), *what.split()]
            out[f"{mode or 'runtime'} {what}"] = lab.exec("vps", *argv, timeout=60, check=True).stdout
    for what in ("--get-active-zones", "--get-default-zone"):  # stand-alone options (the default zone is
        out[f"runtime {what}"] = lab.exec("vps", "firewall-cmd", what, timeout=60).stdout  # in firewalld.conf)
    out["files"] = lab.exec("vps", "sh", "-c", "find /etc/firewalld -type f | sort | xargs -r sha256sum",
                            timeout=30).stdout
    return out


def query(lab: SystemdLab, *args: str) -> bool:
    return lab.exec("vps", "firewall-cmd", *args, timeout=60).stdout.strip() == "yes"


def ours_in_place(lab: SystemdLab) -> bool:
    return (query(lab, "--zone=public", f"--query-rich-rule={OPENVPN_RULE}")
            and query(lab, "--zone=trusted", f"--query-interface={PROBE_DEVICE}"))


def back_within(lab: SystemdLab, started: float, what: str) -> float:
    """Seconds from ``started`` until our openings are in firewalld again (fails after BACK_WITHIN)."""
    while not ours_in_place(lab):
        if time.monotonic() - started > BACK_WITHIN + 2:  # + one firewall-cmd round trip of this check
            break
        time.sleep(0.2)
    took = time.monotonic() - started
    assert ours_in_place(lab) and took <= BACK_WITHIN + 1, (
        f"after {what}: vpnoffload's openings not back in firewalld within {BACK_WITHIN:g} s ({took:.1f} s)\n"
        f"{lab.journal('vps', WATCH_UNIT, lines=40)}")
    return took


@pytest.fixture(scope="module")
def with_firewalld(systemd_lab: SystemdLab) -> SystemdLab:
    lab = systemd_lab
    assert lab.systemctl("vps", "start", "firewalld.service").returncode == 0, lab.journal("vps", "firewalld")
    wait_firewalld(lab)
    BEFORE.update(firewalld_config(lab))
    BEFORE["__snapshot_home__"] = repr(lab.snapshot("home"))
    for host, argv in (("vps", ("vps",)), ("home", ("home", "--home", HOME))):
        done = lab.exec(host, "vpnoffload", "install-service", *argv, timeout=180)
        if done.returncode != 0:
            pytest.fail(f"install-service {' '.join(argv)} failed:\n{done.stdout}{done.stderr}\n{lab.diagnostics()}",
                        pytrace=False)
    lab.wait_for("the visitor was not served from home through firewalld", served_from_home, "/whoami",
                 RECOVERY_TIMEOUT)
    return lab


def test_up_opens_through_firewalld_and_says_so(with_firewalld: SystemdLab) -> None:
    lab = with_firewalld
    deadline = time.monotonic() + 15  # the probe veth appears on the watchdog's first ticks
    while not ours_in_place(lab) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert ours_in_place(lab), lab.exec("vps", "firewall-cmd", "--list-all-zones").stdout
    # Nothing permanent, and nothing of ours written into firewalld's table behind its back.
    assert OPENVPN_RULE not in lab.exec("vps", "firewall-cmd", "--permanent", "--zone=public",
                                        "--list-rich-rules").stdout
    assert 'comment "vpnoffload"' not in lab.exec("vps", "nft", "list", "table", "inet", "firewalld").stdout
    status = lab.exec("vps", "vpnoffload", "status").stdout
    assert "firewalld (running)" in status and "opened in firewalld zone public (runtime rich rule)" in status, status
    doctor = lab.exec("vps", "vpnoffload", "doctor").stdout
    assert "firewalld runs (default zone public)" in doctor, doctor


def test_the_page_while_home_is_down(with_firewalld: SystemdLab) -> None:
    lab = with_firewalld
    home_down(lab)
    try:
        lab.wait_for("the friendly page while home is down (firewalld on the VPS)", on_the_page, "/",
                     FAILOVER_TIMEOUT)
    finally:
        home_up(lab)
    lab.wait_for("home's page again", served_from_home, "/whoami", RECOVERY_TIMEOUT)


@pytest.mark.parametrize("how", ["firewall-cmd --reload", "systemctl restart firewalld"])
def test_a_firewalld_reload_or_restart_is_undone_within_5_s(with_firewalld: SystemdLab, how: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    lab = with_firewalld
    assert ours_in_place(lab)
    done = lab.exec("vps", *how.split(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_firewalld(lab)  # systemctl and --reload return once firewalld has its rules again
    took = back_within(lab, time.monotonic(), how)
    with capsys.disabled():
        print(f"\n[{how}] vpnoffload's openings back in firewalld {took:.1f} s after it answered again", flush=True)
    lab.wait_for(f"home's page after {how}", served_from_home, "/whoami", 10)
    assert "reopened in firewalld zone" in lab.journal("vps", WATCH_UNIT, lines=80)


def test_down_leaves_firewalld_exactly_as_before(with_firewalld: SystemdLab) -> None:
    lab = with_firewalld
    assert lab.systemctl("vps", "stop", VPS_UNIT).returncode == 0, lab.diagnostics()
    assert lab.systemctl("home", "stop", "vpnoffload-home.service").returncode == 0
    after = firewalld_config(lab)
    for key, text in BEFORE.items():
        if key.startswith("__"):
            continue
        assert after[key] == text, f"firewalld {key} differs after down:\n{snapshot_diff({key: text}, {key: after[key]})}"
    assert repr(lab.snapshot("home")) == BEFORE["__snapshot_home__"]
    lab.systemctl("vps", "stop", "firewalld.service")  # a kept lab (VPNOFFLOAD_SYSTEMD_KEEP=1) as the other tests expect
