"""watch.decide beyond fall/rise (test_watchdog.py): which checks run with which arguments, how
a round is read against the tunnel's traffic, what the state file shows, when the page is
needed. Written against the survivors of a mutation run (docs/testing.md)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from tests.fakes import Swapper, prober
from tests.fakes import watchdog_config as config
from vpnoffload.errors import BackendError
from vpnoffload.lean.snapshot import ConfigView
from vpnoffload.model import Check, Config, Home, Service, Tunnel, Vps, Watch
from vpnoffload.watch import decide, health
from vpnoffload.watch.decide import Watchdog
from vpnoffload.watch.health import Result


def one_home(services: dict[str, Service] | None = None) -> Config:
    """One home box: the tunnel's traffic counts as evidence only then."""
    return Config(
        vps=Vps(IPv4Address("203.0.113.10")),
        tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
        homes={"home": Home("home", IPv4Address("198.51.100.2"))},
        services=services or {"web": Service("web", IPv4Address("203.0.113.10"), 80, "home", 8080, fallback="page")},
        watch=Watch(fall=2, rise=2),
    )


class Namespace:
    def __init__(self, up: bool = True) -> None:
        self.up = up

    def available(self) -> bool:
        return self.up

    def sockets(self, specs):  # pragma: no cover - handed over, never called here
        raise AssertionError


def test_the_forward_check_goes_where_a_visitor_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(health, "forward_probe", lambda *a: calls.append(a) or Result("up", 0.1, "connected"))
    ns = Namespace()
    forward = decide.probe_namespace_prober(ns)
    model = config()
    c = ConfigView.of(model)
    web = c.services["web"]
    assert forward(web, "home", c, True) == Result("up", 0.1, "connected")
    assert forward(web, "attic", c, False) == Result("up", 0.1, "connected")
    assert calls == [(ns.sockets, "203.0.113.10", 80, 0.5, "198.51.100.2"),
                     (ns.sockets, "198.51.100.3", 8080, 0.5, "198.51.100.3")]
    # On a 1:1-NAT cloud the public address arrives as the private one: that is where DNAT matches.
    calls.clear()
    natted = ConfigView.of(replace(model, vps=replace(model.vps, local_address=IPv4Address("10.0.0.10"))))
    forward(natted.services["web"], "home", natted, True)
    assert calls == [(ns.sockets, "10.0.0.10", 80, 0.5, "198.51.100.2")]
    # No evidence: proxied and IPv6 services, or no probe namespace.
    calls.clear()
    proxied = ConfigView.of(replace(model, services={"web": replace(model.services["web"], via="proxy")}))
    assert forward(proxied.services["web"], "home", proxied, True) is None
    v6 = ConfigView.of(replace(model, services={"web": replace(model.services["web"],
                                                                listen_address=IPv6Address("2001:db8::80"))}))
    assert forward(v6.services["web"], "home", v6, True) is None
    assert decide.probe_namespace_prober(Namespace(up=False))(web, "home", c, True) is None
    assert calls == []


def test_the_default_check_is_the_services_own(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(health, "probe", lambda *a, **kw: calls.append((a, kw)) or Result("up", 0.1, "x"))
    c = config()
    svc = replace(c.services["web"], check=Check("http", "/h"), hostname="blog.example.org")
    assert decide.default_prober(svc, "attic", c) == Result("up", 0.1, "x")
    assert calls == [(("198.51.100.3", 8080, Check("http", "/h"), 0.5), {"host_header": "blog.example.org"})]


def rounds(c: Config, results: dict[str, Result], packets: list[int], forward=None) -> Watchdog:
    counter = iter(packets)
    return Watchdog(c, Swapper(), prober=lambda svc, home, cfg: results[svc.name], activity=lambda: next(counter),
                    forward=forward)


LOST = Result("down", 0.5, "connect: timed out", timed_out=True, reason=health.HOME_UNREACHABLE)
BLOCKED = Result("down", 0.5, "connect: timed out", timed_out=True, reason=health.PATH_BLOCKED)


def test_a_lost_check_while_home_keeps_sending_is_a_busy_tunnel() -> None:
    dog = rounds(one_home(), {"web": LOST}, [100, 101])
    got = dog._checked()["web"]["home"]
    # Issue 21: excused (it still timed out), and not an answer from home for the tunnel line.
    assert (got.verdict, got.detail, got.reason, got.timed_out, got.home_answered) == (
        "slow", "connect: timed out (home still sending)", health.BUSY, True, False)
    assert rounds(one_home(), {"web": LOST}, [100, 100])._checked()["web"]["home"] is LOST  # nothing came
    refused = Result("down", 0.01, "connect: Connection refused", reason=health.TARGET_REFUSED)
    assert rounds(one_home(), {"web": refused}, [100, 500])._checked()["web"]["home"] is refused  # an answer
    # Never a way back: on the page, home's traffic excuses nothing.
    away = rounds(one_home(), {"web": LOST}, [100, 101])
    away.status["web"].active = None
    assert away._checked()["web"]["home"] is LOST


def test_a_blocked_path_is_never_excused_by_the_tunnels_traffic() -> None:
    """Issue 21: however much comes from the tunnel, a lost visitor-path check stays a block
    (only the service's own visitors' flows may excuse it: test_forward_path.py)."""
    for packets in ([0, 64], [0, 1_000_000]):
        assert rounds(one_home(), {"web": BLOCKED}, packets)._checked()["web"]["home"] is BLOCKED


def test_traffic_is_no_evidence_with_several_homes_or_no_counter() -> None:
    assert rounds(config(), {"web": LOST, "git": LOST}, [0, 1000])._checked()["web"]["home"] is LOST
    dog = Watchdog(one_home(), Swapper(), prober=lambda *a: LOST, activity=lambda: None)
    assert dog._checked()["web"]["home"] is LOST
    dog = Watchdog(one_home(), Swapper(), prober=lambda *a: LOST)
    assert dog._checked()["web"]["home"] is LOST


def test_every_home_is_checked_and_a_broken_check_counts_as_failed() -> None:
    def probe(svc, home, cfg):
        if home == "attic":
            raise RuntimeError("boom")
        return Result("up", 0.1, "connected")

    c = config(backups=("attic",))
    got = Watchdog(c, Swapper(), prober=probe)._probe_all()
    assert set(got) == {"web", "git"} and set(got["web"]) == {"home", "attic"} and set(got["git"]) == {"home"}
    broken = got["web"]["attic"]
    assert (broken.verdict, broken.detail, broken.reason) == ("down", "check error: boom", health.CHECK_ERROR)
    one = Watchdog(one_home(), Swapper(), prober=lambda *a: (_ for _ in ()).throw(ValueError("odd")))._probe_all()
    assert one["web"]["home"].detail == "check error: odd"


def test_the_forward_check_runs_only_after_a_passing_direct_one_and_knows_the_visitors_home() -> None:
    asked = []

    def forward(svc, home, cfg, visitor):
        asked.append((svc.name, home, visitor))
        return BLOCKED

    c = config(backups=("attic",))
    verdicts = {"web@home": "up", "web@attic": "up", "git": "down"}
    got = Watchdog(c, Swapper(), prober=prober(verdicts), forward=forward)._probe_all()
    # Issue 21: both checks run side by side within the round's deadline, so git's forward check
    # runs too; its failed direct check speaks for itself all the same.
    assert sorted(asked) == [("git", "home", True), ("web", "attic", False), ("web", "home", True)]
    assert got["web"]["home"].reason == health.PATH_BLOCKED and got["git"]["home"].verdict == "down"
    assert got["git"]["home"].reason != health.PATH_BLOCKED


def test_a_new_watchdog_shows_every_field_of_its_state() -> None:
    dog = Watchdog(one_home(), Swapper(), clock=lambda: 42.0)
    assert dog.snapshot() == {"updated": 42.0, "interval": 0.5, "homes": {"home": {"answered": False,
                                                                                   "last_answer": None}},
                              "openvpn": None, "services": [{
        "name": "web", "active": "home", "state": "forwarding", "healthy": True, "last_check": 0.0,
        "latency": None, "detail": "", "reason": "", "last_change": 0.0, "swaps": 0,
        "homes": {"home": {"healthy": True, "fails": 0, "passes": 0, "latency": None, "detail": "", "reason": "",
                           "answered": False, "last_answer": None}},
    }]}


def test_start_decides_at_once_and_flushes_only_what_moves() -> None:
    swap = Swapper()
    dog = Watchdog(config(backups=("attic",)), swap, prober=prober({"web@home": "down", "git": "up"}),
                   clock=lambda: 7.0)
    dog.start()
    assert swap.calls == [({"web": "attic", "git": "home"}, frozenset({"web"}))]
    web = dog.status["web"]
    assert (web.active, web.state, web.last_change, web.last_check, web.healthy) == ("attic", "forwarding", 7.0, 7.0,
                                                                                      True)
    assert not web.homes["home"].healthy and web.homes["home"].fails == 1 and web.homes["attic"].passes == 1
    swap2 = Swapper()
    Watchdog(config(backups=("attic",)), swap2, prober=prober({"web@home": "down"})).start({"web": "attic"})
    assert swap2.calls == [({"web": "attic", "git": "home"}, frozenset())]  # already there: nothing cut


def test_the_page_is_needed_on_fallback_or_as_soon_as_the_active_home_fails() -> None:
    dog = Watchdog(config(), Swapper(), prober=prober({}))
    assert not dog.page_needed()
    dog.status["git"].active = None  # not a page service
    assert not dog.page_needed()
    dog.status["web"].homes["home"].fails = 1
    assert dog.page_needed()
    dog.status["web"].homes["home"].fails = 0
    dog.status["web"].active = None
    assert dog.page_needed()


def test_a_tick_reports_what_it_swapped_and_counts_swaps() -> None:
    swap = Swapper()
    dog = Watchdog(config(fall=1, rise=1), swap, prober=prober({"web": "down"}), clock=lambda: 5.0)
    assert dog.tick() == frozenset({"web"})
    web = dog.status["web"]
    assert (web.active, web.state, web.swaps, web.last_change) == (None, "fallback", 1, 5.0)
    assert swap.calls[-1] == ({"web": None, "git": "home"}, frozenset({"web"}))
    assert dog.tick() == frozenset() and web.swaps == 1
    assert dog.fallback() == frozenset({"web"}) and dog.active() == {"web": None, "git": "home"}


def test_every_swap_is_logged_with_where_the_service_now_goes(caplog: pytest.LogCaptureFixture) -> None:
    """The watchdog's log is how a user learns what happened overnight."""
    import logging

    caplog.set_level(logging.WARNING, logger="vpnoffload.watch")
    verdicts = {"web@home": "down", "git": "up"}
    dog = Watchdog(config(fall=1, rise=1, backups=("attic",)), Swapper(), prober=prober(verdicts))
    dog.start()
    verdicts["web@attic"] = "down"
    dog.tick()
    verdicts.update({"web@home": "up", "web@attic": "up"})
    dog.tick()
    assert [r.getMessage() for r in caplog.records] == [
        "web: forwarding to attic at start (up)", "web: now on fallback (down)", "web: now forwarding to home (up)"]


def test_a_known_state_is_kept_and_a_removed_home_is_left() -> None:
    known = {"web": decide.ServiceStatus("web", "attic", state="forwarding")}
    known["web"].homes = {"home": decide.HomeHealth(healthy=False, fails=3, latency=0.2), "attic": decide.HomeHealth()}
    dog = Watchdog(config(backups=("attic",)), Swapper(), prober=prober({}), status=known)
    assert dog.status["web"] is known["web"] and dog.status["web"].homes["home"].fails == 3
    assert dog.status["web"].active == "attic"  # still one of web's homes: left where it was
    assert dog.status["web"].homes["home"].latency == 0.2
    dog.reconfigure(config())  # attic is no longer one of web's homes
    assert dog.status["web"].active == "home" and set(dog.status["web"].homes) == {"home"}
    assert dog.status["web"].homes["home"].fails == 3  # what was known of home stays
    on_page = Watchdog(config(), Swapper(), prober=prober({}))
    on_page.status["web"].active = None
    on_page.reconfigure(config())
    assert on_page.status["web"].active is None  # still on the page: not moved by a reload


def test_a_tick_shows_when_it_checked_and_warms_or_cools_the_swapper() -> None:
    swap = Swapper()
    verdicts = {"web": "down"}
    dog = Watchdog(config(fall=2, rise=2), swap, prober=prober(verdicts), clock=lambda: 9.0)
    dog.tick()
    assert dog.status["web"].last_check == 9.0 and swap.prepared == 1 and swap.cancelled == 0  # one more fails it
    verdicts["web"] = "up"
    dog.tick()
    assert swap.cancelled == 1 and dog.status["web"].homes["home"].healthy is True
    verdicts["web"] = "down"
    dog.tick()
    dog.tick()
    assert dog.status["web"].homes["home"].healthy is False


# --- the exact values a round carries (written against mutmut's survivors after issue 21's rewrite)

class Flows:
    """watch.flows.FlowEvidence's interface: scripted readings, every call recorded."""

    def __init__(self, readings: list[bool | None]) -> None:
        self.readings = readings
        self.reads: list[tuple[int, int, str]] = []
        self.forgotten: list[tuple[int, str]] = []

    def replies_flowing(self, mark: int, mask: int, home: str) -> bool | None:
        self.reads.append((mark, mask, home))
        return self.readings.pop(0) if self.readings else None

    def forget(self, mark: int, home: str) -> None:
        self.forgotten.append((mark, home))


def test_a_check_that_did_not_finish_is_a_lost_one_of_the_whole_timeout() -> None:
    got = decide._unfinished(0.5)
    assert (got.verdict, got.latency, got.detail, got.timed_out, got.reason) == (
        "down", 0.5, "check did not finish within 0.5 s", True, health.HOME_UNREACHABLE)


def test_the_busy_tunnel_verdict_keeps_the_checks_latency() -> None:
    got = rounds(one_home(), {"web": LOST}, [100, 101])._checked()["web"]["home"]
    assert got.latency == 0.5


def test_own_visitors_answered_excuse_a_blocked_path_as_load_with_the_checks_numbers() -> None:
    flows = Flows([True])
    dog = Watchdog(one_home(), Swapper(), prober=lambda *a: BLOCKED, flows=flows)
    got = dog._checked()["web"]["home"]
    assert (got.verdict, got.latency, got.detail, got.timed_out, got.reason) == (
        "slow", 0.5, "connect: timed out (its visitors are still answered)", False, health.BUSY)
    # The first service's connmark, under the mark mask, to this home's tunnel address.
    assert flows.reads == [(0x100000, 0x0FF00000, "198.51.100.2")]


def test_flows_are_read_twice_only_in_the_start_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decide, "START_SETTLE", 0.0)
    flows = Flows([None, True])  # no evidence at first, the visitors answered a moment later
    dog = Watchdog(one_home(), Swapper(), prober=lambda *a: BLOCKED, flows=flows)
    dog.start()
    assert len(flows.reads) == 2 and dog.status["web"].active == "home"  # read again: load, stays
    dog.tick()
    assert len(flows.reads) == 3  # later rounds compare with the round before: one reading
    assert flows.reads == [(0x100000, 0x0FF00000, "198.51.100.2")] * 3  # each one this service's, to this home
    fresh = Flows([None, True])
    Watchdog(one_home(), Swapper(), prober=lambda *a: BLOCKED, flows=fresh).tick()  # a round without start()
    assert len(fresh.reads) == 1


def test_a_visitor_path_check_that_did_not_finish_is_a_blocked_path() -> None:
    import time

    def forward(svc, home, cfg, visitor):
        time.sleep(1.5)  # past the round's deadline (watch.timeout 0.5 s + ROUND_GRACE)
        return Result("up", 1.5, "connected")

    got = Watchdog(one_home(), Swapper(), prober=lambda *a: Result("up", 0.1, "http 200"), forward=forward)._probe_all()
    web = got["web"]["home"]
    assert (web.verdict, web.reason, web.timed_out) == ("down", health.PATH_BLOCKED, True)
    assert web.detail == "http 200; along the visitors' path: check did not finish within 0.5 s"


def test_a_new_watchdog_has_nothing_to_commit() -> None:
    dog = Watchdog(config(), Swapper(), prober=prober({}))
    dog.committed()
    assert (dog.status["web"].active, dog.status["web"].swaps) == ("home", 0)


def test_the_other_homes_of_a_blocked_service_start_their_flows_afresh() -> None:
    flows = Flows([])
    results = {"home": BLOCKED, "attic": Result("up", 0.1, "connected")}
    dog = Watchdog(config(backups=("attic",)), Swapper(), prober=lambda svc, home, cfg: results[home], flows=flows)
    dog._checked()
    assert (0x100000, "198.51.100.3") in flows.forgotten  # web's attic, after web's blocked home


def test_start_asks_each_home_as_the_believed_rules_imply() -> None:
    asked = []

    def forward(svc, home, cfg, visitor):
        asked.append((svc.name, home, visitor))
        return None

    c = config(backups=("attic",))
    Watchdog(c, Swapper(), prober=prober({}), forward=forward).start({"web": "attic"})
    assert sorted(asked) == [("git", "home", True), ("web", "attic", True), ("web", "home", False)]
    asked.clear()
    Watchdog(c, Swapper(), prober=prober({}), forward=forward).start({"web": "gone"})  # not one of its homes
    assert sorted(asked) == [("git", "home", True), ("web", "attic", False), ("web", "home", True)]


def test_an_answer_is_timestamped_by_the_round_that_got_it() -> None:
    dog = Watchdog(config(), Swapper(), prober=prober({}), clock=lambda: 9.0)
    dog.tick()
    assert dog.status["web"].homes["home"].last_answer == 9.0


def test_a_swap_that_failed_before_its_commit_leaves_nothing_to_commit() -> None:
    swap = Swapper()
    swap.fail = True
    dog = Watchdog(config(fall=1, rise=1), swap, prober=prober({"web": "down"}))
    with pytest.raises(BackendError, match="^iptables: locked$"):
        dog.tick()
    dog.committed()  # a late call (the swapper's) finds nothing decided
    assert (dog.status["web"].active, dog.status["web"].swaps) == ("home", 0)


def test_a_decision_committed_by_the_swapper_is_taken_once() -> None:
    published = []

    class Committing(Swapper):
        def __call__(self, active, flush) -> None:
            super().__call__(active, flush)
            dog.committed()  # as the swap child reports the rules in

    dog = Watchdog(config(fall=1, rise=1), Committing(), prober=prober({"web": "down"}))
    dog.publish = lambda: published.append(dog.status["web"].active)
    assert dog.tick() == frozenset({"web"})
    assert dog.status["web"].swaps == 1 and published == [None]


def test_the_checks_get_the_config_and_run_in_daemon_threads() -> None:
    import threading

    seen = []

    def probe(svc, home, cfg):
        seen.append(("direct", cfg, threading.current_thread().daemon))
        return Result("up", 0.1, "connected")

    def forward(svc, home, cfg, visitor):
        seen.append(("forward", cfg, threading.current_thread().daemon))
        return None

    dog = Watchdog(config(), Swapper(), prober=probe, forward=forward)
    dog._probe_all()
    # Daemon threads: a check that hangs past the round's deadline cannot keep the process alive.
    assert seen and all(cfg is dog.config and daemon for _, cfg, daemon in seen), seen


def test_a_broken_check_took_no_time() -> None:
    got = Watchdog(config(), Swapper(), prober=lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))._probe_all()
    assert got["web"]["home"] == Result("down", 0.0, "check error: boom")


def test_the_page_is_needed_for_a_page_service_listed_after_another() -> None:
    c = config()
    git_first = replace(c, services={"git": c.services["git"], "web": c.services["web"]})
    dog = Watchdog(git_first, Swapper(), prober=prober({}))
    dog.status["web"].active = None
    assert dog.page_needed()


def test_a_home_answered_if_any_of_its_services_got_an_answer_and_shows_the_latest() -> None:
    dog = Watchdog(config(), Swapper(), prober=prober({}))
    web, git = dog.status["web"].homes["home"], dog.status["git"].homes["home"]
    web.answered, web.last_answer = True, 7.0
    git.answered, git.last_answer = False, 5.0
    assert dog.homes_seen()["home"] == {"answered": True, "last_answer": 7.0}
    web.last_answer, git.last_answer = 5.0, 7.0
    assert dog.homes_seen()["home"] == {"answered": True, "last_answer": 7.0}
