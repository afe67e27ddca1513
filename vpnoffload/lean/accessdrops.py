"""How many first packets each service's access rules dropped, read from the kernel.

For ``status`` and the watchdog's metrics, so lean like the rest of the watchdog:
stdlib and :mod:`.spawn` only, one short-lived command per look. The counters
are the DROP rules' own, in the access chains ``VPNOFFLOAD-ACL<n>`` (``n``: the
service's position + 1, its mark number; see ``firewall/access.py``):

* nftables: ``nft -j -t list ruleset`` (terse: no set elements, ~5 ms even with a
  100 000-prefix list), the ``counter`` of each rule in our table;
* legacy: ``iptables-legacy-save -c -t filter`` (and ip6tables'), only when that
  table is registered already: reading it would register it otherwise.

A counter counts packets that would have opened a connection: a client that
retries its SYN counts again. Counters start at 0 whenever vpnoffload rewrites
the filter table (``up vps``, a watchdog swap on the legacy backend).
"""

from __future__ import annotations

import json
import os

from vpnoffload.lean import spawn

TYPE_CHECKING = False  # typing costs ~1 MB resident in the lean processes: annotations stay strings
if TYPE_CHECKING:
    from typing import Any

ACL_PREFIX = "VPNOFFLOAD-ACL"
KINDS = ("allow", "deny", "rate", "max_conns")
TIMEOUT = 5.0


def _which(name: str) -> str | None:
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]:
        path = os.path.join(d, name)
        if d and os.access(path, os.X_OK):
            return path
    return None


def _output(argv: list[str]) -> str | None:
    """stdout of ``argv``, or None when it is missing, fails or hangs."""
    exe = _which(argv[0])
    if exe is None:
        return None
    child = spawn.spawn([exe, *argv[1:]], stdout=True)
    try:
        out, _ = child.communicate(b"", TIMEOUT)
    except TimeoutError:
        child.kill()
        return None
    return out.decode(errors="replace") if child.returncode == 0 else None


def _registered(path: str) -> bool:
    try:
        with open(path) as f:
            return "filter" in f.read().split()
    except OSError:
        return False


def save_kind(tokens: list[str]) -> str | None:
    """Which access rule an ``iptables-save`` rule is (None: not a DROP of an access chain)."""
    if tokens[-2:] != ["-j", "DROP"]:
        return None
    if "--match-set" in tokens:
        return "allow" if tokens[tokens.index("--match-set") - 1] == "!" else "deny"
    return "rate" if "hashlimit" in tokens else "max_conns" if "connlimit" in tokens else None


def nft_kind(exprs: list[dict[str, Any]]) -> str | None:
    """Which access rule an nftables rule (its JSON expressions) is."""
    for expr in exprs:
        right = expr.get("match", {}).get("right") if isinstance(expr.get("match"), dict) else None
        if isinstance(right, str) and right.startswith("@"):
            return "allow" if expr["match"].get("op") == "!=" else "deny"
        stmts = expr.get("set", {}).get("stmt", []) if isinstance(expr.get("set"), dict) else []
        for stmt in stmts:
            if "limit" in stmt:
                return "rate"
            if "ct count" in stmt:
                return "max_conns"
    return None


def _number(chain: str) -> int | None:
    rest = chain[len(ACL_PREFIX):] if chain.startswith(ACL_PREFIX) else ""
    return int(rest) if rest.isdigit() else None


def parse_save(text: str) -> dict[int, dict[str, int]]:
    """{chain number: {kind: packets}} from ``iptables-save -c`` output."""
    found: dict[int, dict[str, int]] = {}
    for line in text.splitlines():
        if not line.startswith("["):
            continue
        counters, _, rule = line.partition(" ")
        tokens = rule.split()
        if len(tokens) < 2 or tokens[0] != "-A" or (number := _number(tokens[1])) is None:
            continue
        kind = save_kind(tokens)
        if kind is not None:
            packets = int(counters.strip("[]").split(":")[0])
            found.setdefault(number, {})[kind] = found.get(number, {}).get(kind, 0) + packets
    return found


def parse_nft(text: str) -> dict[int, dict[str, int]]:
    """{chain number: {kind: packets}} from ``nft -j -t list ruleset`` output (our table only)."""
    found: dict[int, dict[str, int]] = {}
    for item in json.loads(text or "{}").get("nftables", []):
        rule = item.get("rule")
        if not rule or rule.get("table") != "vpnoffload" or (number := _number(rule.get("chain", ""))) is None:
            continue
        exprs = rule.get("expr", [])
        kind = nft_kind(exprs)
        packets = next((e["counter"].get("packets", 0) for e in exprs if isinstance(e.get("counter"), dict)), None)
        if kind is not None and packets is not None:
            found.setdefault(number, {})[kind] = found.get(number, {}).get(kind, 0) + packets
    return found


def read(services: dict[int, str]) -> dict[str, dict[str, int]] | None:
    """{service: {kind: packets dropped}} for ``services`` ({mark number: name}); None when
    no ruleset could be read (not root, no tools)."""
    found: dict[int, dict[str, int]] = {}
    read_any = False
    listing = _output(["nft", "-j", "-t", "list", "ruleset"])
    if listing is not None:
        read_any = True
        try:
            _merge(found, parse_nft(listing))
        except (ValueError, AttributeError, TypeError, KeyError):
            pass
    for save, names in (("iptables-legacy-save", "/proc/net/ip_tables_names"),
                        ("ip6tables-legacy-save", "/proc/net/ip6_tables_names")):
        if _registered(names):
            text = _output([save, "-c", "-t", "filter"])
            if text is not None:
                read_any = True
                _merge(found, parse_save(text))
    if not read_any:
        return None
    return {name: found.get(number, {}) for number, name in services.items()}


def _merge(into: dict[int, dict[str, int]], more: dict[int, dict[str, int]]) -> None:
    for number, kinds in more.items():
        for kind, packets in kinds.items():
            into.setdefault(number, {})[kind] = into.get(number, {}).get(kind, 0) + packets


def render(name: str, drops: dict[str, int] | None) -> str:
    """One status line: what each access rule of ``name`` dropped."""
    if drops is None:
        return f"access of {name}: drop counters unreadable (run as root)"
    shown = ", ".join(f"{drops.get(k, 0)} by {k}" for k in KINDS if k in drops) or "no access rule in force"
    return f"access of {name}: dropped {shown} (new connections, since the rules were last written)"


def metrics(drops: dict[str, dict[str, int]] | None) -> list[str]:
    """Prometheus lines: ``vpnoffload_access_dropped_total{service=..,rule=..}``."""
    if not drops:
        return []
    lines = ["# HELP vpnoffload_access_dropped_total New connections a service's access rule dropped "
             "(since the rules were last written).",
             "# TYPE vpnoffload_access_dropped_total counter"]
    lines += [f'vpnoffload_access_dropped_total{{service="{name}",rule="{kind}"}} {count}'
              for name, kinds in drops.items() for kind, count in kinds.items()]
    return lines


def restricted(config: object) -> dict[int, str]:
    """{mark number: name} of ``config``'s services with access rules (kernel-forwarded ones)."""
    services = getattr(config, "services", {})
    return {i + 1: name for i, (name, svc) in enumerate(services.items())
            if getattr(svc, "via", "dnat") == "dnat" and _restricts(svc)}


def _restricts(svc: object) -> bool:
    """A model service says so in its ``access``; the watchdog's snapshot view (lean.snapshot) in ``restricts``."""
    return bool(getattr(svc, "restricts", False) or getattr(getattr(svc, "access", None), "restricts", False))
