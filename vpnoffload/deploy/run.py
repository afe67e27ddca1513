"""``up`` and ``down`` of either end through one path.

Every one of the four commands is the same sequence: load and validate what it
needs, check the machine's prerequisites, take the run lock, plan, and (unless
it is a dry run) apply with rollback, also on SIGTERM. The CLI only says what
happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vpnoffload.deploy import (
    Backends, cleanup_scratch, exclusive, plan_down_home, plan_down_vps, plan_up_home, plan_up_vps,
)
from vpnoffload.errors import ConfigError
from vpnoffload.names import shown
from vpnoffload.model import Config
from vpnoffload.paths import Paths, file_or_nothing
from vpnoffload.plan import Action

Verb = Literal["up", "down"]
End = Literal["vps", "home"]


@dataclass(frozen=True)
class Request:
    """What the user asked for: ``vpnoffload VERB END [--home H] [--profile P] [--dry-run]``."""

    verb: Verb
    end: End
    home: str | None = None
    profile: Path | None = None
    dry_run: bool = False


@dataclass
class Outcome:
    """What a run planned and whether it applied it."""

    what: str  # "the VPS end", "home box home"
    steps: list[str] = field(default_factory=list)
    applied: bool = False

    @property
    def nothing_to_do(self) -> bool:
        return not self.steps


def home_name(config: Config, home: str | None) -> str:
    """The home box a command is about: ``--home``, or the config's first."""
    if home is None:
        return config.default_home.name
    if home not in config.homes:
        known = ", ".join(config.homes)
        raise ConfigError(f"unknown home box {shown(home)} (known: {known})", field="--home")
    return home


def execute(request: Request, paths: Paths, *, backends: Backends | None = None,
            announce: Callable[[str], None] = lambda line: None,
            require: Callable[[], None] | None = None) -> Outcome:
    """Plan ``request`` and, unless it is a dry run, apply it.

    ``announce`` is called with each step's summary just before the plan is
    applied (the CLI prints them). ``backends`` and ``require`` (the
    prerequisite check) default to the real ones; tests pass fakes.
    """
    from vpnoffload import plan
    from vpnoffload.deploy import doctor

    config, what, name = _subject(request, paths)
    _check_state(request, paths, name)
    (require or doctor.require_prerequisites)()
    real = backends if backends is not None else Backends.real()
    if request.verb == "down" and not paths.run.is_dir():
        # Nothing of ours was ever recorded here: plan first, and take the lock (which
        # makes the run dir) only when there is something to undo. A "nothing to do"
        # or a dry run then writes nothing, not even the lock file.
        try:
            actions = _plan(request, config, paths, real, name)
        finally:
            cleanup_scratch(paths)
        if not actions or request.dry_run:
            return Outcome(what, plan.summaries(actions))
    with exclusive(paths):
        try:
            actions = _plan(request, config, paths, real, name)
            outcome = Outcome(what, plan.summaries(actions))
            if actions and not request.dry_run:
                for line in outcome.steps:
                    announce(line)
                with plan.sigterm_as_interrupt():
                    plan.apply(actions)
                outcome.applied = True
            return outcome
        finally:
            cleanup_scratch(paths)


def _subject(request: Request, paths: Paths) -> tuple[Config | None, str, str | None]:
    """The config (None for ``down vps``, which needs none), the words for the end, the home's name."""
    from vpnoffload import config as cfg

    if request.end == "vps":
        config = cfg.load(paths.config) if request.verb == "up" else None
        return config, "the VPS end", None
    if request.verb == "down" and request.home is not None:
        # down home works from the name alone, even with a broken config
        cfg.check_name(request.home, "--home")
        return None, f"home box {request.home}", request.home
    config = cfg.load(paths.config)
    name = home_name(config, request.home)
    return config, f"home box {name}", name


def _check_state(request: Request, paths: Paths, home: str | None) -> None:
    """Refuse unusable paths and a damaged record before anything is touched (no lock,
    no prerequisite probe, no backend): ``--state-dir`` that is not a directory, ``-c`` or
    ``--profile`` that name something other than a file, a record ``down`` cannot read."""
    from vpnoffload import record as record_mod

    paths.check()
    if request.profile is not None:
        file_or_nothing(request.profile, "--profile")
    if request.verb == "down":
        record_mod.load(paths.record("vps" if request.end == "vps" else f"home-{home}"))


def _plan(request: Request, config: Config | None, paths: Paths, backends: Backends, home: str | None) -> list[Action]:
    if request.end == "vps":
        if request.verb == "down":
            return plan_down_vps(paths, backends)
        assert config is not None  # _subject loads it for every up
        return plan_up_vps(config, paths, backends)
    assert home is not None  # _subject names the home for every home request
    profile = request.profile or paths.profile(home)
    if request.verb == "down":
        return plan_down_home(paths, backends, home, profile)
    assert config is not None
    return plan_up_home(config, paths, backends, home, profile)
