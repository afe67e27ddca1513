"""The layering of docs/architecture.md, checked on the import statements of the package.

Fails when a change lets a module reach past its layer: a kernel library
imported outside the backend modules, a terminal library outside the CLI, a
lower layer importing a higher one, or a second way to run commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vpnoffload"

#: Libraries that touch the kernel, and the only modules allowed to import them.
KERNEL_LIBRARIES = {"iptc", "pyroute2", "nftables"}
KERNEL_MODULES = {"firewall.iptc", "firewall.xtables", "firewall.nft", "routing.netlink", "firewall.conntrack"}
#: Terminal libraries: only the CLI (and the lab's narrator) talk to a terminal.
TERMINAL_LIBRARIES = {"typer", "click", "rich"}
TERMINAL_MODULES = ("cli.", "lab.narrate")
#: subprocess: only the one helper (proc), the lab included (the lean processes start
#: their children with lean/spawn.py, os.posix_spawn, and so import no subprocess).
SUBPROCESS_MODULES = ("proc",)

#: Each layer and what it may not import (by package prefix). The lean kit sits just
#: above the base; the page server (fallback) below the watchdog that starts it.
FORBIDDEN = {
    "": ("cli.", "lab."),  # nothing but the CLI and the lab imports the CLI or the lab
    "lean.": ("deploy", "watch", "fallback", "status", "render", "firewall", "routing"),
    "firewall.": ("deploy", "watch", "fallback", "status", "render"),
    "routing.": ("deploy", "watch", "fallback", "status", "render", "firewall"),
    "config.": ("deploy", "watch", "fallback", "status", "render", "firewall", "routing", "lean"),
    "render.": ("deploy", "watch", "fallback", "status", "firewall", "routing"),
    "fallback.": ("deploy", "watch", "status", "render.openvpn", "render.webserver", "firewall", "routing"),
    "watch.": ("deploy", "status", "render.openvpn", "render.webserver"),
    "deploy.": ("status",),
}
BASE_MODULES = {"errors", "exits", "model", "paths", "plan", "names", "fsio", "proc", "locks", "watchfile", "runfiles"}


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imports(tree: ast.Module) -> set[str]:
    """Every module an import statement names (absolute; ``vpnoffload.`` stripped)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "vpnoffload":
                names |= {f"vpnoffload.{a.name}" for a in node.names}
    return {n.removeprefix("vpnoffload.") if n.startswith("vpnoffload.") else n for n in names} - {"vpnoffload"}


MODULES = _modules()
OWN = {m.split(".")[0] for m in MODULES}


def _own(imports: set[str]) -> set[str]:
    return {i for i in imports if i.split(".")[0] in OWN and i not in {"__future__"}}


def _starts(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p if p.endswith(".") else p + ".") or name == p
               for p in prefixes)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_kernel_and_terminal_libraries_stay_in_their_modules(module: str) -> None:
    roots = {i.split(".")[0] for i in _imports(MODULES[module])}
    if module not in KERNEL_MODULES:
        assert not roots & KERNEL_LIBRARIES, f"{module} imports a kernel library: only {sorted(KERNEL_MODULES)} may"
    if not _starts(module, TERMINAL_MODULES):
        assert not roots & TERMINAL_LIBRARIES, f"{module} imports a terminal library: only the CLI may"
    if not _starts(module, SUBPROCESS_MODULES):
        assert "subprocess" not in roots, f"{module} imports subprocess: run commands with vpnoffload.proc.run"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_layer_imports_a_higher_one(module: str) -> None:
    own = _own(_imports(MODULES[module]))
    if module in BASE_MODULES:
        assert own <= BASE_MODULES, f"{module} is a base module but imports {sorted(own - BASE_MODULES)}"
    for layer, forbidden in FORBIDDEN.items():
        if layer and not module.startswith(layer):
            continue
        if not layer and (module.startswith(("cli.", "lab.")) or module in ("cli", "lab", "entry")):
            continue
        bad = sorted(i for i in own if _starts(i, forbidden))
        assert not bad, f"{module} imports {bad}: a higher layer"


#: The one error handler (exits) prints the error line of every entry point; processes
#: that cannot import the CLI (the lean watchdog, page server and swap child run
#: ``python -I -S``) write their log and error lines through one module;
#: the host-firewall reconcile child's stdout is the watchdog's pipe, not a terminal.
OTHER_PRINTERS = {"exits", "lean.say", "firewall.host.plan"}


def test_only_cli_and_narrator_print() -> None:
    printers = set()
    for module, tree in MODULES.items():
        if _starts(module, TERMINAL_MODULES) or module in ("entry", "cli") or module in OTHER_PRINTERS:
            continue
        if any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print" for n in ast.walk(tree)):
            printers.add(module)
    assert not printers, f"these modules print (only the CLI may): {sorted(printers)}"


def test_the_code_explains_itself_without_issue_numbers() -> None:
    """Comments and docstrings say why; an issue number says where to look instead, and goes stale."""
    import re

    cited = [f"{path.relative_to(PACKAGE)}:{n}" for path in sorted(PACKAGE.rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\b[Ii]ssue \d+", line)]
    assert cited == []
