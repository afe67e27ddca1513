"""Docs that are checked, not trusted: the sample outputs and option lists in README.md and
docs/*.md are what the real CLI prints (tests/docsamples.py makes them on a fake host)."""

from __future__ import annotations

import re

import pytest
import typer.main

from tests import docsamples
from vpnoffload.cli.app import app

MARKED = [(doc, m) for doc in docsamples.DOCS for m in docsamples.blocks(doc.read_text())]


@pytest.fixture(scope="module")
def made() -> dict[str, str]:
    return {}


@pytest.mark.parametrize("doc,mark", MARKED, ids=[f"{d.name}:{m['id']}" for d, m in MARKED])
def test_each_sample_is_what_the_cli_prints(doc, mark, made: dict[str, str]) -> None:
    assert mark["id"] in docsamples.SAMPLES, f"{doc.name}: no generator for sample {mark['id']!r}"
    if mark["id"] not in made:
        made[mark["id"]] = docsamples.SAMPLES[mark["id"]]()
    assert mark["body"].rstrip("\n") == made[mark["id"]], \
        f"{doc.name}: sample {mark['id']!r} is stale: run .venv/bin/python -m tests.docsamples --write"


def test_every_sample_is_shown_somewhere() -> None:
    assert {m["id"] for _, m in MARKED} == set(docsamples.SAMPLES)


# ------------------------------------------------------------------ option lists


def cli_commands() -> dict[str, set[str]]:
    """'service add' -> its long options (without --help), for every command; '' is the root."""
    out: dict[str, set[str]] = {}

    def walk(cmd, path: str) -> None:
        out[path] = {o for p in cmd.params for o in p.opts if o.startswith("--") and o != "--help"}
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return {k: v for k, v in out.items() if k == "" or not getattr(_find(k), "commands", None)}


def _find(path: str):
    cmd = typer.main.get_command(app)
    for word in path.split():
        cmd = cmd.commands[word]
    return cmd


def documented_commands(known: set[str]) -> dict[str, set[str]]:
    """The same, read from docs/configuration.md's table of commands (and its global options line)."""
    text = (docsamples.REPO / "docs" / "configuration.md").read_text()
    section = text[text.index("## Commands and what they change"):text.index("## Exit status")]
    out: dict[str, set[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        for usage in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            words = usage.replace("\\|", "|").split()
            heads = [""]
            for word in words:
                grown = [f"{h} {alt}".strip() for h in heads for alt in word.split("|")]
                if not all(any(k == g or k.startswith(g + " ") for k in known) for g in grown):
                    break
                heads = grown
            for head in heads:
                out.setdefault(head, set()).update(re.findall(r"--[a-z0-9-]+", usage))
    glob = section[section.index("Global options:"):]
    out[""] = set(re.findall(r"--[a-z0-9-]+", glob.split("\n\n")[0]))
    return out


def test_the_command_table_lists_every_command_with_all_its_options() -> None:
    cli = cli_commands()
    docs = documented_commands(set(cli))
    assert set(docs) - set(cli) == set(), "documented commands the CLI does not have"
    missing = {c: sorted(cli[c] - docs.get(c, set())) for c in cli if cli[c] - docs.get(c, set()) or c not in docs}
    extra = {c: sorted(docs[c] - cli[c]) for c in docs if docs[c] - cli[c]}
    assert not missing, f"docs/configuration.md lacks commands/options: {missing}"
    assert not extra, f"docs/configuration.md names options the CLI does not have: {extra}"


# ------------------------------------------------------------------ the README's quickstart


def test_the_quickstart_is_machine_readable_and_asks_for_two_values() -> None:
    from tests import quickstart

    text = quickstart.README.read_text()
    assert quickstart.placeholders(text) == ["203.0.113.10", "home.example.net"]
    steps = quickstart.steps(text, {"203.0.113.10": "198.51.100.130", "home.example.net": "198.51.100.140"})
    assert [s.host for s in steps] == ["vps", "home", "vps", "home"]
    everything = "\n".join(s.script for s in steps)
    assert "203.0.113.10" not in everything and "home.example.net" not in everything
    # What a fresh Debian 12 as root needs: no sudo, apt lists first, a compiler for python-iptables.
    assert "sudo" not in everything
    for s in steps[:2]:
        assert s.script.startswith("apt-get update && apt-get install -y ") and "python3-dev gcc" in s.script
    # The home box's directories exist, 0700, before anything is copied into them.
    assert "install -d -m 0700 /etc/vpnoffload /etc/vpnoffload/state" in steps[1].script
    assert "root@198.51.100.140:/etc/vpnoffload/state/" in steps[2].script


def test_an_unmarked_block_or_a_wrong_value_is_refused() -> None:
    from tests import quickstart

    text = quickstart.README.read_text()
    with pytest.raises(ValueError, match="asks to replace"):
        quickstart.steps(text, {"203.0.113.10": "198.51.100.130"})
    unmarked = text.replace("<!-- quickstart: home -->\n", "", 1)
    with pytest.raises(ValueError, match="no '<!-- quickstart"):
        quickstart.steps(unmarked, {"203.0.113.10": "x", "home.example.net": "y"})
