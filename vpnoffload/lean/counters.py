"""Per-home and per-service packet counts the VPS's kernel keeps, read without a child.

``firewall.policy`` gives the VPS counting rules (no verdict) in two chains of its own:
for each home box, one counts the packets coming from its tunnel address
(:func:`home_in`), one those going to it (:func:`home_out`), on every path (INPUT,
FORWARD, OUTPUT: visitors, checks and replies alike); for each DNATed TCP service and
each of its homes, one counts the TCP resets coming back from that home on that
service's connections (its connmark; :func:`refusals`). The watchdog reads them every
``watch.pace.POLL`` s (``watch.evidence``).

Where the counts live depends on the firewall backend:

* legacy x_tables (python-iptables): each counting rule is ``-m recent --set --name
  NAME``; the kernel keeps the list in ``/proc/net/xt_recent/NAME``: one line for the
  one address the rule sees, with the jiffies of its last packets. :class:`RecentReader`
  turns successive readings into a count of packets seen (one ``open``/``read`` per list,
  no fork); the list and the file go with the last rule that names it;
* nftables: the same rule is a named counter object in ``table ip vpnoffload``
  (``counter name NAME``), which ``firewall.nft`` declares and deletes with the rules;
  :class:`NftCounterReader` dumps the table's counters over one netlink socket
  (``NFT_MSG_GETOBJ``), stdlib ``socket`` and ``struct`` only.

Lean like the watchdog: stdlib only, nothing of vpnoffload imported.
"""

from __future__ import annotations

import os
import socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

PREFIX = "vpnoffload-"
RECENT_DIR = "/proc/net/xt_recent"


def home_in(number: int) -> str:
    """Name of the count of packets from the home box at position ``number`` (1-based) in the config."""
    return f"{PREFIX}in{number}"


def home_out(number: int) -> str:
    """Name of the count of packets to that home box."""
    return f"{PREFIX}out{number}"


def refusals(service: int, home: int) -> str:
    """Name of the count of resets from home ``home`` on the connections of the service numbered
    ``service`` (its mark number, position + 1)."""
    return f"{PREFIX}rst{service}-{home}"


def is_counter(name: str) -> bool:
    """One of the names above (``firewall.nft`` owns exactly these counter objects)."""
    rest = name[len(PREFIX):] if name.startswith(PREFIX) else ""
    for head, parts in (("in", 1), ("out", 1), ("rst", 2)):
        numbers = rest[len(head):].split("-") if rest.startswith(head) else []
        if len(numbers) == parts and all(n.isdigit() for n in numbers):
            return True
    return False


def layout(config: "Any") -> tuple[dict[str, int], dict[str, list[tuple[str, str]]]]:
    """(home -> its number, home -> [(service, its refusal count's name)]): which counts the
    VPS's rules keep for ``config`` and under which names. One rule for both sides: the rules
    ``firewall.policy`` writes (a ``model.Config``) and the counts ``watch.evidence`` reads (a
    ``lean.snapshot.ConfigView``): homes by position + 1, services by their mark number
    (position + 1), each service with each of its homes, in the config's order."""
    homes = {name: i for i, name in enumerate(config.homes, 1)}
    served: dict[str, list[tuple[str, str]]] = {h: [] for h in homes}
    for index, (name, svc) in enumerate(config.services.items()):
        if not refusal_counted(svc):
            continue
        for home in svc.homes:
            served[home].append((name, refusals(index + 1, homes[home])))
    return homes, served


def refusal_counted(svc: "Any") -> bool:
    """Do the VPS's rules count this service's resets? DNATed IPv4 TCP services only."""
    return svc.via == "dnat" and svc.proto == "tcp" and not svc.ipv6


class RecentReader:
    """xt_recent lists as counts: ``read(names)`` -> {name: packets seen so far, or absent}.

    A list line is ``src=A ttl: T last_seen: J oldest_pkt: I J1, J2, ...`` with the jiffies
    of up to the last 20 packets (``ip_pkt_list_tot``). Packets since the last reading are
    the stamps after the last one seen then (and more of the same jiffy than then), so a
    count grows by at most 20 per reading: enough to tell silence from traffic."""

    def __init__(self, root: str = RECENT_DIR) -> None:
        self.root = root
        #: name -> (packets so far, newest stamp seen, how many stamps had it)
        self._state: dict[str, tuple[int, int, int]] = {}
        self._fds: dict[str, int] = {}

    def read(self, names: "Iterable[str]") -> dict[str, int]:
        names = list(names)
        # A name no longer read (a reload dropped its home or service): its file and state go.
        for name in set(self._fds) - set(names):
            self._close(name)
        for name in set(self._state) - set(names):
            del self._state[name]
        out: dict[str, int] = {}
        for name in names:
            stamps = self._stamps(name)
            if stamps is None:
                self._state.pop(name, None)
                continue
            out[name] = self._count(name, stamps)
        return out

    def _stamps(self, name: str) -> list[int] | None:
        """The list's stamps; None when there is no such list. Each file stays open and is read
        again from its start (a removed list's file then fails with EIO: opened afresh)."""
        for _attempt in (0, 1):  # the kept file, then once afresh
            fd = self._fds.get(name)
            if fd is None:
                try:
                    fd = self._fds[name] = os.open(os.path.join(self.root, name), os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return None
            try:
                return parse_recent(os.pread(fd, 65536, 0))
            except OSError:
                self._close(name)
        return None

    def _close(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for name in list(self._fds):
            self._close(name)

    def _count(self, name: str, stamps: list[int]) -> int:
        newest = max(stamps, default=0)
        at_newest = stamps.count(newest) if stamps else 0
        before = self._state.get(name)
        if before is None:
            total = len(stamps)
        else:
            total, last, same = before
            total += sum(1 for s in stamps if s > last) + max(0, stamps.count(last) - same)
        self._state[name] = (total, newest, at_newest)
        return total


def parse_recent(data: bytes) -> list[int]:
    """Every packet stamp (jiffies) in an xt_recent list's text, all addresses together."""
    stamps: list[int] = []
    for line in data.splitlines():
        at = line.find(b"oldest_pkt:")
        if at >= 0:
            # After the ring's index, the stamps: " 4295001, 4295002, ..."
            stamps += [int(w) for w in line[at + 11:].replace(b",", b" ").split()[1:] if w.isdigit()]
    return stamps


# -- nftables: named counters over netlink --------------------------------------------

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWOBJ, NFT_MSG_GETOBJ = 18, 19  # a dump answers each object as a NEWOBJ message
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFT_OBJECT_COUNTER = 1
NFTA_COUNTER_PACKETS = 2
NLA_F_NESTED = 0x8000
#: An attribute's type without its flags (NLA_F_NESTED 0x8000, NLA_F_NET_BYTEORDER 0x4000).
NLA_TYPE_MASK = 0x3FFF
TABLE = "vpnoffload"


def _attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = 0
    while i + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, i)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = data[i + 4:i + length]
        i += (length + 3) & ~3
    return out


def getobj_request(seq: int) -> bytes:
    """A dump request for the counter objects of ``table ip vpnoffload``."""
    body = struct.pack("=BBH", socket.AF_INET, 0, 0)
    body += _attr(NFTA_OBJ_TABLE, TABLE.encode() + b"\0") + _attr(NFTA_OBJ_TYPE, struct.pack("!I", NFT_OBJECT_COUNTER))
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


def parse_getobj(data: bytes, counts: dict[str, int]) -> bool:
    """Add the counters in one netlink reply buffer to ``counts``; True once the dump is done."""
    i = 0
    while i + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, i)
        if length < 16:
            return True
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return True
        if kind in ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWOBJ, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ):
            attrs = _attrs(data[i + 20:i + length])
            name = attrs.get(NFTA_OBJ_NAME, b"").rstrip(b"\0").decode("ascii", "replace")
            table = attrs.get(NFTA_OBJ_TABLE, b"").rstrip(b"\0").decode("ascii", "replace")
            inner = _attrs(attrs.get(NFTA_OBJ_DATA, b""))
            packets = inner.get(NFTA_COUNTER_PACKETS)
            if table == TABLE and packets is not None and len(packets) == 8:
                counts[name] = struct.unpack("!Q", packets)[0]
        i += (length + 3) & ~3
    return False


class NftCounterReader:
    """``table ip vpnoffload``'s counter objects: ``read(names)`` -> {name: packets}. One
    netlink socket kept open, one dump per reading."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    def read(self, names: "Iterable[str]") -> dict[str, int]:
        wanted = set(names)
        counts: dict[str, int] = {}
        try:
            sock = self._socket()
            self._seq += 1
            sock.send(getobj_request(self._seq))
            while not parse_getobj(sock.recv(65536), counts):
                pass
        except OSError:
            self.close()
            return {}
        return {n: c for n, c in counts.items() if n in wanted}

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            sock.settimeout(0.2)
            sock.bind((0, 0))
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Counters:
    """Whichever of the two holds the counts on this host: xt_recent lists when the legacy
    tables are in use, else nftables counters (chosen per reading: a backend switch by
    ``up vps`` is followed)."""

    def __init__(self, recent: RecentReader | None = None, nft: NftCounterReader | None = None) -> None:
        self.recent = recent or RecentReader()
        self.nft = nft or NftCounterReader()
        self._nft_only = False  # the last reading found nft counters and no xt_recent lists

    def read(self, names: "Iterable[str]") -> dict[str, int]:
        names = list(names)
        if self._nft_only:
            found = self.nft.read(names)
            if found:
                return found
        found = self.recent.read(names)
        self._nft_only = not found
        return found or self.nft.read(names)
