"""The validated, immutable description of a deployment.

``config`` parses and checks a TOML file into these types; every other module
reads only these types, so nothing downstream re-validates or guesses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Literal

Proto = Literal["tcp", "udp"]
#: What visitors get while home is down: the friendly page, or a fast refusal.
FallbackMode = Literal["page", "reset"]

#: Name of the tun device on both ends; fixed so firewall and routing know it.
TUNNEL_DEVICE = "vpnoffload0"
#: Chain-name prefix of every iptables chain vpnoffload owns.
CHAIN_PREFIX = "VPNOFFLOAD"
#: Routing table and rule priority vpnoffload owns on the home box.
ROUTE_TABLE = 7701
RULE_PRIORITY = 7701


@dataclass(frozen=True)
class Check:
    """How the watchdog decides a service is alive: a TCP connect or an HTTP GET."""

    kind: Literal["tcp", "http"] = "tcp"
    path: str = "/"

    def __str__(self) -> str:
        return "tcp" if self.kind == "tcp" else f"http:{self.path}"


@dataclass(frozen=True)
class Service:
    """One offloaded port: visitors reach ``listen``; home serves ``target_port``."""

    name: str
    listen_address: IPv4Address
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
        return f"{self.listen_address}:{self.listen_port}"

    @property
    def target(self) -> str:
        return f"{','.join(self.homes)}:{self.target_port}"


@dataclass(frozen=True)
class Home:
    """A home box: an OpenVPN client with a fixed address inside the tunnel."""

    name: str
    address: IPv4Address


@dataclass(frozen=True)
class Tunnel:
    subnet: IPv4Network
    port: int = 1194
    proto: Proto = "udp"
    device: str = TUNNEL_DEVICE

    @property
    def server_address(self) -> IPv4Address:
        """The VPS's own address inside the tunnel: the subnet's first host."""
        return self.subnet.network_address + 1


@dataclass(frozen=True)
class Vps:
    address: IPv4Address
    interface: str | None = None  # found from the address when not given


@dataclass(frozen=True)
class Watch:
    """Health-check timing. Defaults aim at: outage shown within 3 s, recovery within 5 s.

    Worst case to swap out: a check starts just before the outage, then ``fall``
    checks each time out: about interval + fall * timeout, plus ~0.3 s to swap.
    """

    interval: float = 0.5
    timeout: float = 0.6
    fall: int = 2
    rise: int = 2
    #: The friendly-page server listens here on the VPS address (and +1 for TLS);
    #: only connections DNATed to it by vpnoffload are accepted.
    fallback_port: int = 8503
    retry_after: int = 30
    #: Optional Prometheus text metrics, loopback only (e.g. "127.0.0.1:9477").
    metrics: str | None = None


@dataclass(frozen=True)
class Config:
    vps: Vps
    tunnel: Tunnel
    homes: dict[str, Home]  # insertion-ordered; the first is the default home
    services: dict[str, Service] = field(default_factory=dict)
    watch: Watch = field(default_factory=Watch)

    @property
    def default_home(self) -> Home:
        return next(iter(self.homes.values()))

    def services_of(self, home: str) -> list[Service]:
        """The services ``home`` may serve (as first choice or as a backup)."""
        return [s for s in self.services.values() if home in s.homes]

    def dedicated_addresses(self) -> list[IPv4Address]:
        """Listen addresses other than the VPS's own, which ``up vps`` must add."""
        seen: dict[IPv4Address, None] = {}
        for svc in self.services.values():
            if svc.listen_address != self.vps.address:
                seen[svc.listen_address] = None
        return list(seen)
