"""What vpnoffload wants in the firewall on each end, as data (see :mod:`vpnoffload.firewall.rules`)."""

from __future__ import annotations

from collections.abc import Mapping

from vpnoffload.errors import ConfigError
from vpnoffload.firewall import access
from vpnoffload.firewall.rules import (
    DNAT_CHAIN, EVIDENCE_IN_CHAIN, EVIDENCE_OUT_CHAIN, FORWARD_CHAIN, INPUT_CHAIN, IPV4, IPV6, MARK_MASK, MARK_SHIFT, MAX_SERVICES, OUTPUT_CHAIN, Family,
    Rule, Ruleset,
)
from vpnoffload.hometunnels import FIRST, Slot
from vpnoffload.lean import counters
from vpnoffload.model import HEALTH_MARK, Config, Service

def service_mark(config: Config, service: str) -> tuple[int, int]:
    """(value, mask) of the conntrack mark the VPS gives ``service``'s connections."""
    names = list(config.services)
    if service not in names:
        raise ConfigError(f"no service named {service!r}", field="services")
    index = names.index(service)
    if index >= MAX_SERVICES:
        raise ConfigError(f"at most {MAX_SERVICES} services are supported", field="services")
    return (index + 1) << MARK_SHIFT, MARK_MASK


def _mark_text(value: int, mask: int = MARK_MASK) -> str:
    return f"{value:#x}/{mask:#x}"  # the form iptables-save prints


def _port_match(proto: str, port: int) -> tuple[str, ...]:
    return ("-p", proto, "-m", proto, "--dport", str(port))


class _Builder:
    """Collects chains and rules; keeps the rule constructors short."""

    def __init__(self) -> None:
        self.chains: set[tuple[str, str]] = set()
        self.rules: list[Rule] = []
        self.sets: list[access.AddressSet] = []

    def chain(self, table: str, name: str) -> None:
        self.chains.add((table, name))

    def add(self, table: str, chain: str, *args: str) -> None:
        self.rules.append(Rule(table, chain, tuple(args)))

    def build(self) -> Ruleset:
        return Ruleset(frozenset(self.chains), tuple(self.rules), tuple(self.sets))


def vps_ruleset(config: Config, fallback: frozenset[str] = frozenset(),
                active: Mapping[str, str | None] | None = None) -> Ruleset:
    """The VPS's rules: DNAT each service to its home through the tunnel, mark the
    connection, and let through the tunnel only what was DNATed to a configured
    home address, port and protocol. No SNAT: home sees the visitor's address.

    Services named in ``fallback`` (home is down, says the watchdog): a web
    service's new connections are DNATed to the friendly-page server on the VPS
    instead; any other service's are refused at once (TCP reset / ICMP port
    unreachable), so no visitor waits on a dead home.

    ``active`` names the home box each service's new connections go to (the
    watchdog's choice among the service's homes; default its first home; None
    means fallback, like naming it in ``fallback``).

    Services with ``via = "proxy"`` are not DNATed (the VPS's web server
    connects to home itself); they only get the fail-fast OUTPUT rules.
    """
    active = dict(active or {})
    unknown = sorted((fallback | set(active)) - set(config.services))
    if unknown:
        raise ConfigError(f"no service named {unknown[0]!r}", field="services")
    fallback = fallback | {name for name, home in active.items() if home is None}
    for name, home in active.items():
        if home is not None and home not in config.services[name].homes:
            raise ConfigError(f"{home!r} is not one of {name}'s home boxes", field=f"services.{name}.homes")
    b = _Builder()
    _evidence(b, config)  # first: its jumps come before any rule that accepts or drops
    _vps_family(b, config, IPV4, fallback, active)
    _vps_output(b, config, fallback, active)
    # With an IPv6 tunnel the same guard goes into ip6tables, whether or not a
    # service listens on IPv6 yet: the tunnel must not become a way out over IPv6.
    if config.tunnel.subnet6 is not None:
        _vps_family(b, config, IPV6, fallback, active)
    return b.build()


def _vps_family(b: "_Builder", config: Config, fam: Family, fallback: frozenset[str],
                active: Mapping[str, str | None]) -> None:
    """The DNAT, FORWARD and INPUT rules of one address family (see vps_ruleset)."""
    dev = config.tunnel.device
    b.chain(fam.nat, DNAT_CHAIN)
    b.add(fam.nat, "PREROUTING", "!", "-i", dev, "-j", DNAT_CHAIN)
    _vps_input(b, config, fam)
    b.chain(fam.filter, FORWARD_CHAIN)
    b.add(fam.filter, "FORWARD", "-j", FORWARD_CHAIN)
    # Replies and later packets of connections we DNATed (mark set), both ways.
    b.add(
        fam.filter, FORWARD_CHAIN,
        "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
        "-m", "connmark", "!", "--mark", _mark_text(0), "-j", "ACCEPT",
    )  # fmt: skip
    _access_chains(b, config, fam)
    for svc in config.services.values():
        if svc.via == "proxy":
            continue  # the VPS's web server connects to home itself; see _vps_output
        if svc.listen_address.version != fam.version:
            continue
        mark = _mark_text(service_mark(config, svc.name)[0])
        home = _home_address(config, active.get(svc.name) or svc.home, fam)
        down = svc.name in fallback
        # On a 1:1-NAT cloud the provider already rewrote the public address: match what arrives.
        arrives = config.vps.local_of(svc.listen_address)
        listen = ("-d", fam.host(arrives), *_port_match(svc.proto, svc.listen_port))
        b.add(fam.nat, DNAT_CHAIN, *listen, "-j", "CONNMARK", "--set-xmark", mark)
        to = fallback_address(config, svc) if down and svc.serves_page else fam.endpoint(home, svc.target_port)
        b.add(fam.nat, DNAT_CHAIN, *listen, "-j", "DNAT", "--to-destination", to)
        # Every home of the service stays allowed, so connections a swap moved
        # away from a healthy backup can finish there.
        for candidate in svc.homes:
            b.add(
                fam.filter, FORWARD_CHAIN,
                "-d", fam.host(_home_address(config, candidate, fam)), "-o", dev,
                *_port_match(svc.proto, svc.target_port),
                "-m", "conntrack", "--ctstate", "DNAT", "-m", "connmark", "--mark", mark,
                *(_refusal(svc, fam) if down and not svc.serves_page else ("-j", "ACCEPT")),
            )  # fmt: skip
    if fam.version == 4 and any(s.via == "dnat" for s in config.services.values()):
        _probe_rules(b, config, fam)
    b.add(fam.filter, FORWARD_CHAIN, "-o", dev, "-j", "DROP")
    # The VPS is not the home box's way out to the internet.
    b.add(fam.filter, FORWARD_CHAIN, "-i", dev, "-j", "DROP")
    b.add(fam.filter, FORWARD_CHAIN, "-j", "RETURN")


def _evidence(b: "_Builder", config: Config) -> None:
    """Counting rules for the watchdog's passive evidence (``vpnoffload.lean.counters``,
    ``vpnoffload.watch.evidence``), IPv4 like its checks: every packet from each home's
    tunnel address (filter INPUT: the checks' replies; FORWARD: the visitors'), each TCP
    reset from a home on a DNATed TCP service's connections (its connmark), and every
    packet to it that really leaves by the tunnel: counted in mangle POSTROUTING, after
    every verdict, so what the VPS itself drops or rejects (an access list, a down service's
    refusal, our final DROP, another table's rules) is never "sent to home" and cannot make
    a healthy home look silent. No verdict: they only count, then everything goes on as before.

    Written as ``-m recent --set --name NAME``, which the legacy tables keep readable in
    /proc/net/xt_recent/NAME; the nftables backend writes the same rule as a named counter."""
    dev = config.tunnel.device
    fam = IPV4
    b.chain(fam.filter, EVIDENCE_IN_CHAIN)
    b.chain(fam.mangle, EVIDENCE_OUT_CHAIN)
    for chain in ("INPUT", "FORWARD"):
        b.add(fam.filter, chain, "-i", dev, "-j", EVIDENCE_IN_CHAIN)
    b.add(fam.mangle, "POSTROUTING", "-o", dev, "-j", EVIDENCE_OUT_CHAIN)
    numbers, served = counters.layout(config)  # the names watch.evidence reads
    for home, number in numbers.items():
        address = fam.host(config.homes[home].address)
        b.add(fam.filter, EVIDENCE_IN_CHAIN, "-s", address, *_recent(counters.home_in(number), "--rsource"))
        for service, name in served[home]:
            mark = _mark_text(service_mark(config, service)[0])
            b.add(fam.filter, EVIDENCE_IN_CHAIN, "-s", address, "-p", "tcp", "-m", "tcp", "--tcp-flags", "RST", "RST",
                  "-m", "connmark", "--mark", mark, *_recent(name, "--rsource"))
        b.add(fam.mangle, EVIDENCE_OUT_CHAIN, "-d", address, *_recent(counters.home_out(number), "--rdest"))


def _recent(name: str, side: str) -> tuple[str, ...]:
    """A counting match, as iptables-save prints it."""
    return ("-m", "recent", "--set", "--name", name, "--mask", "255.255.255.255", side)


def _probe_rules(b: "_Builder", config: Config, fam: Family) -> None:
    """The watchdog's forward check of a home the public address does not lead to
    (a backup, or any home while on fallback) goes from the probe namespace
    (vpnoffload/probens.py) straight to the home's tunnel address: let it and its
    replies through, and nothing else from or to that /30."""
    from vpnoffload import probens

    dev, probe = config.tunnel.device, probens.addresses()[1]
    b.add(fam.filter, FORWARD_CHAIN, "-s", f"{probe}/32", "-i", probens.VPS_DEVICE, "-o", dev, "-j", "ACCEPT")
    b.add(fam.filter, FORWARD_CHAIN, "-d", f"{probe}/32", "-i", dev, "-o", probens.VPS_DEVICE,
          "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")


def _restricted(config: Config, fam: Family) -> list[Service]:
    """The DNATed services of ``fam`` with access rules."""
    return [s for s in config.services.values()
            if s.via == "dnat" and s.access.restricts and s.listen_address.version == fam.version]


def _access_jump(config: Config, svc: Service) -> tuple[str, ...]:
    """The first packet of each of ``svc``'s connections (its connection mark) goes through its access chain."""
    value = service_mark(config, svc.name)[0]
    return ("-m", "conntrack", "--ctstate", "NEW", "-m", "connmark", "--mark", _mark_text(value),
            "-j", access.acl_chain(value >> MARK_SHIFT))


def _access_chains(b: "_Builder", config: Config, fam: Family) -> None:
    """Each restricted service's access chain (see :mod:`.access`), entered from FORWARD
    before any service's ACCEPT (and from INPUT, see _vps_input): a dropped first packet
    leaves no connection behind, so nothing of it ever reaches home or the page."""
    for svc in _restricted(config, fam):
        number = service_mark(config, svc.name)[0] >> MARK_SHIFT
        chain = access.acl_chain(number)
        b.chain(fam.filter, chain)
        if fam.version == 4:
            # The watchdog's forward check arrives like a visitor (vpnoffload/probens.py):
            # never let a list or a limit make a healthy home look dead.
            from vpnoffload import probens

            b.add(fam.filter, chain, "-i", probens.VPS_DEVICE, "-j", "RETURN")
        rules, sets = access.acl_rules(svc, number, fam.version)
        for args in rules:
            b.add(fam.filter, chain, *args)
        b.add(fam.filter, chain, "-j", "RETURN")
        b.sets += sets
        b.add(fam.filter, FORWARD_CHAIN, *_access_jump(config, svc))


def _home_address(config: Config, home: str, fam: Family) -> object:
    """A home box's tunnel address in ``fam`` (config validation guarantees an IPv6 one)."""
    return config.homes[home].address if fam.version == 4 else config.homes[home].address6


def fallback_address(config: Config, svc: Service) -> str:
    """Where a failed web service's visitors are sent: the page server on the VPS.

    An IPv6 service's visitors go to the page server's IPv6 socket (it listens
    on [::]) at the service's own listen address, which is on the VPS anyway.
    An IPv4 one goes to the address the VPS holds (``vps.bind_address``: the
    private one on a 1:1-NAT cloud), where the page server listens.
    """
    port = config.watch.fallback_port + (1 if svc.page_over_tls else 0)
    if svc.ipv6:
        return IPV6.endpoint(svc.listen_address, port)
    return f"{config.vps.bind_address}:{port}"


def _vps_input(b: "_Builder", config: Config, fam: Family = IPV4) -> None:
    """The VPS's own INPUT: the page server takes only what we DNATed to it, and a
    home box gets no new connections to the VPS itself (its sshd, say) through
    the tunnel; replies to the watchdog's checks are ESTABLISHED and pass."""
    dev = config.tunnel.device
    table = fam.filter
    b.chain(table, INPUT_CHAIN)
    b.add(table, "INPUT", "-j", INPUT_CHAIN)
    # The friendly page and the offline copies obey the service's access rules too.
    for svc in _restricted(config, fam):
        if svc.serves_page:
            b.add(table, INPUT_CHAIN, *_access_jump(config, svc))
    ports = (config.watch.fallback_port, config.watch.fallback_port + 1)
    for port in ports:
        b.add(table, INPUT_CHAIN, *_port_match("tcp", port), "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
    for port in ports:
        b.add(table, INPUT_CHAIN, *_port_match("tcp", port), "-j", "DROP")
    b.add(table, INPUT_CHAIN, "-i", dev, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
    b.add(table, INPUT_CHAIN, "-i", dev, "-j", "DROP")
    b.add(table, INPUT_CHAIN, "-j", "RETURN")


def _vps_output(b: "_Builder", config: Config, fallback: frozenset[str], active: Mapping[str, str | None]) -> None:
    """Fail fast for proxy services: while a home box is not to be used, the VPS's
    own web server gets an immediate reset when it connects to it, so it serves
    the friendly page at once instead of waiting out its connect timeout.

    A home is refused while its service is on fallback, or while it comes before
    the home the watchdog chose (those are the unhealthy ones). The watchdog's own
    checks carry HEALTH_MARK and still reach the real home, to notice recovery.
    """
    proxied = [s for s in config.services.values() if s.via == "proxy"]
    if not proxied:
        return
    b.chain("filter", OUTPUT_CHAIN)
    b.add("filter", "OUTPUT", "-j", OUTPUT_CHAIN)
    refused: dict[tuple[str, int], None] = {}
    for svc in proxied:
        chosen = None if svc.name in fallback else (active.get(svc.name) or svc.home)
        dead = svc.homes if chosen is None else svc.homes[: svc.homes.index(chosen)]
        refused.update({(str(config.homes[h].address), svc.target_port): None for h in dead})
    for address, port in refused:
        b.add(
            "filter", OUTPUT_CHAIN, "-d", f"{address}/32", *_port_match("tcp", port),
            "-m", "mark", "!", "--mark", f"{HEALTH_MARK:#x}/{HEALTH_MARK:#x}", "-j", "REJECT", "--reject-with", "tcp-reset",
        )  # fmt: skip
    b.add("filter", OUTPUT_CHAIN, "-j", "RETURN")


def _refusal(svc: Service, fam: Family = IPV4) -> tuple[str, ...]:
    reason = "tcp-reset" if svc.proto == "tcp" else fam.port_unreachable
    return ("-j", "REJECT", "--reject-with", reason)


def home_ruleset(config: Config, home: str, slot: Slot = FIRST) -> Ruleset:
    """A home box's rules: from the tunnel accept only the ports of its services
    (and ping, so the tunnel can be checked), and forward nothing from it.

    ICMP errors (PMTU discovery included) for our connections are RELATED and
    pass with them; other ICMP from the tunnel is dropped. ``slot`` is which of
    the box's tunnels this is (vpnoffload.hometunnels): its device, chains and mark.
    """
    if home not in config.homes:
        raise ConfigError(f"no home named {home!r}", field="homes")
    b = _Builder()
    # Every service's port is open over IPv4, IPv6 ones too: the watchdog checks
    # each home through the tunnel at its IPv4 address.
    _home_family(b, config, home, IPV4, config.services_of(home), slot)
    # A home with an IPv6 tunnel address gets the same closed door in ip6tables,
    # open only for the ports of its IPv6 services.
    if config.homes[home].address6 is not None:
        _home_family(b, config, home, IPV6, [s for s in config.services_of(home) if s in config.ipv6_services], slot)
    return b.build()


def _home_family(b: "_Builder", config: Config, home: str, fam: Family, services: list[Service], slot: Slot) -> None:
    dev = slot.device
    address = _home_address(config, home, fam)
    inp, fwd = slot.chain_prefix + "IN", slot.chain_prefix + "FWD"
    b.chain(fam.filter, inp)
    b.add(fam.filter, "INPUT", "-i", dev, "-j", inp)
    b.add(fam.filter, inp, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
    ports = dict.fromkeys((s.proto, s.target_port) for s in services)
    for proto, port in ports:
        b.add(fam.filter, inp, "-d", fam.host(address), *_port_match(proto, port), "-j", "ACCEPT")
    b.add(fam.filter, inp, *fam.ping, "-j", "ACCEPT")
    b.add(fam.filter, inp, "-j", "DROP")
    b.chain(fam.filter, fwd)
    b.add(fam.filter, "FORWARD", "-i", dev, "-j", fwd)
    # A target port the home box itself DNATs on (Docker's or Podman's published
    # port, a port forward to a VM) is forwarded: only connections that came to
    # one of our target ports at our tunnel address, nothing else.
    for proto, port in ports:
        b.add(fam.filter, fwd, "-p", proto, "-m", "conntrack", "--ctstate", "DNAT",
              "--ctorigdst", str(address), "--ctorigdstport", str(port), "-j", "ACCEPT")
    b.add(fam.filter, fwd, "-j", "DROP")
    _home_marks(b, slot, fam)


def _home_marks(b: "_Builder", slot: Slot, fam: Family) -> None:
    """Mark each connection that arrives through the tunnel, and put that mark on
    its packets coming from elsewhere (a container's, a VM's replies), so that
    ``ip rule fwmark`` routes them back into the tunnel whatever their source.
    Only the bits of the tunnels' mark field are touched, and each tunnel has
    its own value there: a reply goes back through the tunnel it came in on."""
    mark, chain, dev = f"{slot.mark:#x}/{slot.mask:#x}", slot.chain_prefix + "MARK", slot.device
    b.chain(fam.mangle, chain)
    b.add(fam.mangle, "PREROUTING", "-j", chain)
    b.add(fam.mangle, chain, "-i", dev, "-m", "conntrack", "--ctstate", "NEW",
          "-j", "CONNMARK", "--set-xmark", mark)
    b.add(fam.mangle, chain, "!", "-i", dev, "-m", "connmark", "--mark", mark, "-j", "MARK", "--set-xmark", mark)


