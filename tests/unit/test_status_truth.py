"""Issue 21 items 1, 2 and 5: status says what is true now. The tunnel line rests on the
watchdog's last round (or OpenVPN having just connected a home), a state older than two
intervals is marked stale, the watchdog publishes in the same step it swaps, and the report
is one typed structure with today's keys kept. No root: files in a temp dir."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from vpnoffload import status
from vpnoffload.errors import ExitStatus
from vpnoffload.lean.snapshot import ConfigView
from vpnoffload.model import Config, Home, Service, Tunnel, Vps, Watch
from vpnoffload.paths import Paths
from vpnoffload import watchfile as watch_state
from vpnoffload.watch.decide import Watchdog
from vpnoffload.watch.health import HOME_UNREACHABLE, Result

NOW = 1_800_000_000.0
CLIENT = ("TITLE\tOpenVPN 2.6.14\n"
          "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address\tBytes Received\t"
          "Bytes Sent\tConnected Since\tConnected Since (time_t)\tUsername\tClient ID\tPeer ID\tData Channel Cipher\n"
          "CLIENT_LIST\thome\t192.0.2.66:40000\t198.51.100.2\t\t100\t200\t2027-01-15 08:00:00\t{since}\tUNDEF\t0\t0\t"
          "AES-256-GCM\nEND\n")


def config() -> Config:
    return Config(vps=Vps(IPv4Address("203.0.113.10")), tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
                  homes={"home": Home("home", IPv4Address("198.51.100.2"))},
                  services={"web": Service("web", IPv4Address("203.0.113.10"), 80, "home", 8080, fallback="page")},
                  watch=Watch(interval=0.5, timeout=0.5))


@pytest.fixture
def site(tmp_path: Path, monkeypatch) -> Paths:
    paths = Paths.resolve(tmp_path / "vpnoffload.toml", tmp_path / "state")
    paths.server_dir.mkdir(parents=True)
    paths.run.mkdir(parents=True)
    monkeypatch.setattr(watch_state, "watch_pid", lambda p: 4242)
    return paths


def publish(paths: Paths, *, updated: float, answered: bool, healthy: bool = True, active: str | None = "home",
            last_answer: float | None = None) -> None:
    svc = {"name": "web", "active": active, "state": "forwarding" if active else "fallback", "healthy": healthy,
           "last_check": updated, "latency": 0.01, "detail": "http 200" if healthy else "connect: timed out",
           "reason": "" if healthy else HOME_UNREACHABLE, "last_change": None, "swaps": 0, "homes": {}}
    watch_state.write_state(paths.watch_state, {
        "updated": updated, "interval": 0.5, "pid": 4242, "services": [svc],
        "homes": {"home": {"answered": answered, "last_answer": last_answer if last_answer else (updated if answered else None)}}})


def openvpn_lists_home(paths: Paths, since: float) -> None:
    (paths.run / "openvpn-server.status").write_text(CLIENT.format(since=int(since)))


def report(paths: Paths, now: float = NOW) -> status.Report:
    return status.gather(config(), paths, server_running=True, now=now)


def test_a_home_openvpn_still_lists_but_that_did_not_answer_is_not_connected(site: Paths) -> None:
    """The cable is out: OpenVPN's keepalive has not noticed, the watchdog's last round has."""
    openvpn_lists_home(site, NOW - 600)
    publish(site, updated=NOW - 0.3, answered=False, healthy=False, active=None, last_answer=NOW - 4)
    rep = report(site)
    home = rep.data["tunnel"]["homes"][0]
    assert (rep.data["tunnel"]["up"], home["connected"], home["answered"], home["evidence"]) == (
        False, False, False, "watchdog")
    assert home["last_answer_age"] == pytest.approx(4.0)
    assert rep.exit_status == ExitStatus.UNHEALTHY
    text = "\n".join(status.render_text(rep.data))
    assert "tunnel: DOWN" in text and "not connected; last answer through the tunnel 4.0s ago" in text


def test_home_that_answered_in_the_last_round_is_connected(site: Paths) -> None:
    openvpn_lists_home(site, NOW - 600)
    publish(site, updated=NOW - 0.3, answered=True)
    rep = report(site)
    assert rep.data["tunnel"]["up"] and rep.data["tunnel"]["homes"][0]["connected"]
    assert rep.exit_status == ExitStatus.OK and rep.data["schema"] == status.SCHEMA


def test_openvpn_connecting_after_the_last_round_counts(site: Paths) -> None:
    """A home just back: OpenVPN told us it connected after the watchdog's last round."""
    publish(site, updated=NOW - 0.4, answered=False, healthy=False, active=None)
    openvpn_lists_home(site, NOW - 0.1)
    assert report(site).data["tunnel"]["homes"][0]["connected"]


def test_a_state_older_than_two_intervals_is_stale(site: Paths) -> None:
    publish(site, updated=NOW - 5, answered=True)
    openvpn_lists_home(site, NOW - 600)
    rep = report(site)
    assert rep.data["watchdog"]["stale"] and rep.data["services"][0]["stale"]
    # The tunnel line then rests on OpenVPN's own list, and says so.
    assert rep.data["tunnel"]["homes"][0]["evidence"] == "openvpn"
    text = "\n".join(status.render_text(rep.data))
    assert "STALE" in text and "(stale)" in text
    publish(site, updated=NOW - 0.9, answered=True)
    assert not report(site).data["watchdog"]["stale"]


def test_todays_keys_keep_their_names(site: Paths) -> None:
    publish(site, updated=NOW - 0.2, answered=True)
    data = json.loads(status.render(report(site), True))
    assert {"up", "server_running", "homes", "server_restarts"} <= set(data["tunnel"])
    assert {"name", "address", "connected", "since", "real_address"} <= set(data["tunnel"]["homes"][0])
    assert {"running", "pid", "updated"} <= set(data["watchdog"])
    assert {"name", "listen", "path", "target", "state", "home", "healthy", "last_check", "latency_ms",
            "last_change", "detail", "swaps", "reason"} <= set(data["services"][0])
    assert "offline_copy" not in data["services"][0]


def test_the_watchdog_publishes_in_the_same_step_as_the_swap() -> None:
    """What the state file says after a swap is what the rules now do: written before tick returns."""
    seen: list[tuple[str, object]] = []
    verdict = {"v": Result("up", 0.01, "http 200")}
    dog = Watchdog(ConfigView.of(config()), lambda active, flush: seen.append(("swap", dict(active))),
                   lambda svc, home, cfg: verdict["v"], clock=lambda: NOW)
    dog.publish = lambda: seen.append(("publish", dog.snapshot()["services"][0]["active"]))  # type: ignore[index]
    dog.start({})
    assert seen == [("swap", {"web": "home"}), ("publish", "home")]
    seen.clear()
    verdict["v"] = Result("down", 0.5, "connect: timed out", timed_out=True, reason=HOME_UNREACHABLE)
    dog.tick()
    dog.tick()
    assert seen == [("swap", {"web": None}), ("publish", None)]
    snap = dog.snapshot()
    assert snap["homes"] == {"home": {"answered": False, "last_answer": NOW}} and snap["interval"] == 0.5


def test_openvpn_list_comes_from_the_watchdogs_management_read(site: Paths) -> None:
    """The watchdog read OpenVPN's live list this round: status uses it, not the 2 s status file."""
    publish(site, updated=NOW - 0.2, answered=True)
    data = json.loads(site.watch_state.read_text())
    data["openvpn"] = {"read_at": NOW - 0.2, "clients": {"home": {
        "real_address": "192.0.2.66:40000", "since": "2027-01-15 08:00:00", "since_time": NOW - 60,
        "bytes_received": 1234, "bytes_sent": 5678}}}
    watch_state.write_state(site.watch_state, data)
    home = report(site).data["tunnel"]["homes"][0]
    assert (home["openvpn_view"], home["bytes_received"], home["real_address"]) == ("management", 1234,
                                                                                   "192.0.2.66:40000")


def test_traffic_from_the_tunnel_keeps_a_serving_home_but_never_brings_one_back() -> None:
    """A lost check excused by home's traffic through the tunnel keeps the service where it is;
    on fallback it is a failed check (no way back on it), and neither time is it an answer
    from home (the tunnel line)."""
    rx = {"n": 0}
    lost = Result("down", 0.5, "connect: timed out", timed_out=True, reason=HOME_UNREACHABLE)

    def sending() -> int:
        rx["n"] += 500
        return rx["n"]

    dog = Watchdog(config(), lambda active, flush: None, lambda svc, home, cfg: lost, clock=lambda: NOW,
                   activity=sending)
    dog.start({"web": None})  # a watchdog that starts with the service on the page
    assert dog.status["web"].active is None
    for _ in range(3):
        dog.tick()
    hh = dog.status["web"].homes["home"]
    assert dog.status["web"].active is None and not dog.status["web"].healthy and hh.passes == 0
    assert not dog.homes_seen()["home"]["answered"]
    up_dog = Watchdog(config(), lambda active, flush: None, lambda svc, home, cfg: Result("up", 0.01, "http 200"),
                      clock=lambda: NOW, activity=sending)
    up_dog.start({})
    up_dog.prober = lambda svc, home, cfg: lost
    for _ in range(3):
        up_dog.tick()
    st = up_dog.status["web"]
    assert st.active == "home" and st.healthy and "home still sending" in st.detail
    assert not up_dog.homes_seen()["home"]["answered"]


def test_the_state_is_published_the_moment_the_swap_child_says_the_rules_are_in() -> None:
    """The swap child says "applied" once the rules are committed and only then forgets old flows
    (a second or so with pyroute2): the watchdog publishes on that line, not when the child ends."""
    import sys
    import time as clock

    from vpnoffload.lean import spawn
    from vpnoffload.watch import loop, swap

    assert loop.APPLIED == swap.APPLIED
    child = spawn.spawn([sys.executable, "-I", "-c", "import sys, time; sys.stdin.readline(); "
                         "sys.stdout.buffer.write(b'applied\\n'); sys.stdout.flush(); time.sleep(0.5)"],
                        stdin=True, stdout=True, stderr=True)
    seen: list[float] = []
    started = clock.monotonic()
    loop._until_applied(child, b'{"active": {}}\n', 5.0, lambda: seen.append(clock.monotonic() - started))
    spawn.finish(child, b"", 5.0, "swap")
    ended = clock.monotonic() - started
    assert len(seen) == 1 and seen[0] < ended - 0.3, (seen, ended)


def test_a_swap_that_fails_after_the_commit_keeps_the_published_state() -> None:
    """The rules changed, then forgetting the flows failed: the state says what the rules do."""
    from vpnoffload.errors import BackendError

    published: list[object] = []
    dog = Watchdog(config(), lambda active, flush: None, lambda svc, home, cfg: Result("up", 0.01, "http 200"),
                   clock=lambda: NOW)
    dog.start({})

    def swap(active, flush) -> None:
        dog.committed()  # what the swapper does on the child's "applied"
        raise BackendError("cannot delete conntrack entries")

    dog.swap = swap
    dog.publish = lambda: published.append(dog.status["web"].active)
    dog.prober = lambda svc, home, cfg: Result("down", 0.5, "connect: timed out", timed_out=True,
                                               reason=HOME_UNREACHABLE)
    dog.tick()
    with pytest.raises(BackendError):
        dog.tick()
    assert dog.status["web"].active is None and published[-1] is None
