"""Per-service access control on the VPS, as data: address sets and the rules of
each service's access chain.

A restricted service gets its own chain ``VPNOFFLOAD-ACL<n>`` in filter (``n`` is
its mark number), entered from ``VPNOFFLOAD-FWD`` (visitors forwarded home) and
from ``VPNOFFLOAD-IN`` (visitors DNATed to the friendly page and the offline
copies) for the first packet of each of its connections, told apart by the
service's connection mark. So the page obeys the same lists, and other services
on the same address are not touched. In it, in this order, each a DROP whose
counter ``status`` reads back (:data:`RULE_KINDS`):

1. ``allow``: the source is not in the service's allow set;
2. ``deny``: the source is in its deny set;
3. ``rate``: the source opens new connections faster than ``rate`` (hashlimit
   per source address, a burst of up to 5; nft: a dynamic set with a limit);
4. ``max_conns``: the source has more than ``max_conns`` open (connlimit; nft ``ct count``).

The watchdog's forward check (from its probe namespace, :mod:`vpnoffload.probens`)
returns from the chain first: no list or limit makes a healthy home look dead.

An allow or deny list (inline prefixes and the file together) is one set per
service: an ipset ``hash:net`` on the legacy backend, an nftables interval set
on the nft one. Its name carries a digest of its content,
``vpnoffload-<n>-<a|d><4|6>-<digest>``: a changed list is a new set, filled
completely before the one table commit that points the rule at it (no window
with an empty or half-filled list), and the old one is removed after. The name
also makes a second ``up`` plan nothing without reading 100 000 prefixes back.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from vpnoffload.errors import ConfigError
from vpnoffload.model import Service

SET_PREFIX = "vpnoffload-"
ACL_CHAIN_PREFIX = "VPNOFFLOAD-ACL"
#: The DROP rules of an access chain, in order; status names its counters so.
RULE_KINDS = ("allow", "deny", "rate", "max_conns")
#: Most prefixes one list may hold (kernel memory stays bounded: ~100 bytes each).
MAX_PREFIXES = 1_000_000
#: Entries of the per-source tables of rate and max_conns (hashlimit, nft dynamic sets):
#: a flood from more sources than this is not limited further, but takes no more memory.
METER_SIZE = 65536


def acl_chain(number: int) -> str:
    """The access chain of the service with mark number ``number`` (its position + 1)."""
    return f"{ACL_CHAIN_PREFIX}{number}"


def chain_number(chain: str) -> int | None:
    """``n`` of an access chain ``VPNOFFLOAD-ACL<n>``; None for any other chain."""
    rest = chain[len(ACL_CHAIN_PREFIX):] if chain.startswith(ACL_CHAIN_PREFIX) else ""
    return int(rest) if rest.isdigit() and not rest.startswith("0") else None


def rate_name(number: int) -> str:
    """hashlimit's table name (at most 15 characters) and the nft set of ``rate``."""
    return f"{SET_PREFIX}{number}r"


def conns_name(number: int) -> str:
    """The nft set of ``max_conns``."""
    return f"{SET_PREFIX}{number}c"


@dataclass(frozen=True)
class AddressSet:
    """One allow or deny list of one service in one address family, ready to load.

    ``elements()`` parses and normalises the prefixes only when a backend
    actually creates the set (a watchdog swap never does: the name is unchanged).
    """

    name: str
    version: int
    inline: tuple[str, ...] = ()
    data: bytes = field(default=b"", repr=False)  # the prefix file's bytes
    source: str = ""  # the field and file, for messages
    path: Path | None = None  # the prefix file

    def elements(self) -> list[str]:
        """Prefixes of this family without overlaps (a prefix inside another is dropped), sorted.
        ConfigError naming the file and line for a bad one. Parsed once."""
        return self._elements

    def intervals(self) -> list[tuple[int, int]]:
        """The same addresses as :meth:`elements`, as the fewest sorted intervals (first, last)
        (see :func:`merge`): what the nftables backend loads. ConfigError as there. Merged once."""
        return self._intervals

    @cached_property
    def _intervals(self) -> list[tuple[int, int]]:
        return merge(self._spans, self.version)

    @cached_property
    def _elements(self) -> list[str]:
        return normalise(self._spans, self.version)

    @cached_property
    def _spans(self) -> list[Span]:
        return [span(p) for p in self.inline] + parse_lines(self.data, self.source)

    @property
    def table(self) -> str:
        return "filter" if self.version == 4 else "filter6"

    def describe(self) -> str:
        """For ``--dry-run`` and status: where the prefixes come from (not yet parsed)."""
        parts = [f"{len(self.inline)} inline prefix(es)"] if self.inline else []
        if self.path is not None:
            lines = sum(1 for raw in self.data.split(b"\n") if raw.split(b"#", 1)[0].strip())
            parts.append(f"{lines} prefix line(s) of {self.path}")
        return f"IPv{self.version} " + (" + ".join(parts) or "no prefixes (nobody matches)")


def set_name(number: int, kind: str, version: int, digest: str) -> str:
    return f"{SET_PREFIX}{number}-{kind[0]}{version}-{digest[:10]}"


def is_our_set(name: str) -> bool:
    return name.startswith(SET_PREFIX)


def set_version(name: str) -> int | None:
    """The IP version of one of our address sets, from its name (None: not an address set)."""
    parts = name[len(SET_PREFIX):].split("-")
    if len(parts) == 3 and parts[1][:1] in ("a", "d") and parts[1][1:] in ("4", "6"):
        return int(parts[1][1:])
    return None


def address_set(service: Service, number: int, kind: str, version: int) -> AddressSet | None:
    """The ``kind`` ("allow"/"deny") set of ``service`` in ``version``; None when it has no such list.

    Reads the list's file (raw bytes: cheap; parsed when loaded). An unreadable
    file is a ConfigError naming the key.
    """
    access = service.access
    inline = tuple(str(p) for p in (access.allow if kind == "allow" else access.deny) if p.version == version)
    path = access.allow_file if kind == "allow" else access.deny_file
    if not inline and path is None and not (access.allow if kind == "allow" else access.deny):
        return None
    where = f"services.{service.name}.{kind}_file"
    data = _read(path, where) if path is not None else b""
    digest = hashlib.sha256(repr((version, inline)).encode() + b"\0" + data).hexdigest()
    return AddressSet(set_name(number, kind, version, digest), version, inline, data, f"{where} ({path})", path)


def _read(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", field=where) from None


Span = tuple[int, int, int, int]  # (version, first address, last address, prefix length)


def parse_lines(data: bytes, source: str) -> list[Span]:
    """The prefixes of a list file: one a line, ``#`` starts a comment; ConfigError naming the line.

    socket's parser, not ipaddress': 100 000 lines take ~0.1 s instead of ~0.6 s.
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"line {line}: not ASCII text", field=source) from None
    out: list[Span] = []
    for number, raw in enumerate(text.split("\n"), 1):
        prefix = (raw.split("#", 1)[0] if "#" in raw else raw).strip()
        if not prefix:
            continue
        try:
            out.append(span(prefix))
        except ValueError as exc:
            raise ConfigError(f"line {number}: {prefix[:60]!r} is not a prefix ({exc})", field=source) from None
        if len(out) > MAX_PREFIXES:
            raise ConfigError(f"more than {MAX_PREFIXES} prefixes", field=source)
    return out


def span(text: str) -> Span:
    """One prefix (a bare address is one host) as a Span; ValueError if it is none, or has host bits set.
    Called once a line of a prefix file: kept lean (100 000 lines ~0.06 s)."""
    address, slash, length = text.partition("/")
    family, version, bits = (_AF_INET6, 6, 128) if ":" in address else (_AF_INET, 4, 32)
    try:
        value = _from_bytes(_inet_pton(family, address), "big")
    except OSError:
        raise ValueError(f"{address!r} is not an IPv{version} address") from None
    if slash:
        if not (length.isdigit() and len(length) <= 3 and int(length) <= bits):
            raise ValueError(f"bad prefix length {length!r}")
        host = (1 << (bits - int(length))) - 1
    else:
        host = 0
    if value & host:
        raise ValueError("has host bits set")
    return version, value, value | host, bits - host.bit_length()


_AF_INET, _AF_INET6, _inet_pton, _from_bytes = socket.AF_INET, socket.AF_INET6, socket.inet_pton, int.from_bytes


def address_text(version: int, value: int) -> str:
    """An address (an int) as text: 192.0.2.7, 2001:db8::1."""
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def normalise(spans: list[Span], version: int) -> list[str]:
    """The prefixes of ``version`` in ``spans``, sorted, without duplicates or nested
    prefixes (what an nftables interval set accepts), as "address/len"."""
    mine = sorted((s for s in spans if s[0] == version), key=lambda s: (s[1], -s[2]))
    out: list[str] = []
    end = -1
    for _, start, last, length in mine:
        if start > end:  # prefixes nest or are disjoint: one that starts inside the last is inside it
            out.append(f"{address_text(version, start)}/{length}")
            end = last
    return out


def merge(spans: list[Span], version: int) -> list[tuple[int, int]]:
    """The addresses of ``version`` in ``spans`` as the fewest intervals (first, last), sorted:
    overlapping and adjacent prefixes joined. The same addresses in fewer set elements
    where prefixes touch (each element costs nft and the kernel time to load)."""
    mine = sorted([(s[1], s[2]) for s in spans if s[0] == version])
    if not mine:
        return []
    out: list[tuple[int, int]] = []
    first, last = mine[0]
    for start, end in mine:
        if start > last + 1:  # a gap: the interval so far is complete
            out.append((first, last))
            first, last = start, end
        elif end > last:
            last = end
    out.append((first, last))
    return out


# --------------------------------------------------------------------------
# The rules of one service's access chain


def acl_rules(service: Service, number: int, version: int) -> tuple[list[tuple[str, ...]], list[AddressSet]]:
    """The DROP rules (iptables-save arguments) of ``service``'s access chain in
    IPv``version``, in :data:`RULE_KINDS` order (the closing RETURN not included),
    and the address sets they name."""
    access = service.access
    rules: list[tuple[str, ...]] = []
    sets: list[AddressSet] = []
    for kind in ("allow", "deny"):
        found = address_set(service, number, kind, version)
        if found is None:
            continue
        sets.append(found)
        negate = ("!",) if kind == "allow" else ()
        rules.append(("-m", "set", *negate, "--match-set", found.name, "src", "-j", "DROP"))
    if access.rate is not None:
        rules.append((*hashlimit_args(access.rate, access.burst, number), "-j", "DROP"))
    if access.max_conns is not None:
        rules.append((*connlimit_args(access.max_conns, version), "-j", "DROP"))
    return rules, sets


#: hashlimit's table of sources, written out in full (python-iptables does not fill in
#: iptables' defaults) and in iptables-save's order: bounded to METER_SIZE sources, an
#: idle source forgotten after 10 s (the nft set's timeout).
RATE_EXPIRE_MS = 10_000
HASHLIMIT_TABLE = ("--hashlimit-htable-size", "4096", "--hashlimit-htable-max", str(METER_SIZE),
                   "--hashlimit-htable-gcinterval", "2000", "--hashlimit-htable-expire", str(RATE_EXPIRE_MS))


def rule_kind(args: tuple[str, ...]) -> str | None:
    """Which of :data:`RULE_KINDS` an access-chain rule is (None for the RETURN)."""
    if "--match-set" in args:
        return "allow" if args[args.index("--match-set") - 1] == "!" else "deny"
    if "hashlimit" in args:
        return "rate"
    if "connlimit" in args:
        return "max_conns"
    return None


def hashlimit_options(options: tuple[str, ...], number: int) -> tuple[int, int]:
    """(rate, burst) of a hashlimit rule :func:`acl_rules` wrote; ValueError for any other."""
    if (len(options) != 8 + len(HASHLIMIT_TABLE) or options[0] != "--hashlimit-above"
            or options[2:4] != ("--hashlimit-burst", options[3]) or not options[1].endswith("/sec")
            or options[4:8] != ("--hashlimit-mode", "srcip", "--hashlimit-name", rate_name(number))
            or options[8:] != HASHLIMIT_TABLE or not options[1][:-4].isdigit() or not options[3].isdigit()):
        raise ValueError(f"-m hashlimit {' '.join(options)} (not as vpnoffload writes it)")
    return int(options[1][:-4]), int(options[3])


def hashlimit_args(rate: int, burst: int, number: int) -> tuple[str, ...]:
    return ("-m", "hashlimit", "--hashlimit-above", f"{rate}/sec", "--hashlimit-burst", str(burst),
            "--hashlimit-mode", "srcip", "--hashlimit-name", rate_name(number), *HASHLIMIT_TABLE)


def connlimit_options(options: tuple[str, ...], version: int) -> int:
    """The limit of a connlimit rule :func:`acl_rules` wrote; ValueError for any other."""
    mask = "32" if version == 4 else "128"
    if (len(options) != 5 or options[0] != "--connlimit-above" or not options[1].isdigit()
            or options[2:] != ("--connlimit-mask", mask, "--connlimit-saddr")):
        raise ValueError(f"-m connlimit {' '.join(options)} (not as vpnoffload writes it)")
    return int(options[1])


def connlimit_args(limit: int, version: int) -> tuple[str, ...]:
    return ("-m", "connlimit", "--connlimit-above", str(limit), "--connlimit-mask", "32" if version == 4 else "128",
            "--connlimit-saddr")
