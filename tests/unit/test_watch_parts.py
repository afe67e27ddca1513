"""Smaller pieces of the failover path: status parsing, pages, the lean entry,
the systemd unit, metrics, and a swap applied to a fake firewall."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from vpnoffload.lean.snapshot import ConfigView
from tests.fakes import FakeBackend
from tests.prereq import need, tool_problem
from vpnoffload import entry, status
from vpnoffload.deploy.units import unit_text
from vpnoffload.errors import ConfigError
from vpnoffload.firewall import conntrack
from vpnoffload.model import Config, Home, Service, Tunnel, Vps
from vpnoffload.paths import Paths
from vpnoffload.render import pages
from vpnoffload.watch import swap
from vpnoffload.watch.decide import Watchdog
from vpnoffload.watch.health import Result
from vpnoffload.watch.metrics import exposition


def config(page: Path | None = None) -> Config:
    return Config(
        vps=Vps(IPv4Address("203.0.113.10")),
        tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
        homes={"home": Home("home", IPv4Address("198.51.100.2"))},
        services={
            "blog": Service("blog", IPv4Address("203.0.113.10"), 80, "home", 8080, fallback="page",
                            hostname="blog.example.org", page=page),
            "git": Service("git", IPv4Address("203.0.113.10"), 22, "home", 2222),
        },
    )


STATUS_V3 = (
    "TITLE\tOpenVPN 2.6.14\n"
    "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address\tBytes Received\t"
    "Bytes Sent\tConnected Since\tConnected Since (time_t)\tUsername\tClient ID\tPeer ID\tData Channel Cipher\n"
    "CLIENT_LIST\thome\t192.0.2.66:40000\t198.51.100.2\t\t100\t200\t2026-11-25 17:00:00\t1795000000\tUNDEF\t0\t0\tAES-256-GCM\n"
    "END\n"
)


def test_connected_clients_from_status_file(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text(STATUS_V3)
    clients = status.connected_clients(path)
    assert clients["home"]["Real Address"] == "192.0.2.66:40000"
    old = time.time() - 120
    os.utime(path, (old, old))
    assert status.connected_clients(path) == {}  # OpenVPN stopped updating it


def test_default_page_names_the_host_and_is_self_contained() -> None:
    html = pages.render_page(config(), config().services["blog"])
    assert "blog.example.org" in html and "<style>" in html
    assert "src=" not in html and "href=" not in html  # all assets inline


def test_users_page_template_and_escaping(tmp_path: Path) -> None:
    template = tmp_path / "mine.html.j2"
    template.write_text("<h1>{{ hostname }} is down, back in {{ retry_after }}s</h1>{{ '<b>' }}")
    html = pages.render_page(config(template), config(template).services["blog"])
    assert html == "<h1>blog.example.org is down, back in 30s</h1>&lt;b&gt;"
    template.write_text("{{ nope }}")
    with pytest.raises(ConfigError, match="services.blog.page"):
        pages.render_page(config(template), config(template).services["blog"])


def test_render_pages_only_for_page_services(tmp_path: Path) -> None:
    written = pages.render_pages(config(), tmp_path)
    assert [p.name for p in written] == ["blog.html"]


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["watch"], {}),
        (["-c", "/x.toml", "watch"], {"config": "/x.toml"}),
        (["--config=/x.toml", "--state-dir", "/s", "-v", "watch"], {"config": "/x.toml", "state": "/s", "verbose": True}),
        (["watch", "--help"], None),
        (["status"], None),
        (["-c"], None),
        (["--version"], None),
    ],
)
def test_lean_watch_entry_parses_only_plain_watch(argv: list[str], expected) -> None:
    assert entry.lean_watch_options(argv) == expected


def test_systemd_unit_is_hardened_and_verifies(tmp_path: Path) -> None:
    text = unit_text(Paths(config=Path("/etc/vpnoffload/vpnoffload.toml"), state=Path("/etc/vpnoffload/state")),
                     python="/usr/bin/python3")
    for line in ("Type=notify", "WatchdogSec=10\n", "Restart=on-failure", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
                 "ExecStart=/usr/bin/python3 -I -m vpnoffload --config /etc/vpnoffload/vpnoffload.toml"):
        assert line in text
    need(tool_problem("systemd-analyze", "apt-get install systemd"))
    unit = tmp_path / "vpnoffload-watch.service"
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # It exits 0 even on unknown keys: silence is the only pass.
    assert proc.stdout + proc.stderr == ""


def test_metrics_exposition() -> None:
    dog = Watchdog(ConfigView.of(config()), lambda a, f: None, lambda s, h, c: Result("up", 0.002, "ok"))
    dog.start()
    text = exposition(dog)
    assert 'vpnoffload_service_forwarding{service="blog"} 1' in text
    assert 'vpnoffload_check_latency_seconds{service="git"} 0.002000' in text


def test_swap_rewrites_rules_and_forgets_changed_flows(monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[list[tuple[int, int]]] = []
    monkeypatch.setattr(conntrack, "flush_marked", flushed.append)
    fw = FakeBackend()
    swap.apply_swap(config(), {"blog": None, "git": "home"}, frozenset({"blog"}), firewall_backend=fw)
    assert "--to-destination 203.0.113.10:503" in "\n".join(fw.read().lines())
    assert flushed == [[(0x100000, 0xFF00000)]]


@pytest.mark.parametrize("end,home", [("vps", None), ("home", "home")])
def test_boot_units_verify_and_run_up_and_down(tmp_path: Path, end: str, home: str | None) -> None:
    from vpnoffload.deploy.units import units

    paths = Paths(config=Path("/etc/vpnoffload/vpnoffload.toml"), state=Path("/etc/vpnoffload/state"))
    found = units(paths, end, home)
    assert set(found) == ({"vpnoffload-vps.service", "vpnoffload-watch.service"} if end == "vps"
                          else {"vpnoffload-home.service", "vpnoffload-home-keeper.service"})
    text = found[f"vpnoffload-{end}.service"]
    assert f" up {end}" in text and f" down {end}" in text and "Type=oneshot" in text
    if home:
        assert "--home home" in text
    need(tool_problem("systemd-analyze", "apt-get install systemd"))
    for name, body in found.items():
        unit = tmp_path / name
        unit.write_text(body.replace(sys.executable, "/usr/bin/python3"))
    proc = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in found)],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout + proc.stderr == ""


def test_install_service_writes_units_with_out_and_refuses_bad_end(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vpnoffload.cli.app import app

    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text('[vps]\naddress = "203.0.113.10"\n[homes.home]\naddress = "10.88.0.2"\n')
    result = CliRunner().invoke(app, ["-c", str(cfgfile), "install-service", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "vpnoffload-vps.service").exists() and (tmp_path / "vpnoffload-watch.service").exists()
    bad = CliRunner().invoke(app, ["-c", str(cfgfile), "install-service", "garage", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "not an end" in bad.output


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["status"], {"command": "status"}),
        (["-c", "/x.toml", "status", "--json"], {"config": "/x.toml", "command": "status", "json": True}),
        (["status", "--help"], None),
        (["status", "--yaml"], None),
    ],
)
def test_lean_status_entry(argv: list[str], expected) -> None:
    assert entry.lean_options(argv) == expected


def test_lean_status_and_typer_status_say_the_same(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vpnoffload.cli.app import app

    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text('[vps]\naddress = "203.0.113.10"\n[homes.home]\naddress = "10.88.0.2"\n')
    lean = subprocess.run([sys.executable, "-m", "vpnoffload", "-c", str(cfgfile), "status", "--json"],
                          capture_output=True, text=True, timeout=30)
    typed = CliRunner().invoke(app, ["-c", str(cfgfile), "status", "--json"])
    assert lean.returncode == typed.exit_code == 2
    assert "not set up" in lean.stderr and "not set up" in typed.output
