"""Issue 13, items 3 and 4: health along the visitors' path and the reasons status gives.

No root: the direct and forward checks are fakes, the probe namespace's plan
records its iproute2 commands, real sockets talk to loopback only."""

from __future__ import annotations

import errno
import socket
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from vpnoffload import probens
from vpnoffload.model import Config, Home, Service, Tunnel, Vps, Watch
from vpnoffload.routing.probe import ProbeNamespace
from vpnoffload.status import _health, _shown_reason, render_text
from vpnoffload.watch import health
from vpnoffload.watch.decide import Watchdog, probe_namespace_prober
from vpnoffload.watch.health import Result


def config(backups: tuple[str, ...] = ()) -> Config:
    return Config(
        vps=Vps(IPv4Address("203.0.113.10")),
        tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
        homes={"home": Home("home", IPv4Address("198.51.100.2")), "attic": Home("attic", IPv4Address("198.51.100.3"))},
        services={"web": Service("web", IPv4Address("203.0.113.10"), 80, "home", 8080, fallback="page",
                                 backups=backups)},
        watch=Watch(fall=2, rise=2),
    )


class Swapper:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, active, flush) -> None:
        self.calls.append(dict(active))


def up(svc, home, cfg) -> Result:
    return Result("up", 0.01, "http 200")


class Forward:
    """The forward check: blocked or not, and which way it was asked to go."""

    def __init__(self) -> None:
        self.blocked = False
        self.asked: list[tuple[str, bool]] = []

    def __call__(self, svc, home, cfg, visitor: bool) -> Result | None:
        self.asked.append((home, visitor))
        if self.blocked:
            return Result("down", 0.6, "connect: timed out", timed_out=True, reason=health.HOME_UNREACHABLE)
        return Result("up", 0.01, "connected")


def test_combine_names_a_blocked_path_only_when_the_direct_check_passes() -> None:
    ok, slow = Result("up", 0.01, "http 200"), Result("slow", 0.6, "http: no answer in time", reason=health.BUSY)
    blocked = Result("down", 0.6, "connect: timed out", timed_out=True, reason=health.HOME_UNREACHABLE)
    refused = Result("down", 0.0, "connect: Connection refused", reason=health.TARGET_REFUSED)
    assert health.combine(ok, None) is ok and health.combine(ok, Result("up", 0.0, "connected")) is ok
    assert health.combine(refused, blocked) is refused  # the direct check's own reason speaks first
    verdict = health.combine(slow, blocked)
    assert (verdict.verdict, verdict.reason, verdict.timed_out) == ("down", health.PATH_BLOCKED, True)
    assert "along the visitors' path: connect: timed out" in verdict.detail
    # A forward connect that times out while its ping is answered is "slow": busy, not blocked.
    assert health.combine(ok, Result("slow", 0.6, "connect: timed out (home answers ping)")) is ok


def test_reasons_of_real_connects() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()  # nothing listens: the kernel answers RST
    result = health.probe("127.0.0.1", port, type("C", (), {"kind": "tcp", "path": "/"})(), 0.5)
    assert (result.verdict, result.reason) == ("down", health.TARGET_REFUSED)
    assert health._connect_reason(OSError(errno.ENETUNREACH, "x")) == health.TUNNEL_DOWN
    assert health._connect_reason(OSError(errno.EHOSTUNREACH, "x")) == health.HOME_UNREACHABLE


def test_blocked_path_swaps_to_the_page_and_back_only_once_it_works() -> None:
    forward, swap = Forward(), Swapper()
    dog = Watchdog(config(), swap, up, forward=forward)
    dog.start({})
    assert dog.status["web"].active == "home" and forward.asked == [("home", True)]  # as a visitor: DNATed
    forward.blocked = True
    dog.tick()
    assert dog.status["web"].active == "home" and dog.status["web"].reason == health.PATH_BLOCKED
    assert not dog.status["web"].healthy
    dog.tick()
    assert dog.status["web"].active is None and swap.calls[-1] == {"web": None}
    # On the page the public address leads to the page server: check home straight through FORWARD.
    forward.asked.clear()
    for _ in range(3):
        dog.tick()
    assert forward.asked == [("home", False)] * 3 and dog.status["web"].active is None
    assert dog.snapshot()["services"][0]["reason"] == health.PATH_BLOCKED
    forward.blocked = False
    dog.tick()
    dog.tick()
    assert dog.status["web"].active == "home" and dog.status["web"].reason == ""


def test_busy_tunnel_does_not_hide_a_blocked_path() -> None:
    """Home keeps sending (it answers the direct checks): that must not turn a blocked path into "slow"."""
    forward, swap = Forward(), Swapper()
    packets = iter(range(0, 10_000, 7))
    one_home = Config(vps=config().vps, tunnel=config().tunnel, homes={"home": config().homes["home"]},
                      services=config().services, watch=Watch(fall=2, rise=2))
    dog = Watchdog(one_home, swap, up, forward=forward, activity=lambda: next(packets))
    dog.start({})
    forward.blocked = True
    dog.tick()
    dog.tick()
    assert dog.status["web"].active is None


def test_without_a_probe_namespace_only_the_direct_check_counts(tmp_path: Path) -> None:
    forward = probe_namespace_prober(str(tmp_path / "no-such-netns"))
    svc = config().services["web"]
    assert forward(svc, "home", config(), True) is None
    dog = Watchdog(config(), Swapper(), up, forward=forward)
    dog.start({})
    assert dog.status["web"].active == "home" and dog.status["web"].healthy


def test_probe_addresses_and_names(tmp_path: Path) -> None:
    assert probens.addresses("198.18.255.252/30") == ("198.18.255.253", "198.18.255.254")
    assert probens.addresses("198.18.7.9/30") == ("198.18.7.9", "198.18.7.10")
    with pytest.raises(ValueError):
        probens.addresses("198.18.0.0/24")
    assert probens.subnet({"VPNOFFLOAD_PROBE_SUBNET": "198.19.0.0/30"}) == "198.19.0.0/30"
    same = tmp_path / "ns"
    same.write_text("")
    assert probens.name(str(same), str(same)) == "vpnoffload-probe"
    other = tmp_path / "other"
    other.write_text("")
    assert probens.name(str(other), str(same)) == f"vpnoffload-probe-{other.stat().st_ino:x}"
    assert len(probens.VPS_DEVICE) <= 15


def test_probe_namespace_plan_and_exact_undo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    netns, sys_net = tmp_path / "netns", tmp_path / "net"
    netns.mkdir()
    sys_net.mkdir()
    ns = ProbeNamespace(lambda argv, **kw: ran.append(argv), "vpnoffload-probe-t", "198.18.255.252/30",
                        str(netns), str(sys_net))
    actions = ns.plan_up()
    assert len(actions) == 2
    for action in actions:
        action.do()
    assert ran == [
        ["ip", "netns", "add", "vpnoffload-probe-t"],
        ["ip", "link", "add", "vpnoffload-pb", "type", "veth", "peer", "name", "probe0", "netns", "vpnoffload-probe-t"],
        ["ip", "addr", "add", "198.18.255.253/30", "dev", "vpnoffload-pb"],
        ["ip", "link", "set", "vpnoffload-pb", "up"],
        ["ip", "-n", "vpnoffload-probe-t", "link", "set", "lo", "up"],
        ["ip", "-n", "vpnoffload-probe-t", "addr", "add", "198.18.255.254/30", "dev", "probe0"],
        ["ip", "-n", "vpnoffload-probe-t", "link", "set", "probe0", "up"],
        ["ip", "-n", "vpnoffload-probe-t", "route", "add", "default", "via", "198.18.255.253"],
    ]
    ran.clear()
    for action in reversed(actions):
        action.undo()
    assert ran == [["ip", "link", "del", "vpnoffload-pb"], ["ip", "netns", "del", "vpnoffload-probe-t"]]
    # Both there: a second `up` has nothing to do, `down` removes exactly both.
    (netns / "vpnoffload-probe-t").write_text("")
    (sys_net / "vpnoffload-pb").mkdir()
    # A plain file is a name left without its namespace: up makes it again, down removes it.
    assert not probens.present("vpnoffload-probe-t", str(netns)) and len(ns.plan_up()) == 2
    monkeypatch.setattr(probens, "present", lambda *a: True)  # as if a namespace were mounted there
    assert ns.plan_up() == []
    ran.clear()
    for action in ns.plan_down():
        action.do()
    assert ran == [["ip", "link", "del", "vpnoffload-pb"], ["ip", "netns", "del", "vpnoffload-probe-t"]]


def test_status_shows_the_reason_and_what_to_do() -> None:
    assert _shown_reason({"healthy": False, "reason": health.PATH_BLOCKED, "active": None}) == health.PATH_BLOCKED
    assert _shown_reason({"healthy": True, "reason": "", "active": "home"}) == ""
    assert _health({"healthy": True, "reason": "busy"}) == "ok (busy)"
    data = {
        "tunnel": {"up": True, "server_running": True, "homes": []},
        "watchdog": {"running": True, "pid": 1},
        "services": [{"name": "web", "listen": "203.0.113.10:80/tcp", "target": "home:8080", "hostname": None,
                      "fallback": "page", "path": "dnat", "state": "fallback", "home": None, "healthy": False,
                      "last_check": None, "latency_ms": None, "last_change": None, "reason": health.PATH_BLOCKED}],
    }
    text = "\n".join(render_text(data))
    assert "FAILING: path blocked on the VPS" in text
    assert "a firewall rule on the VPS drops forwarded traffic" in text


def test_every_reason_has_advice() -> None:
    from vpnoffload.status import ADVICE

    assert set(health.REASONS) - {health.BUSY} == set(ADVICE)
