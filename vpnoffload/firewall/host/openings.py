"""The host's own firewall, as data: what vpnoffload needs through it, what the host runs, and where each opening goes.

vpnoffload's own rules live in the legacy x_tables (:mod:`.iptc`), but a drop
in any of the host's nf_tables base chains is final whatever those accept. So
each end derives the :class:`Opening` s it needs from the :class:`Config`
(:func:`vps_openings`, :func:`home_openings`), :func:`detect` reads the host's
ruleset (``nft -j list ruleset``: native tables and iptables-nft's alike) into
:class:`BaseChain` s tagged with the manager that owns them, and :func:`choose`
places every opening in every base chain on its hook that would otherwise drop
it, through that manager's own mechanism:

========================  ===============================================  ========================
manager                   where the opening goes                           module
========================  ===============================================  ========================
Docker (iptables-nft)     ``DOCKER-USER`` for forward, the chain otherwise  :mod:`.host_docker`
ufw (iptables-nft)        ``ufw allow`` / ``ufw route allow``               :mod:`.host_ufw`
plain iptables-nft        the built-in chain, with iptables-nft             :mod:`.host_docker`
native nftables           the dropping base chain itself                    :mod:`.host_nft`
firewalld (daemon runs)   runtime rich rules in the zone of the inbound      :mod:`.host_firewalld`
                          interface; the probe veth bound to ``trusted``
firewalld-shaped table    as native nftables (no firewalld daemon here)     :mod:`.host_nft`
========================  ===============================================  ========================

Everything here is pure: no command runs, so it is unit-tested on recorded rulesets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from vpnoffload import probens
from vpnoffload.model import Config

Hook = Literal["input", "forward", "output"]
#: ``dnat``: only connections vpnoffload DNATed (ct status dnat); ``established``: replies (ct state established,related).
CtMatch = Literal["dnat", "established"]
COMMENT = "vpnoffload"
#: iptables-nft keeps its tables under these names, with upper-case built-in chains.
_XT_TABLES = ("filter", "nat", "mangle", "raw", "security")
_XT_BUILTINS = ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING")


@dataclass(frozen=True, order=True)
class Opening:
    """One kind of packet vpnoffload needs the host's firewall to let through.

    Unset fields match anything. ``family`` is 4 or 6; ``why`` is for people
    (dry run, status, docs) and part of identity, so two services needing the
    same packet give two openings (they are merged per chain in :func:`choose`).
    """

    hook: Hook
    family: int
    proto: str | None = None
    dport: int | None = None
    sport: int | None = None
    iif: str | None = None
    oif: str | None = None
    saddr: str | None = None
    daddr: str | None = None
    ct: CtMatch | None = None
    why: str = field(default="", compare=False)

    def match_text(self) -> str:
        """The packet in nft's words (shown by --dry-run and status)."""
        parts = []
        if self.iif:
            parts.append(f'iifname "{self.iif}"')
        if self.oif:
            parts.append(f'oifname "{self.oif}"')
        ip = "ip" if self.family == 4 else "ip6"
        if self.saddr:
            parts.append(f"{ip} saddr {self.saddr}")
        if self.daddr:
            parts.append(f"{ip} daddr {self.daddr}")
        if self.proto and self.sport is not None:
            parts.append(f"{self.proto} sport {self.sport}")
        if self.proto and self.dport is not None:
            parts.append(f"{self.proto} dport {self.dport}")
        elif self.proto and self.sport is None:
            parts.append(f"meta l4proto {self.proto}")
        if self.ct == "dnat":
            parts.append("ct status dnat")
        elif self.ct == "established":
            parts.append("ct state established,related")
        return " ".join(parts) + " accept"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Opening":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


def _services_homes(config: Config) -> list[tuple[Any, str, int, str]]:
    """(service, home, family, home address) for every DNATed service and each of its homes."""
    out = []
    for svc in config.services.values():
        fam = svc.listen_address.version if svc.via == "dnat" else 4
        for home in svc.homes:
            address = config.homes[home].address if fam == 4 else config.homes[home].address6
            if address is not None:
                out.append((svc, home, fam, str(address)))
    return out


def vps_openings(config: Config, interface: str) -> list[Opening]:
    """What the VPS needs: OpenVPN's port in; each DNATed service forwarded both ways
    (in on ``interface`` to the home's tunnel address and target port, and its
    replies back); the watchdog's visitor-path check from its probe veth into the
    tunnel and back; the friendly-page ports in, only DNATed; the health checks
    (and the proxy's connections) out to home, with their replies in."""
    dev, tun = config.tunnel.device, config.tunnel
    vps = str(config.vps.bind_address)  # what arrives here: the private address on a 1:1-NAT cloud
    out = [Opening("input", 4, tun.proto, dport=tun.port, iif=interface, daddr=vps, why="OpenVPN server")]
    for svc, home, fam, address in _services_homes(config):
        if svc.via == "dnat":
            out.append(Opening("forward", fam, svc.proto, dport=svc.target_port, iif=interface, oif=dev, daddr=address,
                               ct="dnat", why=f"service {svc.name} to {home}"))
            out.append(Opening("forward", fam, svc.proto, sport=svc.target_port, iif=dev, oif=interface, saddr=address,
                               ct="established", why=f"replies of service {svc.name} from {home}"))
        if fam == 4:
            out.append(Opening("output", 4, "tcp", dport=svc.target_port, oif=dev, daddr=address,
                               why=f"health checks of service {svc.name} at {home}"))
    if any(s.via == "dnat" for s in config.services.values()):
        # The watchdog's visitor-path check (watch/probe.py): from its probe namespace's veth
        # into the tunnel (DNATed to the public address, or straight to a home), and back.
        # Without them a host that drops forwarded traffic would fail every service over.
        probe = probens.addresses()[1]
        out.append(Opening("forward", 4, None, iif=probens.VPS_DEVICE, oif=dev, saddr=probe,
                           why="the watchdog's visitor-path check"))
        out.append(Opening("forward", 4, None, iif=dev, oif=probens.VPS_DEVICE, daddr=probe, ct="established",
                           why="replies to the watchdog's visitor-path check"))
    pages = [s for s in config.services.values() if s.serves_page and s.via == "dnat"]
    port = config.watch.fallback_port
    for svc in pages:
        page_port = port + 1 if svc.page_over_tls else port
        daddr = str(svc.listen_address) if svc.ipv6 else vps
        out.append(Opening("input", 6 if svc.ipv6 else 4, "tcp", dport=page_port, iif=interface, daddr=daddr, ct="dnat",
                           why="friendly-page server (only DNATed connections)"))
    if config.services:
        out.append(Opening("input", 4, None, iif=dev, ct="established", why="replies to the health checks"))
    out.append(Opening("output", 4, None, ct="established", why="replies of the OpenVPN and page servers"))
    return _unique(out)


def home_openings(config: Config, home: str, device: str | None = None) -> list[Opening]:
    """What a home box needs: its services' target ports arriving on the tunnel
    (``device``: this tunnel's, see vpnoffload.hometunnels), and the OpenVPN
    client's own traffic to the VPS and back."""
    dev, tun = device or config.tunnel.device, config.tunnel
    box = config.homes[home]
    vps = str(config.vps.address)
    out = [Opening("input", 4, svc.proto, dport=svc.target_port, iif=dev, daddr=str(box.address),
                   why=f"service {svc.name} from the tunnel") for svc in config.services_of(home)]
    if box.address6 is not None:
        out += [Opening("input", 6, svc.proto, dport=svc.target_port, iif=dev, daddr=str(box.address6),
                        why=f"service {svc.name} from the tunnel") for svc in config.services_of(home)
                if svc in config.ipv6_services]
    out.append(Opening("input", 4, tun.proto, sport=tun.port, saddr=vps, ct="established",
                       why="the OpenVPN client's replies from the VPS"))
    out.append(Opening("output", 4, tun.proto, dport=tun.port, daddr=vps, why="the OpenVPN client to the VPS"))
    out.append(Opening("output", 4, None, oif=dev, ct="established", why="replies of the services into the tunnel"))
    return _unique(out)


def _unique(openings: list[Opening]) -> list[Opening]:
    seen: dict[Opening, None] = {}
    for o in openings:
        seen.setdefault(o, None)
    return list(seen)


# ------------------------------------------------------------------ detection


@dataclass(frozen=True)
class BaseChain:
    """A filter base chain of the host's ruleset, and who manages it."""

    family: str  # nft family: ip, ip6, inet
    table: str
    name: str
    hook: str
    policy: str
    drops: bool  # policy drop, or a drop/reject verdict among its rules
    manager: str  # "docker", "ufw", "iptables-nft", "nftables"
    accepts_established: bool = False  # starts off with an unconditional ct state established,related accept
    accepts_dnat: bool = False  # starts off with an unconditional ct status dnat accept (firewalld's does)

    @property
    def families(self) -> tuple[int, ...]:
        return {"ip": (4,), "ip6": (6,)}.get(self.family, (4, 6))

    @property
    def label(self) -> str:
        return f"{self.family} {self.table} {self.name}"


@dataclass(frozen=True)
class Host:
    """What :func:`detect` found: the host's base chains plus what runs beside them."""

    chains: tuple[BaseChain, ...] = ()
    tables: tuple[str, ...] = ()  # "family name" of every nf_tables table
    legacy_tables: tuple[str, ...] = ()  # legacy x_tables registered in this netns
    ufw: bool = False
    firewalld: bool = False  # the firewalld daemon runs (then its table is its own)
    docker: bool = False
    #: firewalld's runtime zone of each interface it has bound ((interface, zone), ...), and its default zone
    #: (where every other interface's traffic goes).
    firewalld_zones: tuple[tuple[str, str], ...] = ()
    firewalld_default: str = "public"

    def zone_of(self, interface: str | None) -> str:
        """firewalld's zone for traffic arriving on ``interface`` (the default zone when it is unbound)."""
        return dict(self.firewalld_zones).get(interface or "", self.firewalld_default)

    def found(self) -> list[str]:
        """One line per firewall found, for doctor and status."""
        out = []
        if self.legacy_tables:
            out.append(f"legacy iptables (tables {', '.join(self.legacy_tables)}; vpnoffload's own rules live here)")
        xt = [t for t in self.tables if _is_xt_table(*t.split(" ", 1), self)]
        if xt:
            out.append(f"iptables-nft (tables {', '.join(xt)})")
        if self.docker:
            out.append("Docker (DOCKER-USER, DOCKER chains)")
        if self.ufw:
            out.append("ufw (enabled)")
        if "inet firewalld" in self.tables:
            out.append("firewalld" + (" (running)" if self.firewalld else "-shaped nftables table inet firewalld "
                                                                          "(no firewalld daemon running)"))
        native = [t for t in self.tables if t not in xt and t != "inet firewalld"]
        if native:
            out.append(f"nftables (tables {', '.join(native)})")
        drops = [f"{c.label} ({c.hook})" for c in self.chains if c.drops]
        out.append(f"dropping base chains: {', '.join(drops)}" if drops else "no base chain drops anything")
        return out


def _is_xt_table(family: str, name: str, host: Host | None = None, chains: set[str] | None = None) -> bool:
    if family not in ("ip", "ip6") or name not in _XT_TABLES:
        return False
    if chains is None and host is not None:
        chains = {c.name for c in host.chains if c.family == family and c.table == name}
    return not chains or any(c in _XT_BUILTINS for c in chains)


def _verdict(rule: dict[str, Any]) -> str | None:
    for expr in rule.get("expr", []):
        for key in ("accept", "drop", "reject", "jump", "goto", "return"):
            if key in expr:
                return key
    return None


def _only_ct(rule: dict[str, Any], key: str, wanted: set[str]) -> bool:
    """``ct <key> <wanted...> accept`` and nothing else (counters aside)."""
    exprs = [e for e in rule.get("expr", []) if "counter" not in e]
    if len(exprs) != 2 or "accept" not in exprs[1]:
        return False
    match = exprs[0].get("match", {})
    right = match.get("right")
    right = right.get("set") if isinstance(right, dict) else right
    values = set(right) if isinstance(right, list) else {right}
    return match.get("left") == {"ct": {"key": key}} and wanted <= values


def _only_established(rule: dict[str, Any]) -> bool:
    """``ct state established,related accept`` and nothing else (counters aside)."""
    return _only_ct(rule, "state", {"established", "related"})


def detect(ruleset: dict[str, Any], *, ufw: bool = False, firewalld: bool = False,
           legacy_tables: tuple[str, ...] = (), firewalld_zones: tuple[tuple[str, str], ...] = (),
           firewalld_default: str = "public") -> Host:
    """Read ``nft -j list ruleset`` output (parsed) into a :class:`Host`.

    ``ufw``: ``ufw status`` says active (its chains also show it);
    ``firewalld``: its daemon answers. A chain "drops" if its policy is drop or
    any of its own rules ends in drop or reject: deciding whether that rule
    would catch vpnoffload's packets is left undecided, so such a chain gets
    its openings (at its top, where they are harmless if redundant).
    """
    # vpnoffload's own nftables tables (the nft backend's) are not the host's firewall.
    items = [i for i in ruleset.get("nftables", []) if not _ours(next(iter(i.values()), {}))]
    tables = [f"{i['table']['family']} {i['table']['name']}" for i in items if "table" in i]
    chain_names: dict[tuple[str, str], set[str]] = {}
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for i in items:
        if "chain" in i:
            c = i["chain"]
            chain_names.setdefault((c["family"], c["table"]), set()).add(c["name"])
        elif "rule" in i:
            r = i["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
    found: list[BaseChain] = []
    docker = ufw_seen = False
    for i in items:
        c = i.get("chain")
        if not c:
            continue
        names = chain_names.get((c["family"], c["table"]), set())
        docker = docker or "DOCKER-USER" in names
        ufw_seen = ufw_seen or any(n.startswith(("ufw-", "ufw6-")) for n in names)
        if c.get("type") != "filter" or c.get("hook") not in ("input", "forward", "output"):
            continue
        own = rules.get((c["family"], c["table"], c["name"]), [])
        drops = c.get("policy") == "drop" or any(_verdict(r) in ("drop", "reject") for r in own)
        manager = _manager(c["family"], c["table"], c["hook"], names, ufw, firewalld)
        found.append(BaseChain(c["family"], c["table"], c["name"], c["hook"], c.get("policy", "accept"), drops,
                               manager, accepts_established=any(_only_established(r) for r in own[:3]),
                               accepts_dnat=any(_only_ct(r, "status", {"dnat"}) for r in own[:3])))
    return Host(tuple(found), tuple(tables), tuple(legacy_tables), ufw=ufw and ufw_seen, firewalld=firewalld,
                docker=docker, firewalld_zones=firewalld_zones, firewalld_default=firewalld_default)


def _ours(obj: Any) -> bool:
    """A table, chain or rule of vpnoffload's own nft backend (``table ip|ip6 vpnoffload``)."""
    from vpnoffload.firewall.nft import TABLE

    if not isinstance(obj, dict) or obj.get("family") not in ("ip", "ip6"):
        return False
    table = obj["table"] if "table" in obj else obj.get("name")  # a table object names itself
    return table == TABLE


def _manager(family: str, table: str, hook: str, names: set[str], ufw: bool, firewalld: bool = False) -> str:
    if _is_xt_table(family, table, chains=names):
        if hook == "forward" and "DOCKER-USER" in names:
            return "docker"  # Docker's FORWARD jumps to DOCKER-USER first; ufw's come after
        if ufw and any(n.startswith(("ufw-", "ufw6-")) for n in names):
            return "ufw"
        return "iptables-nft"
    if firewalld and (family, table) == ("inet", "firewalld"):
        return "firewalld"  # the daemon rewrites this table on every reload: open through it
    return "nftables"  # a firewalld-shaped table without a daemon too


# ------------------------------------------------------------------ the chooser


@dataclass(frozen=True, order=True)
class Placement:
    """One opening in one place: ``mechanism`` is "nft", "iptables-nft", "ufw" or "firewalld"
    (then ``chain`` is the firewalld zone it goes into)."""

    mechanism: str
    family: str  # nft family of the chain ("ip" for iptables-nft v4, "ip6" for v6)
    table: str
    chain: str  # where the rule goes (DOCKER-USER for Docker's forward)
    opening: Opening

    @property
    def where(self) -> str:
        if self.mechanism == "ufw":
            return "ufw"
        if self.mechanism == "firewalld":
            what = f"interface {self.opening.iif}" if self.opening.hook == "forward" else "rich rule"
            return f"firewalld zone {self.chain} (runtime {what})"
        if self.mechanism == "iptables-nft":
            return f"{'ip6tables' if self.family == 'ip6' else 'iptables'}-nft {self.table} {self.chain}"
        return f"nftables {self.family} {self.table} {self.chain}"

    @property
    def summary(self) -> str:
        return f"open in {self.where}: {self.opening.match_text()} ({self.opening.why})"


def choose(openings: list[Opening], host: Host) -> list[Placement]:
    """Every opening in every base chain on its hook that would otherwise drop it.

    ufw already accepts established/related traffic in its before-rules, and a
    chain that starts by accepting it needs no established opening either.
    Openings needing the same rule in the same place are merged (first why kept).
    """
    out: dict[tuple[str, str, str, str, Opening], Placement] = {}
    for opening in openings:
        for chain in host.chains:
            if chain.hook != opening.hook or not chain.drops or opening.family not in chain.families:
                continue
            if opening.ct == "established" and (chain.accepts_established or chain.manager == "ufw"):
                continue
            if opening.ct == "dnat" and chain.accepts_dnat:
                continue
            if chain.manager == "firewalld" and opening.hook == "output":
                continue  # its filter_OUTPUT rejects only IPv6 addresses of 6to4/IPv4-mapped ranges (RFC 3964)
            firewalld_place = _firewalld_place(opening, chain, host) if chain.manager == "firewalld" else None
            if firewalld_place is not None:
                place = firewalld_place
            elif chain.manager == "ufw":
                place = Placement("ufw", chain.family, chain.table, chain.name, opening)
            elif chain.manager in ("docker", "iptables-nft"):
                target = "DOCKER-USER" if chain.manager == "docker" else chain.name
                place = Placement("iptables-nft", chain.family, chain.table, target, opening)
            else:
                place = Placement("nft", chain.family, chain.table, chain.name, opening)
            key = (place.mechanism, place.family, place.table, place.chain, opening)
            out.setdefault(key, place)
    # ufw's rules cover both its v4 and v6 chains: one ufw rule per opening.
    seen_ufw: set[Opening] = set()
    result = []
    for place in out.values():
        if place.mechanism == "ufw":
            if place.opening in seen_ufw:
                continue
            seen_ufw.add(place.opening)
        result.append(place)
    return result


def _firewalld_place(opening: Opening, chain: BaseChain, host: Host) -> Placement | None:
    """firewalld's own way for ``opening``, or None where it has none (then a tagged rule in its table,
    which the watchdog puts back after each reload).

    New connections in: a runtime rich rule in the zone of the interface they
    arrive on. Forwarded from the watchdog's probe veth (vpnoffload's own
    device, nothing else arrives on it): that interface bound to the
    ``trusted`` zone at runtime, whose target accepts what enters there.
    Conntrack matches have no firewalld words; firewalld's base chains accept
    established and DNATed traffic anyway (see :func:`choose`).
    """
    if opening.ct is not None:
        return None
    if opening.hook == "input":
        return Placement("firewalld", chain.family, chain.table, host.zone_of(opening.iif), opening)
    if opening.hook == "forward" and opening.iif == probens.VPS_DEVICE:
        return Placement("firewalld", chain.family, chain.table, "trusted", opening)
    return None
