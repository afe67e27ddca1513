"""``vpnoffload lab up|demo|down``: a throw-away lab on this machine (root).

Thin: the steps live in ``vpnoffload.lab.steps`` and ``vpnoffload.lab.demo``, which are
imported inside each command (it pulls in ``rich``), so ``--help`` stays fast.
Errors are VpnOffloadError and reach the CLI's one-line handler.
"""

from __future__ import annotations

from typing import Annotated

import typer

from vpnoffload.lab import DEFAULT_PREFIX

lab_app = typer.Typer(
    no_args_is_help=True,
    help="A throw-away lab in network namespaces (visitor, internet, VPS, home, attic) to try vpnoffload. Needs root.",
)

PrefixOpt = Annotated[str, typer.Option("--prefix", help="Names the lab's namespaces PREFIX-vps, PREFIX-home, ...")]


@lab_app.command("up")
def lab_up(prefix: PrefixOpt = DEFAULT_PREFIX) -> None:
    """Build the lab and set both ends up with vpnoffload's own commands; leave it running."""
    from vpnoffload.lab import steps
    from vpnoffload.lab.narrate import RichNarrator
    from vpnoffload.lab.sites import DEMO_COMMANDS

    lab, sites = steps.open_lab(prefix)
    narrator = RichNarrator()
    steps.run_up(lab, sites, narrator)
    steps.how_to_poke(lab, sites, narrator, DEMO_COMMANDS)


@lab_app.command("demo")
def lab_demo(
    prefix: PrefixOpt = DEFAULT_PREFIX,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the lab running afterwards (remove it with 'lab down').")] = False,
) -> None:
    """Tell the whole story: served from home, pull home's cable, friendly page, plug it back."""
    from vpnoffload.lab import demo, steps
    from vpnoffload.lab.narrate import RichNarrator

    lab, sites = steps.open_lab(prefix)
    demo.run_demo(lab, sites, RichNarrator(), keep=keep)


@lab_app.command("down")
def lab_down(prefix: PrefixOpt = DEFAULT_PREFIX) -> None:
    """Remove the lab: its processes, namespaces, files, and anything its 'up' added to this machine."""
    from vpnoffload.lab import steps
    from vpnoffload.lab.narrate import RichNarrator

    steps.run_down(prefix, RichNarrator())
