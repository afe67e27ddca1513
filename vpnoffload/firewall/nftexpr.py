"""iptables-save arguments <-> nftables JSON expressions, for the rules vpnoffload writes.

Pure functions, no kernel: :func:`to_nft` turns one :class:`Rule`'s ``args``
into the ``expr`` list of an nftables JSON rule, and :func:`.nftread.from_nft`
turns an ``expr`` list read back with ``nft -j list`` into the same ``args``, so the
nftables backend reads back exactly the :class:`Ruleset` it wrote and a second
``up`` plans nothing. Rules carry no comment: nft limits one to 128 bytes and our
longest rules are longer, so the expressions themselves are the record.

Only the subset vpnoffload produces is translated (see :mod:`.policy`); anything
else raises :class:`BackendError` naming the rule, never a silently weaker rule.
The forms are chosen so that nft prints back what we wrote:

=================================================  ==============================================
iptables-save                                      nftables
=================================================  ==============================================
``[!] -s/-d 203.0.113.10/32`` (/128)               ``ip[6] saddr/daddr [!=] 203.0.113.10`` (a prefix otherwise)
``[!] -i/-o vpnoffload0`` (``eth+``)               ``iifname/oifname [!=] "vpnoffload0"`` (``"eth*"``)
``-p tcp -m tcp [!] --dport 80 [--sport ..]``      ``tcp dport [!=] 80`` (nft implies the protocol)
``-p icmp -m icmp --icmp-type 8``                  ``icmp type echo-request`` (icmpv6: ``--icmpv6-type 128``)
``[!] -p udp`` (no port match)                     ``meta l4proto [!=] udp``
``-m conntrack [!] --ctstate RELATED,ESTABLISHED``  ``ct state [!=] established,related``
``-m conntrack --ctstate DNAT`` (SNAT)             ``ct status dnat``
``--ctorigdst 198.51.100.2 --ctorigdstport 8080``  ``ct original ip daddr 198.51.100.2 ct original proto-dst 8080``
``-m connmark [!] --mark v/m`` (``mark``)          ``ct mark & m [!=] v`` (``meta mark``)
``-j CONNMARK --set-xmark v/m`` (``MARK``)         ``ct mark set ct mark & ~m ^ v`` (``meta mark``)
``-j DNAT --to-destination a:p`` (``[a]:p``)       ``dnat to a:p``
``-j REJECT --reject-with tcp-reset``              ``reject with tcp reset`` (icmp[6] port-unreachable)
``-j ACCEPT/DROP/RETURN``, ``-j/-g VPNOFFLOAD-*``  ``accept/drop/return``, ``jump/goto``
``-m set [!] --match-set S src``                   ``ip[6] saddr [!=] @S`` (an interval set)
``-m hashlimit --hashlimit-above 10/sec`` ...      ``update @vpnoffload-3r { ip saddr limit rate over 10/second burst 5 packets }``
``-m connlimit --connlimit-above 20`` ...          ``add @vpnoffload-3c { ip saddr ct count over 20 }``
``-p tcp -m tcp --tcp-flags RST RST``               ``tcp flags & rst == rst``
``-m recent --set --name vpnoffload-in1 ...``        ``counter name "vpnoffload-in1"`` (the VPS's counts)
=================================================  ==============================================

The last three appear only in an access chain (``VPNOFFLOAD-ACL<n>``, see
:mod:`.access`), whose DROP rules also get a ``counter`` (nft counts only what
a rule asks it to; ``status`` reads it back). The hashlimit options must be
exactly those :mod:`.access` writes (its table bounds become the dynamic set's
size and timeout, see :func:`meter_set`).
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any

from vpnoffload.errors import BackendError
from vpnoffload.firewall import access
from vpnoffload.firewall.rules import Rule, is_owned, table_label
from vpnoffload.lean import counters

Expr = dict[str, Any]
ALL_ONES = 0xFFFFFFFF
#: iptables' order of --ctstate words (as conntrack's save prints them), and which are ct status bits.
CT_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED")
CT_STATUSES = ("SNAT", "DNAT")
#: The conntrack options translated, in the order conntrack's save prints them,
#: with the nft ct key of each (for IPv4; "ip6 ..." for IPv6).
CT_OPTIONS = {"--ctstate": None, "--ctorigsrc": "saddr", "--ctorigdst": "daddr", "--ctorigsrcport": "proto-src",
              "--ctorigdstport": "proto-dst"}
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58}
#: Which -m module goes with a protocol, and the option naming its type.
_ICMP = {"icmp": ("icmp", "--icmp-type", "icmp"), "ipv6-icmp": ("icmp6", "--icmpv6-type", "icmpv6")}
ICMP_TYPES = {
    "icmp": {0: "echo-reply", 3: "destination-unreachable", 8: "echo-request", 11: "time-exceeded"},
    "icmpv6": {1: "destination-unreachable", 2: "packet-too-big", 3: "time-exceeded", 128: "echo-request",
               129: "echo-reply"},
}
#: The IP version each ICMP name belongs to (both iptables' and nft's spellings).
_ICMP_VERSION = {"icmp": 4, "ipv6-icmp": 6, "icmpv6": 6}
VERDICTS = {"ACCEPT": "accept", "DROP": "drop", "RETURN": "return"}
REJECTS = {
    "tcp-reset": {"type": "tcp reset"},
    "icmp-port-unreachable": {"type": "icmp", "expr": "port-unreachable"},
    "icmp-host-unreachable": {"type": "icmp", "expr": "host-unreachable"},
    "icmp6-port-unreachable": {"type": "icmpv6", "expr": "port-unreachable"},
    "icmp6-adm-prohibited": {"type": "icmpv6", "expr": "admin-prohibited"},
}


#: The TCP flags a ``--tcp-flags`` match may name (vpnoffload writes ``RST RST`` only).
TCP_FLAGS = ("RST",)
#: ``-m recent`` as ``firewall.policy`` writes it: the options after ``--name NAME``.
RECENT_TAIL = ("--mask", "255.255.255.255")


def recent_side(name: str) -> str:
    """Which address a count's ``-m recent`` keys on: a home's packets and resets by their
    source, the packets to it by their destination (``lean.counters``)."""
    return "--rdest" if name.startswith(counters.home_out(0)[:-1]) else "--rsource"


class Untranslatable(ValueError):
    """One rule (or one expression read back) outside the subset this module knows."""


def ip_version(table: str) -> int:
    return 6 if table.endswith("6") else 4


def _match(left: Expr, right: Any, negate: bool = False, op: str = "==") -> Expr:
    return {"match": {"op": "!=" if negate else op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": field}}


def _masked(key: Expr, mask: int) -> Expr:
    return key if mask == ALL_ONES else {"&": [key, mask]}


def _mark(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    try:
        return int(value, 0), int(mask, 0) if mask else ALL_ONES
    except ValueError:
        raise Untranslatable(f"bad mark {text!r}") from None


def mark_text(value: int, mask: int) -> str:
    """As iptables-save prints a mark: 0x100000/0xff00000, without the mask when it is all ones."""
    return f"{value:#x}" if mask == ALL_ONES else f"{value:#x}/{mask:#x}"


# --------------------------------------------------------------------------
# iptables-save arguments -> nftables expressions


def to_nft(rule: Rule) -> list[Expr]:
    """The nftables JSON ``expr`` list of ``rule``; BackendError naming it if untranslatable."""
    try:
        return _Writer(rule).run()
    except Untranslatable as exc:
        raise BackendError(
            f"{table_label(rule.table)}: cannot write `{rule.chain}: {rule.text}` as nftables: {exc}"
        ) from None


class _Writer:
    """Walks ``args`` left to right: entry flags, then ``-m`` modules, then the target."""

    def __init__(self, rule: Rule) -> None:
        self.rule, self.args, self.i = rule, rule.args, 0
        self.version = ip_version(rule.table)
        self.out: list[Expr] = []

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.args[j] if j < len(self.args) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise Untranslatable("the rule ends too early")
        self.i += 1
        return token

    def negation(self) -> bool:
        if self.peek() == "!":
            self.i += 1
            return True
        return False

    def run(self) -> list[Expr]:
        while self.peek() is not None:
            negate = self.negation()
            flag = self.take()
            if flag in ("-s", "-d"):
                self.address(flag, self.take(), negate)
            elif flag in ("-i", "-o"):
                name = self.take()
                name = name[:-1] + "*" if name.endswith("+") else name
                self.out.append(_match({"meta": {"key": "iifname" if flag == "-i" else "oifname"}}, name, negate))
            elif flag == "-p":
                self.protocol(self.take(), negate)
            elif flag == "-m" and not negate:
                self.module(self.take())
            elif flag in ("-j", "-g") and not negate:
                self.target(flag, self.take())
                if self.peek() is not None:
                    raise Untranslatable(f"{self.peek()!r} after the target")
            else:
                raise Untranslatable(f"unknown {'! ' if negate else ''}{flag!r}")
        return self.out

    def address(self, flag: str, text: str, negate: bool) -> None:
        proto = "ip" if self.version == 4 else "ip6"
        field = "saddr" if flag == "-s" else "daddr"
        self.out.append(_match(_payload(proto, field), self.address_value(text), negate))

    def protocol(self, proto: str, negate: bool) -> None:
        if proto not in PROTOCOLS or (proto in _ICMP and _ICMP_VERSION[proto] != self.version):
            raise Untranslatable(f"protocol {proto!r} in an IPv{self.version} table")
        module = _ICMP[proto][0] if proto in _ICMP else proto
        if self.peek() == "-m" and self.peek(1) == module:
            if negate:
                raise Untranslatable(f"! -p {proto} with -m {module}")
            self.i += 2
            self.header_options(proto)
        else:  # no header match follows: the protocol is the whole match
            self.out.append(_match({"meta": {"key": "l4proto"}}, proto, negate))

    def header_options(self, proto: str) -> None:
        """``--dport``/``--sport`` of tcp/udp, ``--icmp(v6)-type`` of icmp; at least one."""
        found = 0
        while True:
            start = self.i
            negate = self.negation()
            option = self.peek()
            if proto in _ICMP and option == _ICMP[proto][1]:
                self.i += 1
                nft_proto = _ICMP[proto][2]
                number = self.take()
                name = ICMP_TYPES[nft_proto].get(int(number)) if number.isdigit() else None
                if name is None:
                    raise Untranslatable(f"{option} {number}")
                self.out.append(_match(_payload(nft_proto, "type"), name, negate))
            elif proto == "tcp" and option == "--tcp-flags" and not negate:
                self.i += 1
                mask, flags = self.take(), self.take()
                if mask != flags or mask not in TCP_FLAGS:
                    raise Untranslatable(f"--tcp-flags {mask} {flags}")
                self.out.append(_match({"&": [_payload("tcp", "flags"), mask.lower()]}, mask.lower()))
            elif proto not in _ICMP and option in ("--dport", "--sport"):
                self.i += 1
                port = self.take()
                if not port.isdigit():
                    raise Untranslatable(f"{option} {port} (only single ports)")
                self.out.append(_match(_payload(proto, option[2:]), int(port), negate))
            else:
                self.i = start
                break
            found += 1
        if not found:
            raise Untranslatable(f"-m {proto} without an option vpnoffload knows")

    def module(self, name: str) -> None:
        if name == "conntrack":
            self.conntrack()
            return
        if name in ("hashlimit", "connlimit"):
            self.meter(name)
            return
        if name == "recent":
            self.recent()
            return
        negate = self.negation()
        option = self.take()
        if name in ("connmark", "mark") and option == "--mark":
            value, mask = _mark(self.take())
            key = {"ct": {"key": "mark"}} if name == "connmark" else {"meta": {"key": "mark"}}
            self.out.append(_match(_masked(key, mask), value, negate))
        elif name == "set" and option == "--match-set":
            set_name = self.take()
            if self.take() != "src" or not access.is_our_set(set_name):
                raise Untranslatable(f"-m set --match-set {set_name} (only our sets, by source)")
            self.out.append(_match(self.saddr(), f"@{set_name}", negate))
        else:
            raise Untranslatable(f"-m {name} {option}")
        if self.peek() not in (None, "!", "-m", "-j", "-g"):
            raise Untranslatable(f"-m {name}: more options than vpnoffload writes ({self.peek()})")

    def conntrack(self) -> None:
        """One ``-m conntrack`` and its options (at least one), each a ct match."""
        found = 0
        while True:
            start = self.i
            negate = self.negation()
            option = self.peek()
            if option not in CT_OPTIONS:
                self.i = start
                break
            self.i += 1
            value = self.take()
            if option == "--ctstate":
                self.out.append(self.ctstate(value, negate))
            elif option.endswith("port"):
                if not value.isdigit():
                    raise Untranslatable(f"{option} {value}")
                self.out.append(_match(self.ct_original(option), int(value), negate))
            else:
                self.out.append(_match(self.ct_original(option), self.address_value(value), negate))
            found += 1
        if not found or self.peek() not in (None, "!", "-m", "-j", "-g"):
            raise Untranslatable(f"-m conntrack with options vpnoffload does not write ({self.peek()})")

    def recent(self) -> None:
        """``-m recent --set --name NAME --mask 255.255.255.255 --rsource`` of a VPS count: a named counter."""
        options: list[str] = []
        while self.peek() not in (None, "!", "-m", "-j", "-g"):
            options.append(self.take())
        if len(options) != 6 or options[:2] != ["--set", "--name"] or not counters.is_counter(options[2]) \
                or tuple(options[3:5]) != RECENT_TAIL or options[5] != recent_side(options[2]) or self.version != 4:
            raise Untranslatable(f"-m recent {' '.join(options)} (only the VPS's counts)")
        self.out.append({"counter": options[2]})

    def saddr(self) -> Expr:
        return _payload("ip" if self.version == 4 else "ip6", "saddr")

    def meter(self, name: str) -> None:
        """``-m hashlimit``/``-m connlimit`` of an access chain: a dynamic set keyed by the source."""
        number = access.chain_number(self.rule.chain)
        if number is None:
            raise Untranslatable(f"-m {name} outside an access chain")
        options: list[str] = []
        while self.peek() not in (None, "!", "-m", "-j", "-g"):
            options.append(self.take())
        try:
            if name == "hashlimit":
                rate, burst = access.hashlimit_options(tuple(options), number)
                stmt: Expr = {"limit": {"rate": rate, "burst": burst, "per": "second", "inv": True}}
                op, set_name = "update", access.rate_name(number)
            else:
                limit = access.connlimit_options(tuple(options), self.version)
                stmt, op, set_name = {"ct count": {"val": limit, "inv": True}}, "add", access.conns_name(number)
        except ValueError as exc:
            raise Untranslatable(str(exc)) from None
        self.out.append({"set": {"op": op, "elem": self.saddr(), "set": f"@{set_name}", "stmt": [stmt]}})

    def ct_original(self, option: str) -> Expr:
        key = CT_OPTIONS[option] or ""
        if not key.startswith("proto"):
            key = f"{'ip' if self.version == 4 else 'ip6'} {key}"
        return {"ct": {"key": key, "dir": "original"}}

    def address_value(self, text: str) -> Any:
        """An address or network of this table's family as nft JSON: "a" or a prefix."""
        try:
            net = ip_network(text, strict=True)
        except ValueError:
            raise Untranslatable(f"bad address {text!r}") from None
        if net.version != self.version:
            raise Untranslatable(f"{text} is not an IPv{self.version} address")
        if net.prefixlen == net.max_prefixlen:
            return str(net.network_address)
        return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}

    @staticmethod
    def ctstate(text: str, negate: bool) -> Expr:
        words = text.split(",")
        if all(w in CT_STATES for w in words):
            key = "state"
        elif all(w in CT_STATUSES for w in words):
            key = "status"
        else:  # iptables ORs state and status words; one nft match cannot
            raise Untranslatable(f"--ctstate {text}")
        values = [w.lower() for w in words]
        return _match({"ct": {"key": key}}, values[0] if len(values) == 1 else values, negate, op="in")

    def target(self, flag: str, name: str) -> None:
        if name == "DROP" and access.chain_number(self.rule.chain) is not None:
            self.out.append({"counter": None})  # status reads how many each access rule dropped
        if name in VERDICTS and flag == "-j":
            self.out.append({VERDICTS[name]: None})
        elif is_owned(name):
            self.out.append({"jump" if flag == "-j" else "goto": {"target": name}})
        elif name == "REJECT" and self.take() == "--reject-with":
            kind = self.take()
            reject = REJECTS.get(kind)
            if reject is None or reject["type"] in _ICMP_VERSION and _ICMP_VERSION[reject["type"]] != self.version:
                raise Untranslatable(f"--reject-with {kind}")
            self.out.append({"reject": dict(REJECTS[kind])})
        elif name == "DNAT" and self.take() == "--to-destination":
            self.out.append({"dnat": self.endpoint(self.take())})
        elif name in ("CONNMARK", "MARK") and self.take() == "--set-xmark":
            value, mask = _mark(self.take())
            key = {"ct": {"key": "mark"}} if name == "CONNMARK" else {"meta": {"key": "mark"}}
            # iptables: mark = (mark & ~mask) ^ value; the same bitwise expression in nft.
            self.out.append({"mangle": {"key": key, "value": {"^": [{"&": [key, ~mask & ALL_ONES]}, value]}}})
        else:
            raise Untranslatable(f"target {name} (or its options)")

    def endpoint(self, text: str) -> Expr:
        """``198.51.100.2:8080``, ``[fd00::2]:8080``, or an address alone."""
        address, port = text, None
        if self.version == 6 and text.startswith("["):
            address, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else None
        elif self.version == 4 and ":" in text:
            address, port = text.split(":", 1)
        try:
            if ip_address(address).version != self.version:
                raise ValueError
        except ValueError:
            raise Untranslatable(f"--to-destination {text}") from None
        if port is None:
            return {"addr": address}
        if not port.isdigit():
            raise Untranslatable(f"--to-destination {text} (only one port)")
        return {"addr": address, "port": int(port)}


def meter_set(name: str, version: int) -> Expr:
    """The declaration (``add set`` body, without family/table) of a dynamic set an access
    rule uses: ``vpnoffload-3r`` (rate: sources forgotten after the hashlimit expiry) or
    ``vpnoffload-3c`` (max_conns: ct count keeps its own list per source). Bounded size."""
    # No "dynamic" flag: nft 1.0.6's JSON does not know it, and nft sets it itself for a
    # set that a rule adds to (as `nft list` then shows).
    body: Expr = {"name": name, "type": "ipv4_addr" if version == 4 else "ipv6_addr", "size": access.METER_SIZE}
    if name.endswith("r"):
        body["flags"] = ["timeout"]
        body["timeout"] = access.RATE_EXPIRE_MS // 1000
    return body
