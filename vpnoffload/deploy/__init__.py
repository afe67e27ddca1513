"""``up`` and ``down`` on each end: compose the backends' plans into one plan.

Every step is computed first (validation, desired state, what the system has),
so bad input changes nothing; :func:`vpnoffload.plan.apply` then runs the plan
and rolls back on failure. A second ``up`` finds nothing to do, and ``down``
removes only what vpnoffload owns or recorded adding.
"""

from vpnoffload.deploy.common import (
    CONNECT_TIMEOUT, SERVER_READY_TIMEOUT, Backends, cleanup_scratch, exclusive,
)
from vpnoffload.deploy.home import home_tunnel, plan_down_home, plan_up_home
from vpnoffload.deploy.vps import current_targets, page_server, plan_down_vps, plan_up_vps, server_tunnel

__all__ = [
    "CONNECT_TIMEOUT", "SERVER_READY_TIMEOUT", "Backends", "cleanup_scratch", "current_targets", "exclusive",
    "home_tunnel", "page_server", "plan_down_home", "plan_down_vps", "plan_up_home", "plan_up_vps", "server_tunnel",
]
