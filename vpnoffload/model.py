"""The validated, immutable description of a deployment.

``config`` parses and checks a TOML file into these types; every other module
reads only these types, so nothing downstream re-validates or guesses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Literal

Proto = Literal["tcp", "udp"]
#: A service listens on an IPv4 or (dedicated) IPv6 address of the VPS.
IPAddress = IPv4Address | IPv6Address
#: What visitors get while home is down: the friendly page, or a fast refusal.
FallbackMode = Literal["page", "reset"]
#: How visitors reach a service: DNAT in the kernel (the service owns its
#: listen address and port), or the VPS's own web server routing by name.
Via = Literal["dnat", "proxy"]
WebServer = Literal["nginx", "haproxy"]

#: Name of the tun device on both ends; fixed so firewall and routing know it.
TUNNEL_DEVICE = "vpnoffload0"
#: Chain-name prefix of every iptables chain vpnoffload owns.
CHAIN_PREFIX = "VPNOFFLOAD"
#: Routing table and rule priority vpnoffload owns on the home box.
ROUTE_TABLE = 7701
RULE_PRIORITY = 7701
#: Packet mark (SO_MARK) of the watchdog's health checks: the fail-fast rule
#: that refuses a dead home to the VPS's web server lets these through.
HEALTH_MARK = 0x10000000
#: Services one VPS serves: each gets its own 8-bit value in the conntrack mark
#: (0 is "no service"), so a config with more is refused when it is read.
MAX_SERVICES = 0xFF
#: Home box: the connection mark of every connection that arrived through the
#: tunnel, copied onto its reply packets so they are routed back into the tunnel
#: by mark (``ip rule fwmark``), whatever their source address: a container's or
#: a VM's replies included. Its own bit, so other connmark users keep theirs.
HOME_MARK = 0x20000000


@dataclass(frozen=True)
class Check:
    """How the watchdog decides a service is alive: a TCP connect or an HTTP GET."""

    kind: Literal["tcp", "http"] = "tcp"
    path: str = "/"

    def __str__(self) -> str:
        return "tcp" if self.kind == "tcp" else f"http:{self.path}"


#: A source prefix in an allow or deny list.
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Access:
    """Who may reach a service, decided in the VPS's kernel before anything crosses the tunnel.

    ``allow``/``allow_file``: when either is given, only sources in them get through.
    ``deny``/``deny_file``: sources in them never do. The files hold one prefix a line
    (``#`` comments) and are read by ``up vps``. ``rate``: new connections per second
    per source address (a small burst above it is allowed); ``max_conns``: open
    connections per source address. None: no limit.
    """

    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()
    allow_file: Path | None = None
    deny_file: Path | None = None
    rate: int | None = None
    max_conns: int | None = None

    @property
    def restricts(self) -> bool:
        """Whether any rule applies (a service without one gets no access chain)."""
        return bool(self.allow or self.deny or self.allow_file or self.deny_file
                    or self.rate is not None or self.max_conns is not None)

    @property
    def has_allow(self) -> bool:
        return bool(self.allow or self.allow_file)

    @property
    def has_deny(self) -> bool:
        return bool(self.deny or self.deny_file)

    @property
    def burst(self) -> int:
        """New connections a source may open at once before ``rate`` holds: small, at most 5."""
        return max(1, min(self.rate or 1, 5))


@dataclass(frozen=True)
class Service:
    """One offloaded port: visitors reach ``listen``; home serves ``target_port``."""

    name: str
    listen_address: IPAddress
    listen_port: int
    home: str
    target_port: int
    proto: Proto = "tcp"
    check: Check = field(default_factory=Check)
    hostname: str | None = None
    fallback: FallbackMode = "reset"
    page: Path | None = None  # the user's own jinja2 template for the friendly page
    tls_cert: Path | None = None  # with tls_key: serve the page over TLS (an HTTPS service)
    tls_key: Path | None = None
    #: More home boxes in order of preference: new connections go to the first
    #: healthy one of (home, *backups); the page only when none is.
    backups: tuple[str, ...] = ()
    #: "proxy": not DNATed; the VPS's nginx/HAProxy routes ``hostname`` here
    #: (by Host on port 80, by SNI without terminating TLS on port 443).
    via: Via = "dnat"
    #: Paths (``/``, ``/about.html``) the VPS keeps a copy of while home is
    #: healthy and serves while the service is on fallback (visitors then get
    #: the last good copy instead of only the friendly page).
    offline_copy: tuple[str, ...] = ()
    #: A small "a copy from 14:02" banner on kept HTML pages.
    offline_banner: bool = True
    #: Allow/deny lists and per-source limits.
    access: Access = field(default_factory=Access)

    @property
    def homes(self) -> tuple[str, ...]:
        return (self.home, *self.backups)

    @property
    def serves_page(self) -> bool:
        return self.fallback == "page" and self.proto == "tcp"

    @property
    def page_over_tls(self) -> bool:
        return self.serves_page and self.tls_cert is not None

    @property
    def listen(self) -> str:
        host = f"[{self.listen_address}]" if self.ipv6 else str(self.listen_address)
        return f"{host}:{self.listen_port}"

    @property
    def ipv6(self) -> bool:
        """Listens on an IPv6 address: DNATed with ip6tables to the homes' ``address6``."""
        return self.listen_address.version == 6

    @property
    def sni_routed(self) -> bool:
        """A proxy service on 443: TLS passed through to home, chosen by SNI."""
        return self.via == "proxy" and self.listen_port == 443

    @property
    def target(self) -> str:
        return f"{','.join(self.homes)}:{self.target_port}"


@dataclass(frozen=True)
class Home:
    """A home box: an OpenVPN client with a fixed address inside the tunnel."""

    name: str
    address: IPv4Address
    #: Its IPv6 tunnel address, when the tunnel has a ``subnet6`` (for IPv6 services).
    address6: IPv6Address | None = None


@dataclass(frozen=True)
class Tunnel:
    subnet: IPv4Network
    port: int = 1194
    proto: Proto = "udp"
    device: str = TUNNEL_DEVICE
    #: Optional IPv6 subnet inside the tunnel; services listening on IPv6 need it.
    subnet6: IPv6Network | None = None

    @property
    def server_address(self) -> IPv4Address:
        """The VPS's own address inside the tunnel: the subnet's first host."""
        return self.subnet.network_address + 1

    @property
    def server_address6(self) -> IPv6Address | None:
        """The VPS's own IPv6 tunnel address (``subnet6``'s ::1, as OpenVPN's server-ipv6 takes)."""
        return None if self.subnet6 is None else self.subnet6.network_address + 1


@dataclass(frozen=True)
class Vps:
    """The VPS. ``address`` is the public one visitors and home boxes dial.

    On 1:1-NAT clouds (Oracle, GCP, AWS, Azure) that address is on no interface:
    the provider's router rewrites it to a private one, ``local_address``, which
    is all the VPS's own stack ever sees. OpenVPN binds it, DNAT matches it and
    the friendly page listens on it. ``nat`` maps further public listen addresses
    to their private ones the same way (a dedicated, 1:1-mapped address).
    """

    address: IPv4Address
    interface: str | None = None  # found from the address when not given
    local_address: IPv4Address | None = None
    nat: tuple[tuple[IPv4Address, IPv4Address], ...] = ()  # (public, private) pairs

    @property
    def bind_address(self) -> IPv4Address:
        """The address the VPS holds for ``address``: what OpenVPN and the page server bind."""
        return self.local_address or self.address

    def local_of(self, address: IPAddress) -> IPAddress:
        """What a visitor's packet to public ``address`` carries as destination on arrival here."""
        if address == self.address:
            return self.bind_address
        return dict(self.nat).get(address, address)  # type: ignore[arg-type]  # the pairs hold either family


@dataclass(frozen=True)
class Watch:
    """Health-check timing. Defaults aim at: a crowd gets the page within 1 s of an outage and
    the site within 1 s of the return (p90), and never a swap for a slow or loaded home.

    With one home box, the tunnel's packet counters are read every 0.05 s (``watch.pace``):
    visitors' packets unanswered for 0.1 s start a round at once (and fork the swap child), and
    0.1 s + ``timeout`` of a silent tunnel with a check unanswered counts as ``fall`` lost
    checks: about 0.6 s + the commit after the first unanswered packet. Without that evidence
    (no visitors, several homes) the worst case is interval + fall * timeout plus the swap
    (0.5 + 2 * 0.5 + ~0.3 = 1.8 s). While a home is failing or away, rounds run every 0.1 s.
    A check that times out while home still answers its ping, or while the tunnel is busy
    with visitors, counts as slow, not down, so a shorter timeout does not fail over a loaded
    home.
    """

    interval: float = 0.5
    timeout: float = 0.5
    fall: int = 2
    rise: int = 2
    #: The friendly-page server listens here on the VPS address (and +1 for TLS);
    #: only connections DNATed to it by vpnoffload are accepted. Below 1024 so that
    #: only root can bind it, also while the watchdog (which holds it) is not running.
    fallback_port: int = 503
    retry_after: int = 30
    #: Optional Prometheus text metrics, loopback only (e.g. "127.0.0.1:9477").
    metrics: str | None = None
    #: Seconds between refreshes of the kept pages (``Service.offline_copy``).
    offline_copy_every: float = 600.0
    #: Most bytes all kept pages may take on disk together.
    offline_copy_max_bytes: int = 20 * 1024 * 1024


@dataclass(frozen=True)
class Proxy:
    """The VPS's own web server, for services with ``via = "proxy"``."""

    server: WebServer = "nginx"
    #: Where the VPS's own HTTPS sites listen once :443 routes by SNI.
    local_https: str = "127.0.0.1:8443"
    #: Where the VPS's own HTTP sites listen behind HAProxy (nginx keeps them on :80).
    local_http: str = "127.0.0.1:8080"
    #: Seconds the web server waits for home to accept; a backstop for the
    #: moment before the watchdog notices (after that a dead home is refused at once).
    connect_timeout: int = 3


@dataclass(frozen=True)
class Config:
    vps: Vps
    tunnel: Tunnel
    homes: dict[str, Home]  # insertion-ordered; the first is the default home
    services: dict[str, Service] = field(default_factory=dict)
    watch: Watch = field(default_factory=Watch)
    proxy: Proxy = field(default_factory=Proxy)

    @property
    def default_home(self) -> Home:
        return next(iter(self.homes.values()))

    def services_of(self, home: str) -> list[Service]:
        """The services ``home`` may serve (as first choice or as a backup)."""
        return [s for s in self.services.values() if home in s.homes]

    def dedicated_addresses(self) -> list[IPAddress]:
        """Listen addresses other than the VPS's own (IPv4 or IPv6), which ``up vps`` must add:
        for a 1:1-mapped one (``vps.nat``) the private address it arrives as, never the public one."""
        seen: dict[IPAddress, None] = {}
        for svc in self.services.values():
            if svc.listen_address != self.vps.address:
                seen[self.vps.local_of(svc.listen_address)] = None
        return list(seen)

    @property
    def ipv6_services(self) -> list[Service]:
        """The services DNATed over IPv6 (they need forwarding and rules in ip6tables)."""
        return [s for s in self.services.values() if s.ipv6 and s.via == "dnat"]
