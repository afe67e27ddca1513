"""The options of vpnoffload's child processes: one parser for all of them.

The children (the watchdog, the page server, the swap, snapshot, restart and
reconcile children, the home keeper, ``python -m vpnoffload.render.pages``)
take a few ``--name VALUE`` options and flags, and are started by vpnoffload
itself, so they need no help text. ``argparse`` would import gettext and
``re`` (~1 MB in a ~10 MB watchdog), so this is a loop over the words; a word
it does not know is a :class:`~vpnoffload.errors.ConfigError` (exit 2) that
names it.
"""

from __future__ import annotations

import sys

from vpnoffload.errors import ConfigError


def parse(argv: list[str] | None, *, values: tuple[str, ...] = (), flags: tuple[str, ...] = (),
          required: tuple[str, ...] = (), rest: bool = False) -> dict[str, object]:
    """``{"--name": "value", "--flag": True}`` from ``argv`` (None: this process's arguments).

    ``--name VALUE`` and ``--name=VALUE`` both work. With ``rest``, the words after
    ``--`` are returned as a list under ``"--"`` (the home keeper's ``up home`` argv).
    """
    words = list(sys.argv[1:] if argv is None else argv)
    found: dict[str, object] = {}
    if rest:
        if "--" not in words:
            raise ConfigError("'--' and the command after it are required")
        split = words.index("--")
        words, found["--"] = words[:split], words[split + 1:]
    it = iter(words)
    for word in it:
        name, eq, value = word.partition("=")
        if name in values:
            if not eq:
                value = next(it, "")
                if not value:
                    raise ConfigError(f"{name} needs a value")
            found[name] = value
        elif word in flags:
            found[word] = True
        else:
            raise ConfigError(f"unknown option {word!r}")
    missing = [name for name in required if name not in found]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    return found
