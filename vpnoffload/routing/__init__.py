"""Policy routing on the home box and extra public addresses on the VPS.

- :mod:`.state`: rules, routes and addresses as data, the desired state of each end, the backend protocol;
- :mod:`.planner`: the plan between what the kernel has and what is desired;
- :mod:`.netlink`: the real backend (pyroute2), the only module here that touches the kernel.
"""

from vpnoffload.routing.netlink import Pyroute2Backend, _route_from
from vpnoffload.routing.planner import plan_addresses, plan_remove_addresses, plan_routing, plan_routing_down
from vpnoffload.routing.state import (
    ANY, ANY6, DAD_TIMEOUT, IPV6_DEFAULT_METRIC, Address, Route, RoutingBackend, RoutingState, Rule, describe,
    find_interface, home_routing, vps_addresses, wait_for_address,
)

__all__ = [
    "ANY", "ANY6", "DAD_TIMEOUT", "IPV6_DEFAULT_METRIC", "Address", "Pyroute2Backend", "Route", "RoutingBackend",
    "RoutingState", "Rule", "_route_from", "describe", "find_interface", "home_routing", "plan_addresses",
    "plan_remove_addresses", "plan_routing", "plan_routing_down", "vps_addresses", "wait_for_address",
]
