"""The friendly page's port: privileged by default, so no local user can take it while the
watchdog (which holds it while it runs) is not running; doctor warns about one that is not."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from vpnoffload.config.parse import parse
from vpnoffload.deploy import doctor
from vpnoffload.deploy.units import unit_text
from vpnoffload.model import Config, Home, Service, Tunnel, Vps, Watch
from vpnoffload.paths import Paths


def config(port: int | None = None, tls: bool = False, fallback: str = "page") -> Config:
    web = Service("web", IPv4Address("203.0.113.10"), 443 if tls else 80, "home", 8080, fallback=fallback,
                  tls_cert=Path("/c.pem") if tls else None, tls_key=Path("/k.pem") if tls else None)
    return Config(vps=Vps(IPv4Address("203.0.113.10")), tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
                  homes={"home": Home("home", IPv4Address("198.51.100.2"))}, services={"web": web},
                  watch=Watch() if port is None else Watch(fallback_port=port))


MINIMAL = {"vps": {"address": "203.0.113.10"}, "tunnel": {"subnet": "198.51.100.0/24"},
           "homes": {"home": {"address": "198.51.100.2"}}}


def test_the_default_page_ports_are_privileged() -> None:
    port = Watch().fallback_port
    assert port == 503 and port + 1 < 1024  # the TLS page listens on the next port
    assert parse(dict(MINIMAL)).watch.fallback_port == 503


def test_an_unprivileged_port_stays_allowed() -> None:
    assert parse({**MINIMAL, "watch": {"fallback_port": 8503}}).watch.fallback_port == 8503


def test_the_watchdog_unit_may_bind_below_1024() -> None:
    """Root binds below 1024 only with CAP_NET_BIND_SERVICE, which the bounding set must keep."""
    text = unit_text(Paths(config=Path("/etc/vpnoffload/vpnoffload.toml"), state=Path("/etc/vpnoffload/state")),
                     python="/usr/bin/python3")
    bounding = [ln for ln in text.splitlines() if ln.startswith("CapabilityBoundingSet=")]
    assert len(bounding) == 1 and "CAP_NET_BIND_SERVICE" in bounding[0].split("=", 1)[1].split()


def test_doctor_is_quiet_about_a_privileged_page_port() -> None:
    assert doctor.check_page_port(config(), start=1024) == []
    assert doctor.check_page_port(config(tls=True), start=1024) == []
    assert doctor.check_page_port(config(1022, tls=True), start=1024) == []


def test_doctor_warns_about_an_unprivileged_page_port() -> None:
    [found] = doctor.check_page_port(config(8503, tls=True), start=1024)
    assert (found.level, found.check) == ("warn", "page port")
    assert found.detail == ("the friendly page's port 8503/8504 is unprivileged: while the watchdog is not running "
                            "any local user can bind it and receive the page's visitors")
    assert found.hint == "set watch.fallback_port below 1023 (the default is 503; TLS takes the next port)"
    [edge] = doctor.check_page_port(config(1023, tls=True), start=1024)  # only the TLS page's port
    assert "port 1024 is unprivileged:" in edge.detail


def test_doctor_warns_when_the_host_lowered_the_unprivileged_range(tmp_path: Path) -> None:
    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text("0\n")  # what Docker sets in its containers
    [found] = doctor.check_page_port(config(), start=doctor.unprivileged_port_start(sysctl))
    assert found.detail.startswith("the friendly page's port 503 is unprivileged "
                                   "(net.ipv4.ip_unprivileged_port_start is 0 here): ")
    assert found.hint == "set net.ipv4.ip_unprivileged_port_start back to 1024"
    assert doctor.unprivileged_port_start(tmp_path / "missing") == 1024


def test_doctor_says_nothing_without_a_page_service() -> None:
    assert doctor.check_page_port(config(8503, fallback="reset"), start=1024) == []
    cfg = config(8503)
    assert doctor.check_page_port(replace(cfg, services={}), start=1024) == []
