"""Issue 21 item 3: the service's own visitors' flows as evidence (watch/flows.py), no root:
conntrack's text as the tool prints it, readings compared one round apart."""

from __future__ import annotations

from vpnoffload.watch import flows
from vpnoffload.watch.flows import FlowEvidence, parse

ACCT = ("tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=203.0.113.10 sport={port} dport=80 packets=5 bytes=300 "
        "src=10.88.0.2 dst=192.0.2.2 sport=8080 dport={port} packets={replies} bytes=900 [ASSURED] mark=1048576 use=1")
PLAIN = ("tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=203.0.113.10 sport={port} dport=80 "
         "src=10.88.0.2 dst=192.0.2.2 sport=8080 dport={port} [ASSURED] mark=1048576 use=1")
UNREPLIED = ("tcp      6 119 SYN_SENT src=192.0.2.2 dst=203.0.113.10 sport={port} dport=80 [UNREPLIED] "
             "src=10.88.0.2 dst=192.0.2.2 sport=8080 dport={port} mark=1048576 use=1")


def test_parse_keys_by_the_original_tuple_and_counts_replies() -> None:
    text = "\n".join([ACCT.format(port=51000, replies=4), ACCT.format(port=51001, replies=9),
                      UNREPLIED.format(port=51002), "conntrack v1.4.7: 3 flow entries have been shown."])
    got = parse(text)
    assert sorted(got.values()) == [4, 9]
    # The same connection read again has the same key, whatever its counts now.
    assert set(parse(ACCT.format(port=51000, replies=40))) <= set(got)
    assert list(parse(PLAIN.format(port=51000)).values()) == [1]  # no nf_conntrack_acct: answered counts 1


class Readings:
    def __init__(self) -> None:
        self.next: dict[int, int] | None = {}
        self.now = 0.0

    def read(self, mark: int, mask: int, home: str) -> dict[int, int] | None:
        return self.next

    def evidence(self) -> FlowEvidence:
        return FlowEvidence(self.read, clock=lambda: self.now)


def test_replies_flow_when_counts_grow_or_new_answered_connections_appear() -> None:
    r = Readings()
    ev = r.evidence()
    r.next = {1: 4, 2: 9}
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is None  # the first reading is the baseline
    r.now += 0.5
    r.next = {1: 4, 2: 10}  # keep-alive visitors still answered
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is True
    r.now += 0.5
    r.next = {3: 1}  # new connections answered (the old ones closed)
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is True


def test_a_block_freezes_the_counts() -> None:
    r = Readings()
    ev = r.evidence()
    r.next = {1: 4, 2: 9}
    ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2")
    for _ in range(3):
        r.now += 0.5
        assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is False
    r.next = {}  # the entries expired or were flushed: still nothing answered
    r.now += 0.5
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is False


def test_old_or_missing_readings_are_no_evidence() -> None:
    r = Readings()
    ev = r.evidence()
    r.next = {1: 4}
    ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2")
    r.now += flows.MAX_GAP + 1
    r.next = {1: 5}
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is None  # too old to compare with
    r.next = None  # the tool is missing or did not answer in time
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is None
    r.next = {1: 6}
    ev.forget(0x100000, "10.88.0.2")
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is None
    # Each service and home has its own baseline.
    assert ev.replies_flowing(0x200000, 0x0FF00000, "10.88.0.2") is None


def test_read_conntrack_asks_the_tool_for_one_service_and_home(tmp_path, monkeypatch) -> None:
    """The reading runs the conntrack tool in a short-lived child, filtered by the kernel and the tool."""
    argv_file = tmp_path / "argv"
    tool = tmp_path / "conntrack"
    tool.write_text("#!/bin/sh\n"
                    f"echo \"$@\" > {argv_file}\n"
                    f"echo '{ACCT.format(port=51000, replies=7)}'\n"
                    "echo 'conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.' >&2\n")
    tool.chmod(0o755)
    monkeypatch.setattr(flows, "conntrack_binary", lambda: str(tool))
    got = flows.read_conntrack(0x100000, 0x0FF00000, "10.88.0.2")
    assert got is not None and list(got.values()) == [7]
    assert argv_file.read_text().split() == ["-L", "-f", "ipv4", "-p", "tcp", "--state", "ESTABLISHED", "--mark",
                                             "0x100000/0xff00000", "--reply-src", "10.88.0.2"]
    tool.write_text("#!/bin/sh\nsleep 5\n")
    monkeypatch.setattr(flows, "READ_TIMEOUT", 0.2)
    assert flows.read_conntrack(0x100000, 0x0FF00000, "10.88.0.2") is None  # no answer in time: no evidence
    monkeypatch.setattr(flows, "conntrack_binary", lambda: None)
    assert flows.read_conntrack(0x100000, 0x0FF00000, "10.88.0.2") is None


# --- exact behaviour (written against mutmut's survivors; docs/testing.md)

def test_parse_keys_on_the_original_four_fields_only() -> None:
    """The key is the original direction's src, dst, sport and dport, joined by spaces: the
    reply tuple, the counters and the state do not change it."""
    got = parse(ACCT.format(port=51000, replies=4))
    assert list(got) == [hash("src=192.0.2.2 dst=203.0.113.10 sport=51000 dport=80")]
    # Connections that differ in one original field only are different connections.
    for other in ("src=192.0.2.3 dst=203.0.113.10 sport=51000 dport=80",
                  "src=192.0.2.2 dst=203.0.113.11 sport=51000 dport=80",
                  "src=192.0.2.2 dst=203.0.113.10 sport=51000 dport=443"):
        line = ACCT.format(port=51000, replies=4).replace("src=192.0.2.2 dst=203.0.113.10 sport=51000 dport=80", other)
        assert list(parse(line)) == [hash(other)], other


def test_parse_skips_lines_it_cannot_use_and_reads_on() -> None:
    text = "\n".join(["conntrack v1.4.7 (conntrack-tools): header without a tuple",
                      UNREPLIED.format(port=51002),
                      "tcp 6 10 ESTABLISHED src=192.0.2.2 dst=203.0.113.10 sport=51003 dport=80",  # no reply tuple
                      ACCT.format(port=51000, replies=4)])
    assert list(parse(text).values()) == [4]


def test_parse_keeps_at_most_max_entries(monkeypatch) -> None:
    monkeypatch.setattr(flows, "MAX_ENTRIES", 2)
    got = parse("\n".join(ACCT.format(port=51000 + i, replies=i + 1) for i in range(3)))
    assert sorted(got.values()) == [1, 2]


def test_read_conntrack_asks_for_ipv6_flows_for_an_ipv6_home(tmp_path, monkeypatch) -> None:
    argv_file = tmp_path / "argv"
    tool = tmp_path / "conntrack"
    tool.write_text(f"#!/bin/sh\necho \"$@\" > {argv_file}\n")
    tool.chmod(0o755)
    monkeypatch.setattr(flows, "conntrack_binary", lambda: str(tool))
    assert flows.read_conntrack(0x100000, 0x0FF00000, "fd00:88::2") == {}
    assert argv_file.read_text().split()[:3] == ["-L", "-f", "ipv6"]


def test_the_reader_gets_the_service_mark_mask_and_home() -> None:
    asked = []
    ev = FlowEvidence(lambda mark, mask, home: asked.append((mark, mask, home)) or {}, clock=lambda: 0.0)
    ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2")
    assert asked == [(0x100000, 0x0FF00000, "10.88.0.2")]


def test_a_missing_reading_is_warned_about_once_and_drops_the_baseline(caplog) -> None:
    import logging

    caplog.set_level(logging.WARNING, logger="vpnoffload.watch")
    r = Readings()
    ev = r.evidence()
    r.next = None
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is None  # no baseline yet: nothing to drop
    r.next = {1: 4}
    ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2")
    r.next = None
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is None
    r.next = {1: 5}  # grew since {1: 4}, but that baseline was dropped with the missing reading
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is None
    assert [rec.getMessage() for rec in caplog.records] == [
        "cannot read conntrack (is the 'conntrack' tool installed?): a lost visitor-path check is then never "
        "taken for load"]


def test_forget_drops_the_baseline() -> None:
    r = Readings()
    ev = r.evidence()
    r.next = {1: 4}
    ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2")
    ev.forget(0x100000, "10.88.0.2")
    r.next = {1: 5}
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is None


def test_a_reading_exactly_max_gap_old_is_still_compared() -> None:
    r = Readings()
    r.now = 1000.0  # a monotonic clock is far from 0
    ev = r.evidence()
    r.next = {1: 4}
    ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2")
    r.now += flows.MAX_GAP
    r.next = {1: 5}
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is True
    r.now += 0.5
    assert ev.replies_flowing(0x100000, 0x0FF00000, "10.88.0.2") is False


def test_the_conntrack_tool_is_looked_for_in_the_system_directories_in_order(monkeypatch) -> None:
    import os

    present: set[str] = set()
    monkeypatch.setattr(flows.os, "access", lambda path, mode: mode == os.X_OK and path in present)
    assert flows.conntrack_binary() is None
    for where in ("/bin", "/usr/bin", "/sbin", "/usr/sbin"):  # each one found, then preferred over the last
        present.add(f"{where}/conntrack")
        assert flows.conntrack_binary() == f"{where}/conntrack"
