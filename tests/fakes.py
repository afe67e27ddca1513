"""In-memory stand-ins for vpnoffload's OS backends, for unit tests only."""

from __future__ import annotations

import datetime as dt
import errno
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from vpnoffload.errors import BackendError
from vpnoffload.firewall.rules import (
    BUILTIN_CHAINS,
    TABLES,
    Rule,
    Ruleset,
    _jumps_to_owned,
    is_owned,
    table_content,
    table_label,
)
from vpnoffload.model import Config
from vpnoffload.pki import CertInfo
from vpnoffload.routing.state import Address, Route, _Queries, _reason
from vpnoffload.routing.state import Rule as RouteRule


@dataclass
class FakeBackend:
    """An in-memory firewall for unit tests: ``tables[table][chain]`` is a list of
    rule argument tuples. Behaves like :class:`IptcBackend` for everything
    vpnoffload does, including leaving foreign chains and rules alone.

    ``fail_tables``: writes to these tables raise BackendError (nothing changes).
    ``writes``: the tables written, in order.
    """

    tables: dict[str, dict[str, list[tuple[str, ...]]]] = field(default_factory=dict)
    fail_tables: set[str] = field(default_factory=set)
    writes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for table, builtins in BUILTIN_CHAINS.items():
            chains = self.tables.setdefault(table, {})
            for chain in builtins:
                chains.setdefault(chain, [])

    def preload(self) -> None:
        return None

    def read(self) -> Ruleset:
        chains: set[tuple[str, str]] = set()
        rules: list[Rule] = []
        for table in TABLES:
            for chain, entries in self.tables[table].items():
                owned = is_owned(chain)
                if owned:
                    chains.add((table, chain))
                rules += [Rule(table, chain, a) for a in entries if owned or _jumps_to_owned(table, chain, a)]
        return Ruleset(frozenset(chains), tuple(rules))

    def write(self, table: str, content: Ruleset) -> None:
        content = table_content(content, table)
        if table in self.fail_tables:
            raise BackendError(f"{table_label(table)}: cannot commit: simulated failure")
        chains = {name: list(entries) for name, entries in self.tables[table].items()}
        for name, entries in chains.items():
            if not is_owned(name):
                entries[:] = [a for a in entries if not _jumps_to_owned(table, name, a)]
        for name in [n for n in chains if is_owned(n)]:
            del chains[name]
        for name in content.chain_names(table):
            chains[name] = [r.args for r in content.rules_of(table, name)]
        jumps: dict[str, list[tuple[str, ...]]] = {}
        for rule in content.jumps(table):
            if rule.chain not in chains:
                raise BackendError(f"{table_label(table)}: no chain {rule.chain}")
            jumps.setdefault(rule.chain, []).append(rule.args)
        for name, entries in jumps.items():
            chains[name][:0] = entries  # jumps go first, like IptcBackend
        self.tables[table] = chains
        self.writes.append(table)

    def dump(self) -> dict[str, dict[str, list[tuple[str, ...]]]]:
        """A deep copy of every table, to compare before and after."""
        return {t: {c: list(r) for c, r in chains.items()} for t, chains in self.tables.items()}




class FakeRoutingBackend(_Queries):
    """An in-memory kernel for unit tests; records every change in ``calls``.

    ``default_device`` is what :meth:`route_device` answers for an address not
    held locally (None: unreachable). Adding to a missing device fails like
    the kernel does; adds and deletes are as tolerant as the real backend's.
    """

    def __init__(
        self,
        devices: Iterable[str] = ("lo",),
        rules: Iterable[RouteRule] = (),
        routes: Iterable[Route] = (),
        addresses: Iterable[Address] = (),
        default_device: str | None = None,
    ) -> None:
        self.device_list = list(devices)
        self.rule_list = list(rules)
        self.route_list = list(routes)
        self.address_list = list(addresses)
        self.default_device = default_device
        self.calls: list[str] = []

    def _need(self, device: str | None, what: str) -> None:
        if device is not None and device not in self.device_list:
            raise BackendError(f"cannot {what}: {_reason(errno.ENODEV, device)}")

    def rules(self) -> list[RouteRule]:
        return list(self.rule_list)

    def add_rule(self, rule: RouteRule) -> None:
        self.calls.append(f"add rule {rule}")
        if rule not in self.rule_list:
            self.rule_list.append(rule)

    def delete_rule(self, rule: RouteRule) -> None:
        self.calls.append(f"delete rule {rule}")
        if rule in self.rule_list:
            self.rule_list.remove(rule)

    def routes(self, table: int) -> list[Route]:
        return [r for r in self.route_list if r.table == table]

    def add_route(self, route: Route) -> None:
        self.calls.append(f"add route {route}")
        self._need(route.device, f"add route {route}")
        if route not in self.route_list:
            self.route_list.append(route)

    def delete_route(self, route: Route) -> None:
        self.calls.append(f"delete route {route}")
        if route in self.route_list:
            self.route_list.remove(route)

    def devices(self) -> list[str]:
        return list(self.device_list)

    def addresses(self) -> list[Address]:
        return list(self.address_list)

    def add_address(self, address: Address) -> None:
        self.calls.append(f"add address {address}")
        self._need(address.device, f"add address {address}")
        if address not in self.address_list:
            self.address_list.append(address)

    def delete_address(self, address: Address) -> None:
        self.calls.append(f"remove address {address}")
        if address in self.address_list:
            self.address_list.remove(address)

    def route_device(self, dst: IPv4Address) -> str | None:
        if any(a.address == dst for a in self.address_list):
            return "lo"
        return self.default_device


class FakeNft:
    """An in-memory ``nft -j`` for unit tests of :class:`NftBackend` (its ``run``).

    Understands ``-j list tables``, ``-j list table FAMILY NAME``, ``-j -t list ruleset``
    (sets without their elements) and ``-j -f -`` with add/flush/delete of tables,
    chains, rules and sets (and add element), applied all-or-nothing
    like the kernel's transaction. Listings print ``ct mark set`` the way nft
    1.0.6 does (``& (a | x) | x`` when no bit is in both). ``batches``: every
    transaction received, parsed.
    """

    def __init__(self) -> None:
        #: (family, table) -> {"chains": {name: chain object}, "rules": {chain: [expr lists]}}
        self.tables: dict[tuple[str, str], dict[str, dict]] = {}
        self.batches: list[list[dict]] = []

    def __call__(self, argv: list[str], input: str | None = None) -> str:
        import copy
        import json

        if argv == ["-j", "list", "tables"]:
            return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}] + [
                {"table": {"family": f, "name": n, "handle": 1}} for f, n in self.tables]})
        if argv == ["-j", "-t", "list", "ruleset"]:
            items = [{"metainfo": {"json_schema_version": 1}}]
            for key in self.tables:
                items += [i for i in self._listing(*key) if "metainfo" not in i]
            return json.dumps({"nftables": items})
        if argv[:3] == ["-j", "list", "table"]:
            key = (argv[3], argv[4])
            if key not in self.tables:
                raise BackendError(f"nft {' '.join(argv)} failed: Error: No such file or directory")
            return json.dumps({"nftables": self._listing(*key)})
        if argv == ["-j", "-f", "-"]:
            batch = json.loads(input or "{}")["nftables"]
            self.batches.append(batch)
            tables = copy.deepcopy(self.tables)  # all or nothing, like the kernel
            for command in batch:
                self._apply(tables, command)
            self.tables = tables
            return ""
        raise AssertionError(f"FakeNft does not know nft {argv}")

    def _apply(self, tables: dict, command: dict) -> None:
        (verb, body), = command.items()
        (kind, obj), = body.items()
        if kind == "table":
            key = (obj["family"], obj["name"])
            if verb == "add":
                tables.setdefault(key, {"chains": {}, "rules": {}, "sets": {}})
            elif verb == "delete":
                if key not in tables:
                    raise BackendError("nft -j -f - failed: Error: No such file or directory")
                del tables[key]
            return
        key = (obj["family"], obj["table"])
        if key not in tables:
            raise BackendError("nft -j -f - failed: Error: No such file or directory (table)")
        table = tables[key]
        name = obj.get("name") or obj.get("chain")
        if kind in ("set", "element"):
            self._set(table, verb, kind, obj)
            return
        if kind == "counter":
            self._counter(table, verb, obj["name"])
            return
        if kind == "chain" and verb == "add":
            table["chains"].setdefault(name, dict(obj))
            table["rules"].setdefault(name, [])
        elif name not in table["chains"]:
            raise BackendError(f"nft -j -f - failed: Error: No such file or directory (chain {name})")
        elif kind == "chain" and verb == "flush":
            table["rules"][name] = []
        elif kind == "chain" and verb == "delete":
            if table["rules"][name] or any(e.get(v, {}).get("target") == name for rs in table["rules"].values()
                                           for r in rs for e in r for v in ("jump", "goto")):
                raise BackendError("nft -j -f - failed: Error: Device or resource busy")
            del table["chains"][name], table["rules"][name]
        elif kind == "rule" and verb == "add":
            for expr in obj["expr"]:
                for v in ("jump", "goto"):
                    if v in expr and expr[v]["target"] not in table["chains"]:
                        raise BackendError("nft -j -f - failed: Error: No such file or directory (jump)")
                if _set_used(expr) and _set_used(expr) not in table["sets"]:
                    raise BackendError("nft -j -f - failed: Error: No such file or directory (set)")
                if isinstance(expr.get("counter"), str) and expr["counter"] not in table.get("counters", {}):
                    raise BackendError("nft -j -f - failed: Error: No such file or directory (counter)")
            table["rules"][name].append(obj["expr"])
        else:
            raise AssertionError(f"FakeNft does not know {command}")

    @staticmethod
    def _counter(table: dict, verb: str, name: str) -> None:
        """Named counter objects (the VPS's counts): add (kept if there), delete (not while a rule names it)."""
        named = table.setdefault("counters", {})
        if verb == "add":
            named.setdefault(name, {"packets": 0, "bytes": 0})
        elif name not in named:
            raise BackendError(f"nft -j -f - failed: Error: No such file or directory (counter {name})")
        elif verb == "delete":
            if any(e.get("counter") == name for rs in table["rules"].values() for r in rs for e in r):
                raise BackendError("nft -j -f - failed: Error: Device or resource busy (counter)")
            del named[name]
        else:
            raise AssertionError(f"FakeNft does not know {verb} counter")

    @staticmethod
    def _set(table: dict, verb: str, kind: str, obj: dict) -> None:
        sets, name = table["sets"], obj["name"]
        if kind == "set" and verb == "add":
            sets.setdefault(name, {"set": {k: v for k, v in obj.items() if k != "elem"}, "elem": list(obj.get("elem", []))})
        elif name not in sets:
            raise BackendError(f"nft -j -f - failed: Error: No such file or directory (set {name})")
        elif kind == "set" and verb == "delete":
            if any(_set_used(e) == name for rs in table["rules"].values() for r in rs for e in r):
                raise BackendError("nft -j -f - failed: Error: Device or resource busy (set)")
            del sets[name]
        elif kind == "element" and verb == "add":
            sets[name]["elem"] += obj["elem"]
        else:
            raise AssertionError(f"FakeNft does not know {verb} {kind}")

    def _listing(self, family: str, name: str) -> list[dict]:
        table = self.tables[(family, name)]
        out: list[dict] = [{"metainfo": {"json_schema_version": 1}}, {"table": {"family": family, "name": name}}]
        out += [{"set": s["set"]} for s in table.get("sets", {}).values()]
        out += [{"counter": {"family": family, "table": name, "name": n, **c}}
                for n, c in table.get("counters", {}).items()]
        out += [{"chain": chain} for chain in table["chains"].values()]
        for chain, rules in table["rules"].items():
            out += [{"rule": {"family": family, "table": name, "chain": chain, "expr": [_as_printed(e) for e in r]}}
                    for r in rules]
        return out


def _set_used(expr: dict) -> str | None:
    """The set an expression names (``ip saddr @s``, ``update @s {...}``), if any."""
    right = expr.get("match", {}).get("right")
    if isinstance(right, str) and right.startswith("@"):
        return right[1:]
    if "set" in expr:
        return expr["set"]["set"][1:]
    return None


def _as_printed(expr: dict) -> dict:
    """``ct mark set ct mark & a ^ x`` as nft prints it back: ``& (a | x) | x`` when a & x == 0
    (``ct mark | x`` when that masks nothing)."""
    value = expr.get("mangle", {}).get("value")
    if isinstance(value, dict) and "^" in value:
        (masked, xor) = value["^"]
        if isinstance(masked, dict) and "&" in masked:
            key, mask = masked["&"]
            if mask & xor == 0 and mask | xor == 0xFFFFFFFF:  # nothing left to mask
                return {"mangle": {**expr["mangle"], "value": {"|": [key, xor]}}}
            if mask & xor == 0:
                return {"mangle": {**expr["mangle"], "value": {"|": [{"&": [key, mask | xor]}, xor]}}}
    return expr


@dataclass
class FakeTunnel:
    name: str
    config: Path
    workdir: Path
    run_dir: Path
    fail: bool = False
    up: bool = False
    log: list[str] = field(default_factory=list)
    leftover: bool = False  # died, leaving its pidfile or unit wrapper behind

    def running(self) -> bool:
        return self.up

    def left_behind(self) -> bool:
        return self.leftover

    def start(self) -> None:
        if self.fail:
            raise BackendError("openvpn did not start: Options error")
        self.up = True
        self.log.append("start")

    def wait_ready(self, timeout: float) -> None:
        self.log.append("ready")

    def stop(self) -> None:
        self.up = self.leftover = False
        self.log.append("stop")


class FakeUsers:
    def __init__(self) -> None:
        self.names: set[str] = set()

    def exists(self, name: str) -> bool:
        return name in self.names

    def create(self, name: str) -> None:
        self.names.add(name)

    def delete(self, name: str) -> None:
        self.names.discard(name)


def pem(kind: str, body: str) -> str:
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n"


class FakePki:
    """Fixed PEM text so the golden output is deterministic."""

    server_name = "server"

    def __init__(self, revoked: frozenset[str] = frozenset()) -> None:
        self.revoked = revoked

    def exists(self, name: str) -> bool:
        return name in {"server", "home", "lab-2"}

    def info(self, name: str) -> CertInfo:
        return CertInfo(name, "client", 1, dt.datetime(2036, 1, 1, tzinfo=dt.timezone.utc), name in self.revoked)

    def is_revoked(self, name: str) -> bool:
        return name in self.revoked

    def ca_cert(self) -> str:
        return pem("CERTIFICATE", "FAKE-CA-CERT")

    def cert(self, name: str) -> str:
        return pem("CERTIFICATE", f"FAKE-CERT-{name}")

    def key(self, name: str) -> str:
        return pem("PRIVATE KEY", f"FAKE-KEY-{name}")

    def tls_crypt_key(self) -> str:
        return pem("OpenVPN Static key V1", "00" * 16)

    def crl(self) -> str:
        return pem("X509 CRL", "FAKE-CRL")


#: The deployment deploy_env sets up: one home, two services.
DEPLOY_CONFIG = """
[vps]
address = "203.0.113.10"
[tunnel]
subnet = "198.51.100.0/24"
[homes.home]
address = "198.51.100.2"
[services.web]
listen = "80"
target = "8080"
[services.git]
listen = "203.0.113.11:22"
target = "2222"
"""


def deploy_env(tmp_path: Path):
    """(config, paths, fake backends, tunnels by name, fake /proc) for deploy's up/down on DEPLOY_CONFIG."""
    from vpnoffload import config as cfg
    from vpnoffload import deploy
    from vpnoffload.paths import Paths
    from vpnoffload.pki import Pki

    paths = Paths(config=tmp_path / "vpnoffload.toml", state=tmp_path / "state")
    paths.config.write_text(DEPLOY_CONFIG)
    Pki.create(paths.pki).issue("home")
    proc = tmp_path / "proc"
    (proc / "net/ipv4/conf/vpnoffload0").mkdir(parents=True)
    (proc / "net/ipv4/ip_forward").write_text("0\n")
    (proc / "net/ipv4/conf/vpnoffload0/rp_filter").write_text("1\n")
    tunnels: dict[str, FakeTunnel] = {}

    def factory(**kw) -> FakeTunnel:
        return tunnels.setdefault(kw["name"], FakeTunnel(**kw))

    def pages(paths: Paths) -> FakeTunnel:
        return tunnels.setdefault("pages", FakeTunnel("pages", Path(), Path(), Path()))

    backends = deploy.Backends(
        page_factory=pages,
        firewall=FakeBackend(),
        routing=FakeRoutingBackend(devices=("lo", "eth0"), addresses=[Address(IPv4Address("203.0.113.10"), "eth0", 24)]),
        proc_root=proc, users=FakeUsers(), tunnel_factory=factory,
    )
    return cfg.load(paths.config), paths, backends, tunnels, proc


def watchdog_config(fall: int = 2, rise: int = 2, backups: tuple[str, ...] = ()) -> Config:
    """Two homes (home, attic), a web service with the page and git, for the watchdog's decisions."""
    from ipaddress import IPv4Network

    from vpnoffload.model import Home, Service, Tunnel, Vps, Watch

    return Config(
        vps=Vps(IPv4Address("203.0.113.10")),
        tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
        homes={"home": Home("home", IPv4Address("198.51.100.2")), "attic": Home("attic", IPv4Address("198.51.100.3"))},
        services={
            "web": Service("web", IPv4Address("203.0.113.10"), 80, "home", 8080, fallback="page", backups=backups),
            "git": Service("git", IPv4Address("203.0.113.10"), 22, "home", 2222),
        },
        watch=Watch(fall=fall, rise=rise),
    )


class Swapper:
    """The watchdog's swap callable: records (active targets, flushed) or fails like a locked iptables."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict, frozenset[str]]] = []
        self.prepared = 0
        self.cancelled = 0
        self.fail = False

    def __call__(self, active, flush: frozenset[str]) -> None:
        if self.fail:
            raise BackendError("iptables: locked")
        self.calls.append((dict(active), flush))

    def prepare(self) -> None:
        self.prepared += 1

    def cancel(self) -> None:
        self.cancelled += 1


def prober(verdicts: dict[str, str]):
    """verdicts by "service" or "service@home"."""
    from vpnoffload.watch.health import Result

    def probe(svc, home: str, cfg) -> Result:
        verdict = verdicts.get(f"{svc.name}@{home}", verdicts.get(svc.name, "up"))
        return Result(verdict, 0.01, verdict)  # type: ignore[arg-type]
    return probe
