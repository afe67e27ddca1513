"""Issue 25: ``status`` on a home box lists every VPS it serves, checked now."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import home_box_config as config_text
from tests.helpers import write_home_box_config as write
from vpnoffload import homestatus, record
from vpnoffload.errors import ExitStatus
from vpnoffload.hometunnels import Slot
from vpnoffload.paths import Paths

NOW = 1_800_000_000.0
# conntrack -L: a visitor through tunnel 0 (TIME_WAIT, 20 s after close), one open through
# tunnel 1, a health check from the first VPS's tunnel address, and someone else's flow.
CONNTRACK = """\
tcp      6 100 TIME_WAIT src=192.0.2.2 dst=198.51.100.2 sport=41000 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=8080 dport=41000 [ASSURED] mark=536870912 use=1
tcp      6 431990 ESTABLISHED src=192.0.2.7 dst=10.89.0.2 sport=41001 dport=8080 src=10.89.0.2 dst=192.0.2.7 sport=8080 dport=41001 [ASSURED] mark=1073741824 use=1
tcp      6 110 TIME_WAIT src=198.51.100.1 dst=198.51.100.2 sport=41002 dport=8080 src=198.51.100.2 dst=198.51.100.1 sport=8080 dport=41002 [ASSURED] mark=536870912 use=1
udp      17 20 src=192.0.2.66 dst=203.0.113.10 sport=5000 dport=1194 src=203.0.113.10 dst=192.0.2.66 sport=1194 dport=5000 mark=0 use=1
"""


@pytest.fixture
def box(tmp_path: Path, monkeypatch):
    first = write(tmp_path / "vpnoffload.toml", config_text("203.0.113.10", "198.51.100.0/24"))
    second = write(tmp_path / "vps2" / "vpnoffload.toml", config_text("203.0.113.20", "10.89.0.0/24"))
    sites = [Paths(first, first.parent / "state"), Paths(second, second.parent / "state")]
    timeouts = {"nf_conntrack_tcp_timeout_time_wait": 120, "nf_conntrack_tcp_timeout_established": 432000}
    monkeypatch.setattr(homestatus, "_timeout", lambda proto, state, assured: timeouts[
        f"nf_conntrack_{proto}_timeout_{state.lower()}"])
    devices = {"vpnoffload0": "198.51.100.2", "vpnoffload1": "10.89.0.2"}
    monkeypatch.setattr(homestatus, "_device_address", devices.get)
    return sites, devices


def set_up(paths: Paths, slot: int, connected: bool = True) -> None:
    paths.run.mkdir(parents=True, exist_ok=True)
    record.save(paths.record("home-home"), record.Record(slot=slot))
    name = Slot(slot).tunnel_name("home")
    words = "Initialization Sequence Completed\n" + ("" if connected else "SIGUSR1[soft,ping-restart] received, process restarting\n")
    (paths.run / f"openvpn-{name}.log").write_text(words)


def test_a_home_box_is_known_as_one(box) -> None:
    (one, two), _ = box
    assert homestatus.is_home_end(one) and homestatus.is_home_end(two)  # the profiles are there
    (one.state / "server").mkdir()
    assert not homestatus.is_home_end(one)  # 'up vps' rendered its server here: a VPS


def test_every_vps_with_its_tunnel_and_last_visitor(box) -> None:
    (one, two), _ = box
    set_up(one, 0)
    set_up(two, 1)
    data, code = homestatus.home_report(two, now=NOW, conntrack=CONNTRACK)
    assert code == ExitStatus.OK
    first, second = data["tunnels"]
    assert (first["vps"], first["device"], first["table"], first["up"]) == ("203.0.113.10", "vpnoffload0", 7701, True)
    assert (second["vps"], second["device"], second["mark"], second["up"]) == ("203.0.113.20", "vpnoffload1",
                                                                                "0x40000000/0xe0000000", True)
    # TIME_WAIT with 100 of 120 s left: its last packet 20 s ago; the health check does not count.
    assert first["last_visitor"] == NOW - 20 and first["visitors_now"] == 0
    assert second["last_visitor"] == NOW - 10 and second["visitors_now"] == 1
    assert first["last_visitor_from"] == "conntrack"
    text = "\n".join(homestatus.render_text(data, now=NOW))
    assert "VPS 203.0.113.10: tunnel up on vpnoffload0" in text and "last visitor 20s ago" in text
    assert "VPS 203.0.113.20: tunnel up on vpnoffload1" in text and "1 visitor connection(s) now" in text
    json.dumps(data)

    # Later, conntrack has forgotten: the time kept by this status run is shown, saying so.
    later, _ = homestatus.home_report(one, now=NOW + 600, conntrack="")
    assert later["tunnels"][0]["last_visitor"] == pytest.approx(NOW - 20, abs=1)
    assert later["tunnels"][0]["last_visitor_from"] == "kept by an earlier status"


def test_a_tunnel_down_is_said_with_why(box) -> None:
    (one, two), devices = box
    set_up(one, 0)
    set_up(two, 1, connected=False)
    data, code = homestatus.home_report(one, now=NOW, conntrack="")
    assert code == ExitStatus.UNHEALTHY and [t["up"] for t in data["tunnels"]] == [True, False]
    assert "tunnel DOWN (OpenVPN is reconnecting: is the VPS reachable?)" in "\n".join(homestatus.render_text(data, NOW))
    del devices["vpnoffload1"]
    data, _ = homestatus.home_report(one, now=NOW, conntrack="")
    assert "no vpnoffload1: is OpenVPN running" in "\n".join(homestatus.render_text(data, NOW))


def test_configs_not_set_up_are_listed_and_none_set_up_is_exit_2(box) -> None:
    (one, two), _ = box
    data, code = homestatus.home_report(one, now=NOW, conntrack="")
    assert code == ExitStatus.BAD_INPUT and not any(t["set_up"] for t in data["tunnels"])
    assert "not set up here (run 'vpnoffload -c" in "\n".join(homestatus.render_text(data, NOW))
    set_up(one, 0)
    data, code = homestatus.home_report(one, now=NOW, conntrack="")
    assert code == ExitStatus.OK and [t["set_up"] for t in data["tunnels"]] == [True, False]


def test_status_and_doctor_on_a_home_box_know_which_end_they_run_on(box, monkeypatch) -> None:
    from typer.testing import CliRunner

    from vpnoffload.cli.app import app
    from vpnoffload.deploy import doctor

    (one, two), _ = box
    set_up(one, 0)
    monkeypatch.setattr(homestatus, "_conntrack", lambda: (CONNTRACK, None))
    result = CliRunner().invoke(app, ["-c", str(two.config), "status", "--json"])
    assert result.stdout.strip(), (result.exit_code, result.output, result.exception)
    data = json.loads(result.stdout)
    assert data["end"] == "home" and [t["vps"] for t in data["home"]["tunnels"]] == ["203.0.113.10", "203.0.113.20"]
    assert result.exit_code == 0  # the one set up is up; the other is listed as not set up here
    monkeypatch.setattr(doctor, "fatal_checks", lambda: [doctor.Finding("ok", "root", "running as root")])
    monkeypatch.setattr(doctor, "check_firewall_backend", lambda root: [])
    previewed: list[str | None] = []
    monkeypatch.setattr(doctor, "check_host_firewall", lambda config, device=None: previewed.append(device) or [])
    result = CliRunner().invoke(app, ["-c", str(two.config), "doctor"])
    assert previewed == ["vpnoffload1"]  # the host-firewall preview names the second VPS's own device
    assert "as the home box" in result.stdout and "vps address" not in result.stdout, result.stdout
    assert "VPS 203.0.113.20" in result.stdout and "tunnel 1 (device vpnoffload1" in result.stdout


def test_status_on_a_home_box_shows_its_keeper_and_host_firewall(box, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tunnels' view and, per home set up here, the keeper and what it put back in the
    host's firewall (the keeper's own report), in the text and in --json."""
    (one, _two), _ = box
    set_up(one, 0)
    monkeypatch.setattr(homestatus, "_conntrack", lambda: (CONNTRACK, None))
    text, code = homestatus.shown(one, as_json=False)  # type: ignore[misc]
    assert code == ExitStatus.OK
    assert "keeper NOT running" in text and "VPS 203.0.113.10: tunnel up" in text, text
    data = json.loads(homestatus.shown(one, as_json=True)[0])  # type: ignore[index]
    assert data["end"] == "home" and [h["name"] for h in data["homes"]] == ["home"]
    assert data["homes"][0]["keeper_pid"] is None and "host_firewall" in data["homes"][0]


@pytest.mark.parametrize(("fails", "why"), [
    ("missing", "conntrack is missing: apt-get install conntrack"),
    ("refused", "conntrack -L failed: conntrack v1.4.7 (conntrack-tools): Operation not permitted"),
])
def test_visitors_are_unknown_not_zero_when_conntrack_cannot_be_read(box, monkeypatch: pytest.MonkeyPatch,
                                                                      fails: str, why: str) -> None:
    from vpnoffload import proc
    from vpnoffload.errors import PrerequisiteError

    (one, _two), _ = box
    set_up(one, 0)

    def run(argv, **kwargs):
        assert list(argv) == ["conntrack", "-L"]
        if fails == "missing":
            raise PrerequisiteError(f"conntrack is missing: {kwargs['hint']}")
        return proc.Result(tuple(argv), 1, "", "conntrack v1.4.7 (conntrack-tools): Operation not permitted\n")

    monkeypatch.setattr(proc, "run", run)
    data, code = homestatus.home_report(one, now=NOW)
    tunnel = data["tunnels"][0]
    assert code == ExitStatus.OK  # the tunnel is up; only the visitor count is not known
    assert tunnel["visitors_now"] is None and tunnel["visitors_unknown"] == why
    line = homestatus.render_text(data, now=NOW)[1]
    assert f"visitor connections unknown ({why})" in line and "0 visitor" not in line, line
