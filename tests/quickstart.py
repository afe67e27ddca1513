"""The README's quickstart as data: which commands run on which machine, in order.

The section "Quickstart on a real VPS and home box" of README.md holds fenced
``sh`` blocks, each right after a line ``<!-- quickstart: vps -->`` or
``<!-- quickstart: home -->``. :func:`steps` returns them in order, with only
the substitutions the README itself asks the reader to make ("replace `X`
with ..."), so tests/systemd/test_quickstart.py runs exactly what a reader types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Quickstart on a real VPS and home box"
HOSTS = ("vps", "home")
_MARKED = re.compile(r"^<!-- quickstart: (?P<host>[a-z]+) -->\n```sh\n(?P<script>.*?)^```$", re.S | re.M)
_ANY_SH = re.compile(r"^```sh$", re.M)
#: "replace `203.0.113.10` with your VPS's public address": what the reader changes.
_REPLACE = re.compile(r"replace\s+`([^`]+)`\s+with", re.S)


@dataclass(frozen=True)
class Step:
    host: str
    script: str


def section(text: str) -> str:
    """The quickstart section: from its heading to the next heading of the same level."""
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    return text[start:] if end < 0 else text[start:end]


def placeholders(text: str) -> list[str]:
    """The example values the README tells the reader to replace with their own."""
    return _REPLACE.findall(section(text))


def steps(text: str, values: dict[str, str]) -> list[Step]:
    """Every marked block in order, ``values`` put in for the README's placeholders.

    ``values`` must name exactly the placeholders the README asks for; every ``sh``
    block of the section must be marked, so none is skipped silently.
    """
    part = section(text)
    asked = set(placeholders(text))
    if asked != set(values):
        raise ValueError(f"the README asks to replace {sorted(asked)}, the test gives {sorted(values)}")
    found = list(_MARKED.finditer(part))
    if len(found) != len(_ANY_SH.findall(part)):
        raise ValueError("an sh block of the quickstart has no '<!-- quickstart: HOST -->' line")
    out = []
    for m in found:
        if m["host"] not in HOSTS:
            raise ValueError(f"unknown quickstart host {m['host']!r}")
        script = m["script"]
        for placeholder, value in values.items():
            script = script.replace(placeholder, value)
        out.append(Step(m["host"], script))
    return out
