"""Issue 13, items 3 and 4: health along the visitors' path and the reasons status gives.

No root: the direct and forward checks are fakes, the watchdog's probe namespace
(watch/probe.py) runs on a fake `ip` and unshare, recording which thread runs each
command; real sockets talk to loopback only."""

from __future__ import annotations

import errno
import os
import socket
import threading
from ipaddress import IPv4Address, IPv4Network

import pytest

from vpnoffload import probens
from vpnoffload.lean.snapshot import ConfigView
from vpnoffload.model import Config, Home, Service, Tunnel, Vps, Watch
from vpnoffload.status import _health, _shown_reason, render_text
from vpnoffload.watch import health
from vpnoffload.watch.decide import Watchdog, probe_namespace_prober
from vpnoffload.watch.health import Result
from vpnoffload.watch.probe import ProbeNamespace


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
    dog = Watchdog(ConfigView.of(config()), swap, up, forward=forward)
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
    dog = Watchdog(ConfigView.of(one_home), swap, up, forward=forward, activity=lambda: next(packets))
    dog.start({})
    forward.blocked = True
    dog.tick()
    dog.tick()
    assert dog.status["web"].active is None


class NoNamespace:
    """A ProbeNamespace that could not be made (or whose link went)."""

    def available(self) -> bool:
        return False

    def sockets(self, specs):
        raise AssertionError("no sockets without a namespace")


def test_without_a_probe_namespace_only_the_direct_check_counts() -> None:
    forward = probe_namespace_prober(NoNamespace())
    svc = config().services["web"]
    assert forward(svc, "home", config(), True) is None
    dog = Watchdog(ConfigView.of(config()), Swapper(), up, forward=forward)
    dog.start({})
    assert dog.status["web"].active == "home" and dog.status["web"].healthy


def test_forward_probe_without_sockets_is_no_evidence() -> None:
    def refused(specs):
        raise OSError(errno.ESHUTDOWN, "closed")

    assert health.forward_probe(refused, "203.0.113.10", 80, 0.5, "198.51.100.2") is None
    assert health.forward_probe(lambda specs: [None, None], "203.0.113.10", 80, 0.5, "198.51.100.2") is None


class Flows:
    """watch.flows.FlowEvidence with its answer set by the test: replies per (mark, home)."""

    def __init__(self) -> None:
        self.flowing: dict[tuple[int, str], bool | None] = {}
        self.asked: list[tuple[int, int, str]] = []
        self.forgotten: list[tuple[int, str]] = []

    def replies_flowing(self, mark: int, mask: int, home: str) -> bool | None:
        self.asked.append((mark, mask, home))
        return self.flowing.get((mark, home))

    def forget(self, mark: int, home: str) -> None:
        self.forgotten.append((mark, home))


def _one_home_watchdog(forward: Forward, swap: Swapper, flows: Flows) -> Watchdog:
    """One home, fall = rise = 2, and a tunnel always busy (5000 packets a round, none of them evidence)."""
    packets = iter(range(0, 10_000_000, 5_000))
    one_home = Config(vps=config().vps, tunnel=config().tunnel, homes={"home": config().homes["home"]},
                      services=config().services, watch=Watch(fall=2, rise=2))
    return Watchdog(ConfigView.of(one_home), swap, up, forward=forward, activity=lambda: next(packets), flows=flows)


def test_a_loaded_tunnel_is_not_a_blocked_path() -> None:
    """1000 visitors: the forward check's SYN gets lost in the tunnel while the service's own
    visitors are still answered (conntrack, its connmark). That is load, not a block: no failover.
    The tunnel's total traffic no longer counts. A refusal (a reject rule answers) is still a
    block, whatever the flows."""
    forward, swap, flows = Forward(), Swapper(), Flows()
    dog = _one_home_watchdog(forward, swap, flows)
    dog.start({})
    forward.blocked = True
    flows.flowing[(0x100000, "198.51.100.2")] = True
    for _ in range(5):
        dog.tick()
    assert dog.status["web"].active == "home" and dog.status["web"].healthy
    assert dog.status["web"].reason == health.BUSY and "its visitors are still answered" in dog.status["web"].detail
    assert flows.asked[-1] == (0x100000, 0x0FF00000, "198.51.100.2")
    refused = Result("down", 0.0, "connect: Connection refused", reason=health.TARGET_REFUSED)
    dog.forward = lambda svc, home, cfg, visitor: refused
    dog.tick()
    dog.tick()
    assert dog.status["web"].active is None and dog.status["web"].reason == health.PATH_BLOCKED


@pytest.mark.parametrize("evidence", [False, None])
def test_a_lost_check_with_unanswered_visitors_is_a_block(evidence) -> None:
    """Home answers the direct check (and would answer ping), the tunnel is busy with other
    traffic, but this service's visitors get no answers (or there is no reading yet): blocked."""
    forward, swap, flows = Forward(), Swapper(), Flows()
    dog = _one_home_watchdog(forward, swap, flows)
    dog.start({})
    forward.blocked = True
    flows.flowing[(0x100000, "198.51.100.2")] = evidence
    dog.tick()
    dog.tick()
    assert dog.status["web"].active is None and dog.status["web"].reason == health.PATH_BLOCKED


def test_flows_are_asked_only_for_the_home_the_service_is_on() -> None:
    """On fallback the check goes straight to home (no visitors there): no flow can rescue it."""
    forward, swap, flows = Forward(), Swapper(), Flows()
    dog = Watchdog(ConfigView.of(config()), swap, up, forward=forward, flows=flows)
    dog.start({})
    forward.blocked = True
    dog.tick()
    dog.tick()
    assert dog.status["web"].active is None
    flows.asked.clear()
    flows.flowing[(0x100000, "198.51.100.2")] = True
    dog.tick()
    dog.tick()
    assert flows.asked == [] and dog.status["web"].active is None
    forward.blocked = False
    dog.tick()
    assert (0x100000, "198.51.100.2") in flows.forgotten


def test_the_watchdog_mark_is_the_firewall_mark() -> None:
    from vpnoffload.firewall.policy import service_mark as firewall_mark
    from vpnoffload.watch.decide import service_mark

    cfg = config()
    assert service_mark(0) == firewall_mark(cfg, "web")


def test_probe_addresses() -> None:
    assert probens.addresses("198.18.255.252/30") == ("198.18.255.253", "198.18.255.254")
    assert probens.addresses("198.18.7.9/30") == ("198.18.7.9", "198.18.7.10")
    with pytest.raises(ValueError, match="must be a /30"):
        probens.addresses("198.18.0.0/24")
    assert probens.subnet({"VPNOFFLOAD_PROBE_SUBNET": "198.19.0.0/30"}) == "198.19.0.0/30"
    assert len(probens.VPS_DEVICE) <= 15


class FakeKernel:
    """Records each `ip` command with the thread it ran in; ``links`` is the VPS namespace's."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, list[str]]] = []
        self.links: dict[str, int] = {}
        self.fail_on: str | None = None
        self.now = 1000.0

    def ip(self, args: list[str]) -> None:
        self.ran.append((threading.current_thread().name, args))
        if self.fail_on and self.fail_on in args:
            raise OSError(errno.EIO, f"ip {' '.join(args)}: RTNETLINK answers: File exists")
        if args[:2] == ["link", "add"]:
            self.links[args[2]] = 7
        elif args[:2] == ["link", "del"]:
            self.links.pop(args[2], None)

    def namespace(self) -> ProbeNamespace:
        return ProbeNamespace("198.18.255.252/30", ip=self.ip, unshare=lambda: None, index_of=self.links.get,
                              clock=lambda: self.now)


def test_probe_namespace_is_made_by_the_watchdog_and_gone_with_it() -> None:
    kernel = FakeKernel()
    ns = kernel.namespace()
    assert not ns.available() and ns.ensure() and ns.available()
    path = ns.netns_path
    assert path is not None and path.startswith(f"/proc/{os.getpid()}/task/") and path.endswith("/ns/net")
    assert kernel.ran == [
        ("MainThread", ["link", "add", "vpnoffload-pb", "type", "veth", "peer", "name", "probe0", "netns", path]),
        ("MainThread", ["addr", "add", "198.18.255.253/30", "dev", "vpnoffload-pb"]),
        ("MainThread", ["link", "set", "vpnoffload-pb", "up"]),
        # Spawned from the probe thread, so they act inside the namespace it unshared.
        ("probe-ns", ["link", "set", "lo", "up"]),
        ("probe-ns", ["addr", "add", "198.18.255.254/30", "dev", "probe0"]),
        ("probe-ns", ["link", "set", "probe0", "up"]),
        ("probe-ns", ["route", "add", "default", "via", "198.18.255.253"]),
    ]
    tcp, raw = ns.sockets([(socket.AF_INET, socket.SOCK_STREAM, 0), (socket.AF_INET, socket.SOCK_RAW, 1)])
    assert isinstance(tcp, socket.socket)
    tcp.close()
    if raw is not None:
        raw.close()
    kernel.ran.clear()
    assert ns.ensure() and kernel.ran == []  # there and ours: nothing to do
    threads = [t for t in threading.enumerate() if t.name == "probe-ns"]
    ns.close()
    assert kernel.ran == [("MainThread", ["link", "del", "vpnoffload-pb"])] and not ns.available()
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(FileNotFoundError, match="no probe namespace"):
        ns.sockets([(socket.AF_INET, socket.SOCK_STREAM, 0)])


def test_a_second_watchdog_runs_without_the_forward_check_and_takes_over_later(caplog) -> None:
    kernel = FakeKernel()
    kernel.links["vpnoffload-pb"] = 3  # another watchdog's
    ns = kernel.namespace()
    assert not ns.ensure() and not ns.ensure() and kernel.ran == []
    assert [r.getMessage() for r in caplog.records].count(
        "vpnoffload-pb exists already (another watchdog running?): running without the visitor-path check, "
        "trying again every 30 s") == 1
    del kernel.links["vpnoffload-pb"]  # that watchdog ended: its namespace took the link with it
    kernel.now += 10
    assert not ns.ensure()  # not yet: every RETRY s
    kernel.now += 21
    assert ns.ensure() and ns.available()
    ns.close()


def test_a_link_that_goes_turns_the_check_off_until_it_is_made_again() -> None:
    kernel = FakeKernel()
    ns = kernel.namespace()
    assert ns.ensure()
    kernel.links["vpnoffload-pb"] = 9  # deleted and made again by someone else: not ours
    assert not ns.ensure() and not ns.available()
    assert probe_namespace_prober(ns)(config().services["web"], "home", config(), True) is None
    del kernel.links["vpnoffload-pb"]
    kernel.now += 31
    assert ns.ensure()
    ns.close()


def test_a_failed_setup_removes_its_link_and_retries() -> None:
    kernel = FakeKernel()
    kernel.fail_on = "default"
    ns = kernel.namespace()
    assert not ns.ensure() and not ns.available()
    assert kernel.ran[-1] == ("MainThread", ["link", "del", "vpnoffload-pb"]) and not kernel.links
    assert not [t for t in threading.enumerate() if t.name == "probe-ns" and t.is_alive()]
    kernel.fail_on = None
    kernel.now += 30
    assert ns.ensure()
    ns.close()


def test_probe_thread_refused_by_the_kernel() -> None:
    def eperm() -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    ns = ProbeNamespace(ip=lambda args: pytest.fail("no ip without a namespace"), unshare=eperm,
                        index_of=lambda name: None)
    assert not ns.ensure() and not ns.available()
    ns.close()


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


def test_at_start_a_lost_check_gets_a_second_reading_of_the_flows() -> None:
    """A watchdog restarted under load decides at once: its first reading has no baseline, so it
    reads again a moment later instead of sending visitors to the page."""
    forward, swap = Forward(), Swapper()
    forward.blocked = True
    answers = iter([None, True])

    class Once(Flows):
        def replies_flowing(self, mark, mask, home):
            self.asked.append((mark, mask, home))
            return next(answers)

    flows = Once()
    dog = Watchdog(ConfigView.of(config()), swap, up, forward=forward, flows=flows)
    dog.start({})
    assert len(flows.asked) == 2 and dog.status["web"].active == "home" and dog.status["web"].reason == health.BUSY
