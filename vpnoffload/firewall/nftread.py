"""nftables JSON expressions -> iptables-save arguments: the reading half of :mod:`.nftexpr`.

:func:`from_nft` turns a rule's ``expr`` list, as ``nft -j list table`` prints
it, back into the :class:`Rule` that :func:`.nftexpr.to_nft` wrote, undoing the
few normalisations nft makes on the way (``ct mark set ct mark & a ^ x`` comes
back as ``& (a | x) | x``, flag sets as ``{"|": [...]}``, a bare ``reject``).
Options that iptables-save prints in one ``-m`` group (``-m tcp --dport 80
--sport 1``, ``-m conntrack --ctstate DNAT --ctorigdst ...``) are regrouped.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any

from vpnoffload.errors import BackendError
from vpnoffload.firewall import access
from vpnoffload.firewall.nftexpr import (
    ALL_ONES, CT_OPTIONS, CT_STATES, CT_STATUSES, ICMP_TYPES, PROTOCOLS, REJECTS, VERDICTS, Expr, Untranslatable,
    RECENT_TAIL, TCP_FLAGS, ip_version, mark_text, recent_side,
)
from vpnoffload.lean import counters
from vpnoffload.firewall.rules import Rule, is_owned

def from_nft(table: str, chain: str, exprs: list[Expr]) -> Rule:
    """The :class:`Rule` a rule's ``expr`` list (as ``nft -j list`` prints it) stands for.

    BackendError naming the chain if an expression is not one :func:`to_nft` writes.
    """
    reader = _Reader(ip_version(table), access.chain_number(chain))
    for expr in exprs:
        try:
            reader.add(expr)
        except (Untranslatable, KeyError, TypeError, ValueError, IndexError) as exc:
            raise BackendError(
                f"nftables table {'ip6' if ip_version(table) == 6 else 'ip'} vpnoffload, chain {chain}: "
                f"cannot read {expr} ({exc}); not written by vpnoffload?"
            ) from None
    return Rule(table, chain, tuple(reader.args))


def _flags(right: Any) -> list[str]:
    """ct state/status values: "dnat", ["established", "related"] or {"|": [...]}."""
    if isinstance(right, str):
        return [right]
    if isinstance(right, dict) and "|" in right:
        return [w for part in right["|"] for w in _flags(part)]
    if isinstance(right, list):
        return [w for part in right for w in _flags(part)]
    raise Untranslatable(f"flags {right!r}")


def _unmask(left: Expr) -> tuple[Expr, int]:
    """``{"&": [key, m]}`` -> (key, m); a bare key -> (key, all ones)."""
    if "&" in left:
        key, mask = left["&"]
        return key, int(mask)
    return left, ALL_ONES


class _Reader:
    """Builds iptables-save arguments from expressions, one at a time."""

    def __init__(self, version: int, acl: int | None = None) -> None:
        self.version = version
        self.acl = acl  # the number of the access chain being read, if it is one
        self.args: list[str] = []
        self.header: str | None = None  # the -p/-m group the last expression opened

    def add(self, expr: Expr) -> None:
        if "counter" in expr:
            name = expr["counter"]
            if isinstance(name, str) and counters.is_counter(name):  # one of the VPS's counts
                self.args += ["-m", "recent", "--set", "--name", name, *RECENT_TAIL, recent_side(name)]
            return  # else someone's `nft add counter`: no effect on what the rule does
        header, self.header = self.header, None
        if "match" in expr:
            self.match(expr["match"], header)
        else:
            self.statement(expr)

    def match(self, m: Expr, header: str | None) -> None:
        op, left, right = m["op"], m["left"], m["right"]
        if op not in ("==", "!=", "in"):
            raise Untranslatable(f"operator {op}")
        bang = ["!"] if op == "!=" else []
        if self.tcp_flags(left, right, op, header):
            return
        if "payload" in left:
            self.payload(left["payload"], right, bang, header)
            return
        key, mask = _unmask(left)
        if "meta" in key and key["meta"]["key"] in ("iifname", "oifname") and mask == ALL_ONES:
            name = right[:-1] + "+" if right.endswith("*") else right
            self.args += [*bang, "-i" if key["meta"]["key"] == "iifname" else "-o", name]
        elif "meta" in key and key["meta"]["key"] == "l4proto" and mask == ALL_ONES:
            names = {v: k for k, v in PROTOCOLS.items()}
            proto = names[right] if isinstance(right, int) else {"icmpv6": "ipv6-icmp"}.get(right, right)
            if proto not in PROTOCOLS:
                raise Untranslatable(f"protocol {right}")
            self.args += [*bang, "-p", proto]
        elif "ct" in key and key["ct"]["key"] in ("state", "status") and mask == ALL_ONES:
            words = {w.upper() for w in _flags(right)}
            order = CT_STATES if key["ct"]["key"] == "state" else CT_STATUSES
            if not words or words - set(order):
                raise Untranslatable(f"ct {key['ct']['key']} {right}")
            self.ct_option("--ctstate", ",".join(w for w in order if w in words), bang, header)
        elif "ct" in key and key["ct"].get("dir") == "original" and mask == ALL_ONES:
            self.ct_original(key["ct"]["key"], right, bang, header)
        elif key in ({"ct": {"key": "mark"}}, {"meta": {"key": "mark"}}):
            module = "connmark" if "ct" in key else "mark"
            if isinstance(right, dict) and "prefix" in right and mask == ALL_ONES:
                # nft prints "& <high bits> == v" as a prefix (ct mark 0x20000000/3): the home
                # tunnels' mark field 0xe0000000 is one (vpnoffload.hometunnels).
                length = int(right["prefix"]["len"])
                right, mask = right["prefix"]["addr"], (ALL_ONES << (32 - length)) & ALL_ONES
            self.args += ["-m", module, *bang, "--mark", mark_text(int(right), mask)]
        else:
            raise Untranslatable("unknown match")

    def tcp_flags(self, left: Expr, right: Any, op: str, header: str | None) -> bool:
        """``tcp flags & rst == rst`` (as written, or as nft may print it back: ``tcp flags rst``)."""
        flags = {"payload": {"protocol": "tcp", "field": "flags"}}
        key, mask = left["&"] if "&" in left else (left, right)
        if key != flags:
            return False
        words, masks = _flags(right), _flags(mask)
        if op == "!=" or len(words) != 1 or masks != words or words[0].upper() not in TCP_FLAGS:
            raise Untranslatable(f"tcp flags {left} {op} {right}")
        if header != "tcp":
            self.args += ["-p", "tcp", "-m", "tcp"]
        flag = words[0].upper()
        self.args += ["--tcp-flags", flag, flag]
        self.header = "tcp"
        return True

    def ct_option(self, option: str, value: str, bang: list[str], header: str | None) -> None:
        """One conntrack option: joins the last ``-m conntrack`` if it comes later in
        conntrack's print order than that one's last option, else starts a new one."""
        rank = list(CT_OPTIONS).index(option)
        if not (header and header.startswith("conntrack:") and int(header.split(":")[1]) < rank):
            self.args += ["-m", "conntrack"]
        self.args += [*bang, option, value]
        self.header = f"conntrack:{rank}"

    def ct_original(self, key: str, right: Any, bang: list[str], header: str | None) -> None:
        family, _, field = key.rpartition(" ")
        options = {v: k for k, v in CT_OPTIONS.items() if v}
        if field not in options or family != ("" if field.startswith("proto") else
                                               "ip" if self.version == 4 else "ip6"):
            raise Untranslatable(f"ct original {key}")
        if field.startswith("proto"):
            value = str(int(right))
        elif isinstance(right, dict):  # conntrack's save prints a host address without /32
            value = str(ip_network(f"{right['prefix']['addr']}/{right['prefix']['len']}"))
        else:
            value = str(ip_address(right))
        self.ct_option(options[field], value, bang, header)

    def payload(self, p: Expr, right: Any, bang: list[str], header: str | None) -> None:
        proto, field = p["protocol"], p["field"]
        if proto in ("ip", "ip6") and field in ("saddr", "daddr"):
            if (proto == "ip6") != (self.version == 6):
                raise Untranslatable(f"{proto} in an IPv{self.version} table")
            if isinstance(right, str) and right.startswith("@"):
                if field != "saddr" or not access.is_our_set(right[1:]):
                    raise Untranslatable(f"{field} in set {right}")
                self.args += ["-m", "set", *bang, "--match-set", right[1:], "src"]
                return
            if isinstance(right, dict):
                text = f"{right['prefix']['addr']}/{right['prefix']['len']}"
            else:
                text = f"{right}/{32 if self.version == 4 else 128}"
            self.args += [*bang, "-s" if field == "saddr" else "-d", str(ip_network(text))]
        elif proto in ("tcp", "udp") and field in ("dport", "sport") and isinstance(right, int):
            if header != proto:  # a new -p group; a second port option joins the last one
                self.args += ["-p", proto, "-m", proto]
            self.args += [*bang, f"--{field}", str(right)]
            self.header = proto
        elif proto in ("icmp", "icmpv6") and field == "type":
            if (proto == "icmpv6") != (self.version == 6):
                raise Untranslatable(f"{proto} in an IPv{self.version} table")
            numbers = {v: k for k, v in ICMP_TYPES[proto].items()}
            number = right if isinstance(right, int) else numbers[right]
            if proto == "icmp":
                self.args += ["-p", "icmp", "-m", "icmp", *bang, "--icmp-type", str(number)]
            else:
                self.args += ["-p", "ipv6-icmp", "-m", "icmp6", *bang, "--icmpv6-type", str(number)]
        else:
            raise Untranslatable(f"{proto} {field}")

    def statement(self, expr: Expr) -> None:
        (name, body), = expr.items()
        verdicts = {v: k for k, v in VERDICTS.items()}
        if name in verdicts:
            self.args += ["-j", verdicts[name]]
        elif name in ("jump", "goto") and is_owned(body["target"]):
            self.args += ["-j" if name == "jump" else "-g", body["target"]]
        elif name == "reject":
            # A bare reject (nft's default) is an ICMP port unreachable of the table's family.
            body = body or {"type": "icmp" if self.version == 4 else "icmpv6", "expr": "port-unreachable"}
            wanted = {k: body[k] for k in ("type", "expr") if k in body}
            kinds = [k for k, v in REJECTS.items() if v == wanted]
            if not kinds:
                raise Untranslatable("reject type")
            self.args += ["-j", "REJECT", "--reject-with", kinds[0]]
        elif name == "dnat":
            address = body["addr"]
            if ip_address(address).version != self.version:
                raise Untranslatable("dnat address of the other family")
            if "port" not in body:
                to = address
            else:
                to = f"{address}:{int(body['port'])}" if self.version == 4 else f"[{address}]:{int(body['port'])}"
            self.args += ["-j", "DNAT", "--to-destination", to]
        elif name == "set" and self.acl is not None:
            self.meter(body)
        elif name == "mangle" and body["key"] in ({"ct": {"key": "mark"}}, {"meta": {"key": "mark"}}):
            value, mask = _xmark(body["key"], body["value"])
            target = "CONNMARK" if "ct" in body["key"] else "MARK"
            self.args += ["-j", target, "--set-xmark", f"{value:#x}/{mask:#x}"]
        else:
            raise Untranslatable("unknown statement")

    def meter(self, body: Expr) -> None:
        """``update @vpnoffload-3r { ip saddr limit ... }`` / ``add @vpnoffload-3c { ip saddr ct count ... }``."""
        saddr = {"payload": {"protocol": "ip" if self.version == 4 else "ip6", "field": "saddr"}}
        (stmt_name, stmt), = body["stmt"][0].items()
        if body["elem"] != saddr or len(body["stmt"]) != 1:
            raise Untranslatable("a dynamic set not keyed by the source alone")
        acl = self.acl
        assert acl is not None  # add() calls this only inside an access chain
        if (stmt_name == "limit" and body["op"] == "update" and body["set"] == f"@{access.rate_name(acl)}"
                and stmt.get("inv") and stmt.get("per") == "second" and stmt.get("rate_unit", "packets") == "packets"):
            self.args += access.hashlimit_args(int(stmt["rate"]), int(stmt.get("burst", 5)), acl)
        elif (stmt_name == "ct count" and body["op"] == "add" and body["set"] == f"@{access.conns_name(acl)}"
              and stmt.get("inv")):
            self.args += access.connlimit_args(int(stmt["val"]), self.version)
        else:
            raise Untranslatable(f"set statement {body['set']} {stmt_name}")


def _xmark(key: Expr, value: Any) -> tuple[int, int]:
    """(value, mask) of ``--set-xmark`` from the right side of ``ct mark set`` (``meta mark set``).

    The kernel keeps ``(mark & and_mask) ^ xor``; nft prints it as ``& a ^ x``,
    or, when no bit is in both, as ``& (a | x) | x``. Undo that first.
    """
    if isinstance(value, int):
        return value, ALL_ONES
    if value == key:
        return 0, 0
    (op, (left, xor)), = value.items()
    if op not in ("^", "|") or not isinstance(xor, int):
        raise Untranslatable("ct mark set")
    source, and_mask = _unmask(left)
    if source != key:
        raise Untranslatable("mark set from something else")
    if op == "|":
        and_mask &= ~xor
    return xor, ~and_mask & ALL_ONES
