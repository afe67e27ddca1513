"""The probe namespace on the VPS: made by ``up vps``, removed by ``down vps``.

The watchdog's second check starts there (see :mod:`vpnoffload.probens`), so it
crosses the VPS's PREROUTING and FORWARD hooks as a visitor's packet does::

    VPS netns                                   probe netns (vpnoffload-probe[-<inode>])
      vpnoffload-pb 198.18.255.253/30  <-veth->   probe0 198.18.255.254/30, lo up
                                                  default via 198.18.255.253

vpnoffload owns the namespace name and both veth ends; ``down`` deletes exactly
those (deleting either end of a veth deletes both). Commands run through
``vpnoffload.proc.run`` (iproute2): ``ip netns add`` is what pins a named
namespace in ``/run/netns``, which pyroute2 would do the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from vpnoffload import probens, proc
from vpnoffload.plan import Action

_HINT = "install iproute2"


class ProbeNamespace:
    """Plans for the probe namespace; ``run`` (``proc.run``) is injectable so unit tests record commands."""

    def __init__(self, run: Callable[..., object] = proc.run, ns_name: str | None = None,
                 subnet: str | None = None, netns_dir: str = probens.NETNS_DIR,
                 sys_net: str = "/sys/class/net") -> None:
        self.run = run
        self.name = ns_name or probens.name()
        self.subnet = subnet or probens.subnet()
        self.netns_dir, self.sys_net = netns_dir, sys_net

    def _ns_exists(self) -> bool:
        return probens.present(self.name, self.netns_dir)

    def _stale(self) -> bool:
        """The name is there but no namespace is mounted on it (see probens.present)."""
        return os.path.exists(os.path.join(self.netns_dir, self.name)) and not self._ns_exists()

    def _veth_exists(self) -> bool:
        return os.path.exists(os.path.join(self.sys_net, probens.VPS_DEVICE))

    def _ip(self, *args: str, check: bool = True) -> None:
        self.run(["ip", *args], check=check, hint=_HINT)

    def plan_up(self) -> list[Action]:
        """Create what is missing; nothing when both are there (a second ``up``)."""
        vps_side, probe_side = probens.addresses(self.subnet)
        actions: list[Action] = []
        if not self._ns_exists():
            actions.append(Action(f"create network namespace {self.name} (the watchdog's visitor-path probe)",
                                  self._add_namespace,
                                  lambda: self._ip("netns", "del", self.name, check=False)))
        if actions or not self._veth_exists():
            def link() -> None:
                ns, dev, peer = self.name, probens.VPS_DEVICE, probens.PROBE_DEVICE
                if self._veth_exists():  # ours, left without its namespace: its peer is gone
                    self._ip("link", "del", dev, check=False)
                self._ip("link", "add", dev, "type", "veth", "peer", "name", peer, "netns", ns)
                self._ip("addr", "add", f"{vps_side}/30", "dev", dev)
                self._ip("link", "set", dev, "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
                self._ip("-n", ns, "addr", "add", f"{probe_side}/30", "dev", peer)
                self._ip("-n", ns, "link", "set", peer, "up")
                self._ip("-n", ns, "route", "add", "default", "via", vps_side)

            actions.append(Action(f"link it to the VPS: veth {probens.VPS_DEVICE} {vps_side}/30 here, "
                                  f"{probens.PROBE_DEVICE} {probe_side}/30 there, its default route via {vps_side}",
                                  link, lambda: self._ip("link", "del", probens.VPS_DEVICE, check=False)))
        return actions

    def _add_namespace(self) -> None:
        if self._stale():  # our name, left without its namespace: `ip netns add` would refuse it
            self._ip("netns", "del", self.name, check=False)
        self._ip("netns", "add", self.name)

    def plan_down(self) -> list[Action]:
        """Remove the veth pair and the namespace, whichever exists (both are vpnoffload's names)."""
        actions: list[Action] = []
        if self._veth_exists():
            actions.append(Action(f"delete veth {probens.VPS_DEVICE} (the probe namespace's link)",
                                  lambda: self._ip("link", "del", probens.VPS_DEVICE, check=False), None))
        if self._ns_exists() or self._stale():
            actions.append(Action(f"delete network namespace {self.name}",
                                  lambda: self._ip("netns", "del", self.name, check=False), None))
        return actions
