"""lab: see docs/architecture.md."""

#: The lab's namespaces are PREFIX-vps, PREFIX-home, ... Here, not in ``netns``, so that the
#: CLI names it in ``--help`` without importing the lab at every start.
DEFAULT_PREFIX = "vpnolab"
