"""The namespace lab really is the network the end-to-end tests assume.

Needs root; each test builds its own lab under a random prefix and destroys it.
Reachability is checked with TCP (no ping here): 'refused' means a RST came
back, so the path works; 'timeout'/'unreachable' means it does not.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.nslib import in_ns, needs_root, sh, unique
from vpnoffload.errors import BackendError
from vpnoffload.lab.netns import Lab, lab_session
from vpnoffload.lab.snapshot import snapshot, snapshot_diff

pytestmark = [needs_root, pytest.mark.root, pytest.mark.timeout(60)]

WEB_PORT = 8080
UNUSED_PORT = 9  # nothing listens: a reachable host answers with a RST


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_session(unique("lab")) as made:
        yield made


def start_web(lab: Lab, host: str) -> subprocess.Popen:
    proc = lab.popen(host, sys.executable, "-m", "vpnoffload.lab.web", "--port", str(WEB_PORT), "--name", host)
    address = lab.vps_address if host == "vps" else lab.home_uplink_address
    assert lab.wait_tcp(host, address, WEB_PORT, timeout=5), f"labweb did not start in {host}"
    return proc


def test_visitor_reaches_vps_without_nat(lab: Lab) -> None:
    start_web(lab, "vps")
    status, body = lab.http_get("visitor", f"http://{lab.vps_address}:{WEB_PORT}/whoami")
    assert (status, body.strip()) == (200, lab.visitor_address)


def test_home_reaches_router_and_serves_visitor_directly(lab: Lab) -> None:
    assert lab.tcp_probe("home", lab.home_gateway, UNUSED_PORT) == "refused"
    start_web(lab, "home")
    status, body = lab.http_get("visitor", f"http://{lab.home_uplink_address}:{WEB_PORT}/whoami")
    # The visitor's own address arrives at home: the router does no NAT.
    assert (status, body.strip()) == (200, lab.visitor_address)
    status, page = lab.http_get("visitor", f"http://{lab.home_uplink_address}:{WEB_PORT}/")
    assert status == 200 and "served from home" in page and f"you are {lab.visitor_address}" in page


def test_router_forwards_only_in_its_own_namespace(lab: Lab) -> None:
    assert in_ns(lab.namespace("internet"), "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    for host in ("vps", "home", "visitor"):
        assert in_ns(lab.namespace(host), "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"


def test_pulled_cable_cuts_home_and_plugging_restores_it(lab: Lab) -> None:
    start_web(lab, "home")
    lab.pull_cable()
    assert lab.tcp_probe("visitor", lab.home_uplink_address, WEB_PORT, timeout=1) in ("unreachable", "timeout")
    assert lab.tcp_probe("home", lab.home_gateway, UNUSED_PORT, timeout=1) in ("unreachable", "timeout")
    # Home itself still has its default route: only the router's side went down.
    assert "default via" in in_ns(lab.namespace("home"), "ip", "route").stdout
    lab.plug_cable()
    assert lab.wait_tcp("visitor", lab.home_uplink_address, WEB_PORT, timeout=5)
    assert lab.tcp_probe("home", lab.home_gateway, UNUSED_PORT) == "refused"


def test_snapshot_is_stable_and_ignores_merely_registered_tables(lab: Lab) -> None:
    ns = lab.namespace("vps")
    before = snapshot(lab, "vps")
    assert snapshot(lab, "vps") == before
    in_ns(ns, "iptables-legacy", "-t", "nat", "-L", "-n")  # registers the nat table for good
    assert snapshot_diff(before, snapshot(lab, "vps")) == ""
    in_ns(ns, "iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "80", "-j", "ACCEPT")
    changed = snapshot(lab, "vps")
    assert "--dport 80" in changed["iptables"] and "before/iptables" in snapshot_diff(before, changed)
    in_ns(ns, "iptables-legacy", "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "--dport", "80", "-j", "ACCEPT")
    assert snapshot(lab, "vps") == before


def test_create_refuses_an_existing_lab_and_leaves_it_alone(lab: Lab) -> None:
    with pytest.raises(BackendError, match="already exists"):
        Lab(lab.prefix).create()
    assert lab.exists()
    assert lab.tcp_probe("visitor", lab.vps_address, UNUSED_PORT) == "refused"


def root_state() -> tuple[list[str], set[str]]:
    namespaces = [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()]
    links = {line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link").stdout.splitlines()}
    return namespaces, links


def test_destroy_leaves_nothing_behind() -> None:
    prefix = unique("lab")
    before_ns, before_links = root_state()
    lab = Lab(prefix)
    lab.create()
    try:
        sleepers = [lab.popen(host, "sleep", "300") for host in lab.namespaces]
        start_web(lab, "home")
    finally:
        lab.destroy()
    lab.destroy()  # repeatable
    after_ns, after_links = root_state()
    assert not lab.exists()
    assert [n for n in after_ns if n.startswith(prefix)] == []
    assert set(after_ns) - set(before_ns) == set()
    assert after_links == before_links
    assert all(p.returncode is not None for p in sleepers)


def test_failed_create_removes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    lab = Lab(unique("lab"))
    good = lab.build_commands
    monkeypatch.setattr(lab, "build_commands", lambda: good() + [["ip", "link", "set", "nosuchdev", "up"]])
    with pytest.raises(BackendError, match="nosuchdev"):
        lab.create()
    assert not lab.exists()
