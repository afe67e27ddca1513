"""1:1 NAT on the VPS: which local address a public one arrives as.

On Oracle Cloud, GCP, AWS and Azure the VPS's public address is on no
interface: the provider's router rewrites it to the VPS's private address on
the way in (and back on the way out), so that private address is all the
VPS's own stack ever sees. OpenVPN has to bind it, DNAT has to match it, and
the page server has to listen on it.

``init`` finds it (:func:`find_local`) and writes it into the config as
``[vps] local_address``; ``up vps`` does not guess again but checks
(:func:`require_bindable`): a guess made at every ``up`` would silently
follow whatever the interfaces say that day (a DHCP renewal with another
address, ``up`` run on the wrong host), while the config says once, visibly,
what is bound, and ``doctor`` and ``status`` can show it.

Everything here reads through a :class:`~vpnoffload.routing.state.RoutingBackend`
(addresses and route lookups only, no changes), so unit tests pass a fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from vpnoffload.errors import BackendError, ConfigError

_HOST_PREFIX = 32


@dataclass(frozen=True)
class Mapping:
    """Where ``public`` arrives on this host: as itself (it is on ``device``) or as ``local``."""

    public: IPv4Address
    local: IPv4Address
    device: str

    @property
    def natted(self) -> bool:
        return self.local != self.public

    def __str__(self) -> str:
        if not self.natted:
            return f"{self.public} is on {self.device}"
        return f"{self.public} is on no interface: 1:1 NAT to {self.local} on {self.device}"


def _backend(backend: Any) -> Any:
    if backend is not None:
        return backend
    from vpnoffload.routing.netlink import Pyroute2Backend

    return Pyroute2Backend()


def holder(address: IPv4Address, backend: Any) -> str | None:
    """The device that holds ``address`` here, or None."""
    return next((a.device for a in backend.addresses() if a.address == address), None)


def find_local(public: IPv4Address, backend: Any = None) -> Mapping:
    """Where ``public`` arrives here: on the device that holds it, or else (1:1 NAT)
    as the primary IPv4 address of the device the kernel routes it out of, which
    is the one with the default route (``routing.find_interface`` picks it the
    same way). BackendError when nothing routes to it or that device has no IPv4
    address. ``backend`` None: the real kernel (pyroute2, imported only then).
    """
    own = backend is None
    backend = _backend(backend)
    try:
        device = holder(public, backend)
        if device is not None:
            return Mapping(public, public, device)
        device = backend.route_device(public)
        if device is None or device == "lo":
            raise BackendError(f"no interface holds or routes to {public}", field="vps.local_address")
        ours = [a for a in backend.addresses() if a.device == device and a.address.version == 4]
        # The primary address has the link's prefix; /32s are extra addresses
        # (a dedicated listen address vpnoffload added, a floating IP).
        ours.sort(key=lambda a: a.prefixlen == _HOST_PREFIX)
        if not ours:
            raise BackendError(f"{device} (the way to {public}) has no IPv4 address", field="vps.local_address")
        return Mapping(public, ours[0].address, device)
    finally:
        if own and hasattr(backend, "close"):
            backend.close()


def require_bindable(config: Any, backend: Any) -> None:
    """For ``up vps``: the address OpenVPN and the page server bind (``vps.local_address``,
    else ``vps.address``) must be on this host. Otherwise one ConfigError line saying what to set,
    with the address found on the interface the public one would leave by."""
    vps = config.vps
    if holder(vps.bind_address, backend) is not None:
        return
    if vps.local_address is not None:
        raise ConfigError(f"{vps.local_address} is on no interface of this host: set it to the private address "
                          f"your provider maps {vps.address} to (or run this on the VPS)", field="vps.local_address")
    try:
        found = find_local(vps.address, backend)
        hint = f'set local_address = "{found.local}" in [vps] (the address of {found.device})'
    except BackendError:
        hint = "set local_address in [vps] to the private address your provider maps it to"
    raise ConfigError(f"{vps.address} is on no interface of this host; if your cloud 1:1-NATs it, {hint}, "
                      "or run 'vpnoffload init' on this VPS", field="vps.local_address")


def describe(config: Any, backend: Any = None) -> list[tuple[str, str, str]]:
    """(level, detail, hint) for ``doctor``: how each public address of the config arrives here."""
    vps = config.vps
    own = backend is None
    backend = _backend(backend)
    try:
        found: list[tuple[str, str, str]] = []
        at = holder(vps.bind_address, backend)
        if at is not None and vps.local_address is None:
            found.append(("ok", f"{vps.address} is on {at}", ""))
        elif at is not None:
            found.append(("ok", f"{vps.address} is on no interface: 1:1 NAT to {vps.local_address} on {at} "
                                "([vps] local_address)", ""))
        elif holder(vps.address, backend) is not None:
            found.append(("warn", f"{vps.address} is on {holder(vps.address, backend)}, but [vps] local_address "
                                  f"{vps.local_address} is on no interface", "remove local_address from [vps]"))
        else:
            try:
                guess: str = str(find_local(vps.address, backend))
            except BackendError as exc:
                guess = str(exc)
            what = f"local_address {vps.local_address} is not here either" if vps.local_address else "no local_address"
            found.append(("warn", f"neither is this the VPS as configured ({what}): {guess}",
                          "on the VPS behind 1:1 NAT, set local_address in [vps] to the private address; "
                          "on a home box this is expected"))
        for public, private in vps.nat:
            device = holder(private, backend)
            where = f"on {device}" if device else "not on an interface yet ('up vps' adds it)"
            found.append(("ok", f"{public} maps 1:1 to {private} ([vps] nat), {where}", ""))
        return found
    finally:
        if own and hasattr(backend, "close"):
            backend.close()
