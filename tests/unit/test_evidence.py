"""watch.evidence and lean.counters: each home's own silence and each service's refusals as
doubt, read from the VPS's counts (xt_recent lists, nft counter objects); fake files, fake
netlink bytes, fake clock; exact values."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from tests.fakes import FakeNft, Swapper, prober
from tests.fakes import watchdog_config as config
from vpnoffload import firewall as fw
from vpnoffload.firewall.nft import NftBackend
from vpnoffload.lean import counters
from vpnoffload.plan import apply
from vpnoffload.watch import evidence, health, pace
from vpnoffload.watch.decide import Watchdog
from vpnoffload.watch.health import Result


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def recent_line(address: str, *stamps: int) -> str:
    """A line of /proc/net/xt_recent/NAME as the kernel prints it (recent_seq_show)."""
    listed = ", ".join(str(s) for s in stamps)
    return f"src={address} ttl: 64 last_seen: {max(stamps)} oldest_pkt: {len(stamps)} {listed}\n"


def test_names_and_what_is_one() -> None:
    assert (counters.home_in(1), counters.home_out(2), counters.refusals(3, 1)) == (
        "vpnoffload-in1", "vpnoffload-out2", "vpnoffload-rst3-1")
    assert [counters.is_counter(n) for n in ("vpnoffload-in1", "vpnoffload-out12", "vpnoffload-rst1-2")] == [True] * 3
    assert [counters.is_counter(n) for n in ("vpnoffload-rst1", "vpnoffload-in1-2", "vpnoffload-in", "in1",
                                             "someone-in1", "vpnoffload-1-a4-ff")] == [False] * 6


def test_xt_recent_stamps_become_a_packet_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = counters.RecentReader(str(tmp_path))
    lst = tmp_path / "vpnoffload-in1"
    assert reader.read(["vpnoffload-in1"]) == {}  # no list (no rule): no count at all
    lst.write_text(recent_line("198.51.100.2", 1000, 1001, 1001))
    assert reader.read(["vpnoffload-in1"]) == {"vpnoffload-in1": 3}  # the first reading: what it holds
    assert reader.read(["vpnoffload-in1"]) == {"vpnoffload-in1": 3}  # nothing new
    # Two more: one in the same jiffy as the newest before (1001), one later.
    lst.write_text(recent_line("198.51.100.2", 1000, 1001, 1001, 1001, 1005))
    assert reader.read(["vpnoffload-in1"]) == {"vpnoffload-in1": 5}
    # The ring wrapped: only the newest 20 stamps are listed, all after the last reading.
    lst.write_text(recent_line("198.51.100.2", *range(2000, 2020)))
    assert reader.read(["vpnoffload-in1"]) == {"vpnoffload-in1": 25}
    # The rule went: the kernel removed the list, and reading its open file fails (EIO).
    lst.unlink()
    def removed(fd: int, size: int, offset: int) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(counters.os, "pread", removed)
    assert reader.read(["vpnoffload-in1"]) == {}  # opened afresh: no such list any more
    monkeypatch.undo()
    assert reader._fds == {}
    # ... and its count starts afresh when it comes back.
    lst.write_text(recent_line("198.51.100.2", 3000))
    assert reader.read(["vpnoffload-in1"]) == {"vpnoffload-in1": 1}
    assert counters.parse_recent(b"garbage\n" + recent_line("10.0.0.1", 7, 9).encode()) == [7, 9]


def test_a_name_no_longer_read_loses_its_file_and_state(tmp_path: Path) -> None:
    """A reload that drops a home or service stops reading its lists: nothing of them stays open."""
    reader = counters.RecentReader(str(tmp_path))
    for name in ("vpnoffload-in1", "vpnoffload-in2"):
        (tmp_path / name).write_text(recent_line("198.51.100.2", 1000, 1001))
    assert reader.read(["vpnoffload-in1", "vpnoffload-in2"]) == {"vpnoffload-in1": 2, "vpnoffload-in2": 2}
    assert reader.read(["vpnoffload-in1"]) == {"vpnoffload-in1": 2}
    assert set(reader._fds) == set(reader._state) == {"vpnoffload-in1"}
    # Read again later, it starts afresh: what the list holds then, not counted from stale state.
    (tmp_path / "vpnoffload-in2").write_text(recent_line("198.51.100.2", 5000))
    assert reader.read(["vpnoffload-in2"]) == {"vpnoffload-in2": 1}
    assert set(reader._fds) == {"vpnoffload-in2"}
    reader.close()


def nft_counter_message(name: str, packets: int, table: str = "vpnoffload", flags: int = 0) -> bytes:
    def attr(kind: int, payload: bytes) -> bytes:
        return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)

    data = attr(counters.NFTA_COUNTER_PACKETS, struct.pack("!Q", packets)) + attr(1, struct.pack("!Q", 99))
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attr(counters.NFTA_OBJ_TABLE, table.encode() + b"\0") \
        + attr(counters.NFTA_OBJ_NAME | flags, name.encode() + b"\0") + attr(counters.NFTA_OBJ_TYPE, struct.pack("!I", 1)) \
        + attr(counters.NFTA_OBJ_DATA | counters.NLA_F_NESTED, data)
    kind = (counters.NFNL_SUBSYS_NFTABLES << 8) | counters.NFT_MSG_NEWOBJ  # as the kernel answers a dump
    return struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body


def test_nft_counters_request_and_reply_bytes() -> None:
    request = counters.getobj_request(7)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq, pid) == (len(request), (10 << 8) | 19, 0x301, 7, 0)
    assert b"vpnoffload\0" in request
    found: dict[str, int] = {}
    done = struct.pack("=IHHII", 20, counters.NLMSG_DONE, 2, 1, 0) + b"\0" * 4
    reply = nft_counter_message("vpnoffload-in1", 12) + nft_counter_message("vpnoffload-rst1-1", 3) \
        + nft_counter_message("other", 5, table="filter")
    assert counters.parse_getobj(reply, found) is False  # more may follow
    assert counters.parse_getobj(done, found) is True
    assert found == {"vpnoffload-in1": 12, "vpnoffload-rst1-1": 3}
    # An attribute with NLA_F_NET_BYTEORDER set (0x4000) is still the same attribute.
    counters.parse_getobj(nft_counter_message("vpnoffload-in2", 4, flags=0x4000), found)
    assert found["vpnoffload-in2"] == 4


def counts(seq: list[dict[str, int]]):
    """A reader that returns the next reading each time (the last one again after that)."""
    def read(names) -> dict[str, int]:
        wanted = set(names)
        now = seq.pop(0) if len(seq) > 1 else seq[0]
        return {n: c for n, c in now.items() if n in wanted}
    return read


def two_homes(out1: int, in1: int, out2: int, in2: int, **more: int) -> dict[str, int]:
    return {"vpnoffload-out1": out1, "vpnoffload-in1": in1, "vpnoffload-out2": out2, "vpnoffload-in2": in2,
            **{k.replace("_", "-"): v for k, v in more.items()}}


def test_one_home_s_silence_is_doubt_whatever_the_other_sends() -> None:
    clock = Clock()
    cfg = config(backups=("attic",))
    # home (1): packets go in, nothing back; attic (2): busy both ways all along.
    ev = evidence.Evidence(counts([two_homes(10, 50, 10, 10), two_homes(11, 50, 20, 20), two_homes(12, 50, 30, 30),
                                   two_homes(13, 50, 40, 40), two_homes(14, 50, 50, 50)]), clock, lambda: cfg)
    seen = []
    for _ in range(5):
        seen.append(ev.sample())
        clock.now += 0.05
    # silent since the reading at 0.05 (sent, nothing back), doubt at 0.15
    assert seen == [False, False, False, True, True]
    # (as of now, 0.25: silent since 0.05)
    assert ev.silent("home") == pytest.approx(0.2) and ev.silent("attic") == 0.0
    assert ev.silent_for() == pytest.approx(0.2)


def test_a_dead_backup_s_silence_is_no_doubt_and_a_vanished_count_none() -> None:
    clock = Clock()
    cfg = config(backups=("attic",))
    ev = evidence.Evidence(counts([two_homes(10, 10, 10, 5), two_homes(11, 11, 11, 5), two_homes(12, 12, 12, 5),
                                   two_homes(13, 13, 13, 5), {}]), clock, lambda: cfg,
                           watched=lambda home: home != "attic")
    seen = []
    for _ in range(5):
        seen.append(ev.sample())
        clock.now += 0.05
    assert seen == [False, False, False, False, False]  # attic silent but unwatched, then every count gone
    assert ev.silent("attic") == 0.0  # the counts went: no reading, no silence


def test_an_unwatched_home_s_silence_ends_no_round() -> None:
    clock = Clock()
    cfg = config(backups=("attic",))
    ev = evidence.Evidence(counts([two_homes(10, 10, 10, 5), two_homes(11, 11, 11, 5), two_homes(12, 12, 12, 5)]),
                           clock, lambda: cfg, watched=lambda home: home != "attic")
    for _ in range(3):
        ev.sample()
        clock.now += 0.05
    assert ev.silent("attic") == pytest.approx(0.1) and ev.silent("home") == 0.0 and ev.silent_for() == 0.0


def test_a_reset_on_a_service_s_connections_hurries_once_and_is_no_doubt() -> None:
    clock = Clock()
    cfg = config()
    both = {"vpnoffload-out1": 5, "vpnoffload-in1": 5}
    ev = evidence.Evidence(counts([{**both, "vpnoffload-rst1-1": 4}, {**both, "vpnoffload-rst1-1": 4},
                                   {**both, "vpnoffload-rst1-1": 6}, {**both, "vpnoffload-rst1-1": 6}]),
                           clock, lambda: cfg)
    assert [ev.sample(), ev.sample()] == [False, False]  # the first reading is the baseline
    assert ev.sample() is False and ev.refused == {("web", "home")}  # no doubt: no swap child, no page
    assert ev.hurry() is True and ev.hurry() is False  # it ends the wait, once
    assert ev.sample() is False and ev.refused == set() and ev.hurry() is False
    # Which counts it reads: each home's in/out and the resets of each DNATed TCP service on it.
    assert counters.layout(cfg) == ({"home": 1, "attic": 2},
                                    {"home": [("web", "vpnoffload-rst1-1"), ("git", "vpnoffload-rst2-1")],
                                     "attic": []})


def resets(clock: Clock, per_reading: int = 1):
    """Counts of a healthy home that resets ``per_reading`` more web connections at each reading."""
    def read(names) -> dict[str, int]:
        read.n += per_reading  # type: ignore[attr-defined]
        return {"vpnoffload-out1": 5, "vpnoffload-in1": 5, "vpnoffload-rst1-1": read.n}  # type: ignore[attr-defined]
    read.n = 0  # type: ignore[attr-defined]
    return read


def test_resets_hurry_one_round_per_service_per_interval_unless_its_last_check_failed() -> None:
    clock = Clock()
    cfg = config()  # watch.interval 0.5 s
    failed: set[tuple[str, str]] = set()
    ev = evidence.Evidence(resets(clock), clock, lambda: cfg, failing=lambda svc, home: (svc, home) in failed)
    hurried = []
    for _ in range(20):  # a reset at every reading, every 1/16 s, for 1.25 s
        assert ev.sample() is False  # never doubt
        if ev.hurry():
            hurried.append(clock.now)
        clock.now += 0.0625
    assert hurried == [0.0625, 0.5625, 1.0625]  # (the first reading is the baseline)
    failed.add(("web", "home"))  # its last check failed: each reset hurries the next round
    assert all(ev.sample() is False and ev.hurry() for _ in range(5))


def test_resets_end_the_wait_but_never_call_on_doubt() -> None:
    """A reset during a round forks no swap child and starts no page server; between rounds
    it ends the wait at once (the "web server stopped" case stays fast)."""
    clock = Clock()
    cfg = config()
    ev = evidence.Evidence(resets(clock), clock, lambda: cfg)

    class Thread:
        def is_alive(self) -> bool:
            return clock.now < 0.4

        def join(self, seconds: float) -> None:
            clock.now += seconds

    doubts: list[int] = []
    assert pace.watch_round(ev, [Thread()], 0.5, 0.6, lambda: doubts.append(1)) is False
    assert doubts == [] and ev.refused  # refused all along, and no doubt

    class Stop:
        def wait(self, seconds: float) -> bool:
            clock.now += seconds
            return False

    clock.now = 10.0  # an interval later
    started = clock.now
    assert pace.wait(Stop(), 5.0, ev) is True and clock.now - started == pytest.approx(pace.POLL)


def test_the_tunnel_device_still_speaks_for_a_single_home_and_its_going() -> None:
    clock = Clock()
    cfg = config()
    tunnel = pace.Silence(lambda: (10 + int(clock.now * 20), 50), clock)  # in, nothing back
    ev = evidence.Evidence(counts([{}]), clock, lambda: cfg, tunnel)  # no per-home counts (old rules)
    seen = []
    for _ in range(5):
        seen.append(ev.sample())
        clock.now += 0.05
    assert seen == [False, False, False, True, True]
    assert ev.silent("home") == 0.0  # two homes in this config: the device speaks for none


LOST = Result("down", 0.5, "connect: timed out", timed_out=True, reason=health.HOME_UNREACHABLE)


class Silent:
    """Evidence whose round is confirmed, with ``home`` silent for ``seconds``."""

    def __init__(self, silent: dict[str, float]) -> None:
        self.seconds = silent
        self.clock = lambda: 0.0

    def sample(self) -> bool:
        return True  # doubt all along

    def silent_for(self) -> float:
        return 0.0  # never confirms a round by itself

    def silent(self, home: str) -> float:
        return self.seconds.get(home, 0.0)


def test_a_round_confirms_only_the_homes_that_were_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    swap = Swapper()
    dog = Watchdog(config(backups=("attic",)), swap, prober=lambda svc, home, cfg: LOST)

    def fake_round(silence, threads, deadline, confirm, on_doubt):
        for t in threads:
            t.join(2)
        return True

    monkeypatch.setattr(pace, "watch_round", fake_round)
    dog.silence = Silent({"home": 0.7})
    assert dog.tick() == frozenset({"web", "git"})
    # home: silent 0.7 s >= 0.1 + timeout (0.5): its lost checks count as fall; attic's count once.
    assert [dog.status["web"].homes[h].fails for h in ("home", "attic")] == [2, 1]
    assert dog.status["web"].homes["home"].healthy is False and dog.status["web"].homes["attic"].healthy is True
    assert swap.calls == [({"web": "attic", "git": None}, frozenset({"web", "git"}))]


def test_evidence_never_fails_a_home_by_itself() -> None:
    """Doubt only starts a round: a home whose checks pass stays, however much it refused."""
    swap = Swapper()
    dog = Watchdog(config(), swap, prober=prober({}))
    dog.silence = Silent({"home": 5.0})  # (not confirmed: nothing was lost)
    assert dog.tick() == frozenset() and swap.calls == []
    assert dog.status["web"].homes["home"].fails == 0


def test_the_counting_rules_round_trip_through_nft_and_go_with_down() -> None:
    fake = FakeNft()
    backend = NftBackend(run=fake)
    desired = fw.vps_ruleset(config())
    apply(fw.plan(backend, desired))
    assert backend.read() == desired and fw.plan(backend, desired) == []
    first = len(fake.batches)
    table = fake.tables[("ip", "vpnoffload")]
    assert sorted(table["counters"]) == ["vpnoffload-in1", "vpnoffload-in2", "vpnoffload-out1", "vpnoffload-out2",
                                         "vpnoffload-rst1-1", "vpnoffload-rst2-1"]
    assert {"counter": "vpnoffload-rst1-1"} in next(r for r in table["rules"]["VPNOFFLOAD-EVIN"]
                                                    if {"counter": "vpnoffload-rst1-1"} in r)
    # A swap rewrites the table: the counts stay (declared once, never deleted while named).
    apply(fw.plan(backend, fw.vps_ruleset(config(), fallback=frozenset({"web"}))))
    assert not any("counter" in next(iter(c.values())) for b in fake.batches[first:] for c in b)
    assert len(table["counters"]) == 6 and backend.read() == fw.vps_ruleset(config(), fallback=frozenset({"web"}))
    apply(fw.plan(backend, fw.empty_ruleset()))
    assert fake.tables == {}


def test_packets_to_home_are_counted_after_every_verdict() -> None:
    """Only mangle POSTROUTING leads to the "out" counts: a packet the VPS drops or rejects
    (an access list, a down service's refusal, the final DROP) was never sent to home."""
    rules = fw.vps_ruleset(config()).rules
    jumps = [(r.table, r.chain) for r in rules if r.target == "VPNOFFLOAD-EVOUT"]
    assert jumps == [("mangle", "POSTROUTING")]
    outs = [r for r in rules if any(a.startswith(counters.home_out(0)[:-1]) for a in r.args)]
    assert outs and all((r.table, r.chain) == ("mangle", "VPNOFFLOAD-EVOUT") for r in outs)
    assert sorted(r.chain for r in rules if r.target == "VPNOFFLOAD-EVIN") == ["FORWARD", "INPUT"]


def test_a_write_of_one_table_keeps_the_counters_another_tables_rules_name() -> None:
    """Named counters belong to the whole nft table: rewriting filter alone must not delete
    the "out" counters mangle's rules count into, nor mangle alone filter's."""
    fake = FakeNft()
    backend = NftBackend(run=fake)
    desired = fw.vps_ruleset(config())
    apply(fw.plan(backend, desired))
    def named() -> list[str]:
        return sorted(fake.tables[("ip", "vpnoffload")]["counters"])

    before = named()
    empty = fw.empty_ruleset()
    backend.write("filter", empty)
    assert named() == [counters.home_out(1), counters.home_out(2)]
    backend.write("filter", desired.table("filter"))
    assert named() == before
    backend.write("mangle", empty)
    assert counters.home_out(1) not in named() and counters.home_in(1) in named()
    backend.write("mangle", desired.table("mangle"))
    assert named() == before and backend.read() == desired
