"""Facts the docs state about the code, compared with the code: the config keys and their
defaults (docs/configuration.md), the exit-status table, the module map
(docs/architecture.md) and the code named in security.md and architecture.md. The sample
outputs and the command table are checked by test_doc_samples.py."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from vpnoffload.config.parse import _KEYS, parse
from vpnoffload.errors import ExitStatus

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "vpnoffload"
DOCS = REPO / "docs"


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole line) up to the next heading of the same or a higher
    level; a ``#`` line inside a fenced block is no heading."""
    level = len(heading.split(" ")[0])
    lines = text[text.index(heading + "\n") + len(heading) + 1:].splitlines(keepends=True)
    out, fenced = [], False
    for line in lines:
        fenced ^= line.startswith("```")
        found = re.match(r"(#+) ", line)
        if found and not fenced and len(found.group(1)) <= level:
            break
        out.append(line)
    return "".join(out)


def first_table(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``text`` (a blank line ends a table), as cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# ------------------------------------------------------------------ configuration.md

CONFIGURATION = (DOCS / "configuration.md").read_text()
#: Each key table's heading in configuration.md and the parser's name for that table.
TABLES = {"## `[vps]`": "vps", "## `[tunnel]`": "tunnel", "## `[homes.NAME]`": "home",
          "## `[services.NAME]`": "service", "## `[watch]`": "watch", "## `[proxy]`": "proxy"}
#: A config with one home and one service that sets nothing optional: every default applies.
MINIMAL = {"vps": {"address": "203.0.113.10"}, "homes": {"home": {"address": "10.88.0.2"}},
           "services": {"s": {"listen": 2222, "target": 22}}}


def documented_keys(heading: str) -> dict[str, str]:
    """key -> its default cell, from the table under ``heading``."""
    out = {}
    for row in first_table(section(CONFIGURATION, heading)):
        for key in ticked(row[0]):
            out[key] = row[2]
    return out


@pytest.mark.parametrize("heading", TABLES)
def test_each_config_table_lists_exactly_the_keys_the_parser_takes(heading: str) -> None:
    assert set(documented_keys(heading)) == _KEYS[TABLES[heading]], \
        f"docs/configuration.md {heading}: keys differ from vpnoffload/config/parse.py"


def _actual(kind: str, key: str) -> Any:
    config = parse(MINIMAL)
    owner = {"tunnel": config.tunnel, "watch": config.watch, "proxy": config.proxy,
             "service": config.services["s"], "vps": config.vps, "home": config.homes["home"]}[kind]
    value = getattr(owner, key)
    value = getattr(value, "kind", value)  # a check: "tcp" or "http"
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("heading", TABLES)
def test_each_default_quoted_in_the_config_tables_is_the_parsers(heading: str) -> None:
    kind, checked = TABLES[heading], 0
    for key, cell in documented_keys(heading).items():
        literal = ticked(cell)
        if not cell.startswith("`") or "else" in cell or not literal:
            continue  # "**required**", "none", "derived", a default that depends on other keys
        documented = tomllib.loads(f"v = {literal[0]}")["v"]
        actual = _actual(kind, key)
        assert documented == (str(actual) if isinstance(documented, str) else actual), \
            f"docs/configuration.md {heading} {key}: documented default {literal[0]}, the parser's is {actual!r}"
        checked += 1
    assert checked or kind in ("vps", "home")


def test_the_exit_status_table_is_the_code_s() -> None:
    rows = first_table(section(CONFIGURATION, "## Exit status"))
    assert {int(r[0]) for r in rows} == {int(s) for s in ExitStatus}


# ------------------------------------------------------------------ architecture.md's module map

ARCHITECTURE = (DOCS / "architecture.md").read_text()
MODULES_SECTION = section(ARCHITECTURE, "## Modules")


def real_modules() -> set[str]:
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}


def test_the_module_map_names_every_module_and_only_real_ones() -> None:
    table = MODULES_SECTION[MODULES_SECTION.index("| concern | module |"):]
    named = {m for row in first_table(table) for m in ticked(row[1]) if m.endswith(".py")}
    assert real_modules() - named == set(), "docs/architecture.md's module table lacks these modules"
    assert named - real_modules() == set(), "docs/architecture.md's module table names modules that do not exist"


def test_the_package_tree_shows_every_package_and_top_level_module() -> None:
    tree = MODULES_SECTION.split("```")[1]
    packages = {str(p.parent.relative_to(PACKAGE)) + "/" for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
    shown = set(re.findall(r"^ +([a-z/]+/) ", tree, re.M))
    assert packages == shown, "docs/architecture.md's package tree and vpnoffload/'s packages differ"
    top = {p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert top == set(re.findall(r"\b([a-z_]+\.py)\b", tree)), "the tree's top-level modules differ"


@pytest.mark.parametrize("package", ["lean", "config"])
def test_the_tree_lists_a_kit_package_s_modules_exactly(package: str) -> None:
    """lean/ and config/ name all their modules in the tree ("spawn, say, ..."; "(checks, access, ...)")."""
    tree = MODULES_SECTION.split("```")[1]
    found = re.search(rf"^  {package}/ +(.*(?:\n {{16}}.*)*)", tree, re.M)
    assert found is not None
    words = re.sub(r"^[^:(]*[:(]", "", found.group(1).replace("\n", " ")).strip(" )")
    listed = {w.strip() for w in words.split(",")}
    real = {p.stem for p in (PACKAGE / package).glob("*.py") if p.name != "__init__.py"}
    assert listed == real, f"docs/architecture.md's tree: {package}/ lists {sorted(listed)}, the package has {sorted(real)}"


# ------------------------------------------------------------------ code named in the docs


def _resolves(ref: str) -> bool | None:
    """Whether ``mod.attr`` (or ``pkg/mod.py``, ``mod.Class.attr``) names real code; None: not code."""
    parts = ref.removeprefix("vpnoffload.").removesuffix(".py").replace("/", ".").split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        path = PACKAGE.joinpath(*parts[:i])
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
            obj: Any = importlib.import_module(f"vpnoffload.{module}")
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return None


CODE_REFS = sorted({(doc, ref) for doc in ("security.md", "architecture.md")
                    for ref in re.findall(r"`([a-z_][\w./]*)`", (DOCS / doc).read_text())
                    if "." in ref and not ref.endswith((".j2", ".json", ".conf", ".cfg", ".pem", ".crt", ".key"))
                    and ref.split(".")[0] not in _KEYS[""]})  # config keys like watch.metrics


@pytest.mark.parametrize("doc,ref", CODE_REFS, ids=[f"{d}:{r}" for d, r in CODE_REFS])
def test_code_the_docs_name_exists(doc: str, ref: str) -> None:
    assert _resolves(ref) is not False, f"docs/{doc} names {ref}, which is not in the code"


def test_the_complete_example_is_a_valid_config() -> None:
    text = section(CONFIGURATION, "## A complete example")
    example = tomllib.loads(text.split("```toml\n")[1].split("```")[0])
    config = parse(example)
    assert list(config.services) == ["blog", "shop", "shop6", "wiki", "git"]


def test_the_metric_names_in_the_docs_are_the_ones_exported() -> None:
    emitters = (PACKAGE / "watch" / "metrics.py", PACKAGE / "lean" / "accessdrops.py")
    pattern = r"\b(?:vpnoffload_[a-z_]+|process_resident_memory_bytes)\b"
    exported = {m for path in emitters for m in re.findall(pattern, path.read_text())}
    assert "process_resident_memory_bytes" in exported  # the pattern still finds the non-vpnoffload one
    assert set(re.findall(pattern, CONFIGURATION)) == exported


def test_troubleshooting_lists_every_failure_reason_the_checks_give() -> None:
    from vpnoffload.watch import health

    text = (DOCS / "troubleshooting.md").read_text()
    rows = first_table(section(text, "## Why a service is failing: the reasons `status` gives"))
    assert {ticked(r[0])[0] for r in rows} == set(health.REASONS) - {health.BUSY}
    assert "`ok (busy)`" in text  # busy is no failure: explained below the table


def test_how_often_the_docs_say_the_host_firewall_is_looked_at() -> None:
    from vpnoffload.watch import hostfw

    said = re.search(r"one `nft -s list ruleset` every\s+(\S+) s", (DOCS / "deploying.md").read_text())
    assert said is not None and float(said.group(1)) == hostfw.EVERY


def test_testing_md_names_every_shared_test_helper() -> None:
    tests = REPO / "tests"
    helpers = {str(p.relative_to(REPO)) for p in tests.rglob("*.py")
               if not p.name.startswith("test_") and p.name != "__init__.py" and "golden" not in p.parts}
    text = (DOCS / "testing.md").read_text()
    rows = first_table(section(text, "## Helpers in one place"))
    named = {m for row in rows for m in ticked(row[0])}
    assert helpers - named == set(), "docs/testing.md's table of shared helpers lacks these"
    assert named - helpers == set(), "docs/testing.md's table of shared helpers names files that do not exist"


def test_the_readme_command_table_names_every_command() -> None:
    import typer.main

    from vpnoffload.cli.app import app

    leaves: set[str] = set()

    def walk(cmd: Any, path: str) -> None:
        subs = getattr(cmd, "commands", None)
        if not subs:
            leaves.add(path)
        for name, sub in (subs or {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    readme = (REPO / "README.md").read_text()
    named: set[str] = set()
    for row in first_table(section(readme, "## What you get")):
        for usage in ticked(row[0]):
            words = [w for w in usage.split() if not w.startswith(("[", "NAME"))]
            alternatives = words[1].split("/") if len(words) > 1 else [""]
            named |= {f"{words[0]} {alt}".strip() for alt in alternatives}
    assert named == leaves, "README.md's 'What you get' table and the CLI's commands differ"


def test_the_page_server_bounds_in_the_docs_are_the_code_s() -> None:
    from vpnoffload.fallback import pageloop as p

    bounds = re.sub(r"\s+", " ", section(ARCHITECTURE, "## The watchdog and the swap"))
    assert f"At most {p.MAX_CONNECTIONS} connections ({p.MAX_TLS_CONNECTIONS} over TLS)" in bounds
    assert (f"within {p.HANDSHAKE_TIMEOUT:g} s, the whole request head within {p.HEAD_TIMEOUT:g} s of that" in bounds
            and f"the answer within {p.SEND_TIMEOUT:g} s; a head is read up to {p.MAX_HEAD // 1024} KiB" in bounds)
    copies = re.sub(r"\s+", " ", CONFIGURATION)
    assert f"{p.FILE_CHUNK // 1024} KiB at a time (a visitor who keeps reading has up to {p.STREAM_TIMEOUT:g} s)" in copies


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    fenced, out = False, set()
    for line in path.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#+ ", line):
            out.add(_slug(line.lstrip("#")))
    return out


LINKED = sorted({(doc, target) for doc in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
                 for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()) if "://" not in target})


@pytest.mark.parametrize("doc,target", LINKED, ids=[f"{d.name}->{t}" for d, t in LINKED])
def test_every_link_between_the_docs_resolves(doc: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    linked = (doc.parent / path).resolve() if path else doc
    assert linked.exists(), f"{doc.name} links to {target}: no such file"
    if anchor:
        assert anchor in _anchors(linked), f"{doc.name} links to {target}: no such heading"


# ------------------------------------------------------------------ commands written out in the docs


def _written_commands(text: str) -> list[str]:
    """Every `vpnoffload ...` the docs show: inline code, and lines (or parts of lines joined by
    && ; |) of fenced blocks, without a trailing # comment."""
    found = re.findall(r"`(vpnoffload [^`]+)`", text)
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            for part in re.split(r"&&|;|\|\s", line.strip().removeprefix("$ ").split(" #")[0]):
                if part.strip().startswith("vpnoffload "):
                    found.append(part.strip())
    return found


def _unknown_options(command: str) -> tuple[str, list[str]]:
    """(the command path, the options it is shown with that it does not have)."""
    import typer.main

    from vpnoffload.cli.app import app

    root = cmd = typer.main.get_command(app)
    globals_ = {o for p in root.params for o in p.opts}
    words, i, path = command.split()[1:], 0, []
    while i < len(words):
        word = words[i].split("|")[0]  # `render nginx|haproxy`: either
        subs = getattr(cmd, "commands", None)
        if word in globals_:
            i += 2 if word in ("-c", "--config", "--state-dir") else 1
        elif subs and word in subs:
            cmd, i = subs[word], i + 1
            path.append(word)
        else:
            break
    known = {o for p in cmd.params for o in p.opts} | globals_ | {"--help"}
    shown = [w.split("=")[0].rstrip(".,)") for w in words[i:] if w.startswith("-")]
    return " ".join(path), [o for o in shown if re.fullmatch(r"--?[a-z][a-z0-9-]*", o) and o not in known]


WRITTEN = sorted({(doc.name, c) for doc in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
                  for c in _written_commands(doc.read_text())})


def test_the_docs_show_many_commands() -> None:
    assert len(WRITTEN) > 60  # the parser above still finds them (88 when written)


@pytest.mark.parametrize("doc,command", WRITTEN, ids=[f"{d}:{c}" for d, c in WRITTEN])
def test_every_option_the_docs_show_with_a_command_is_that_command_s(doc: str, command: str) -> None:
    path, unknown = _unknown_options(command)
    assert not unknown, f"{doc}: `{command}`: '{path}' has no {unknown}"
