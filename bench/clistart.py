"""What one ``vpnoffload`` command costs to start and run, per command the tests and users call most.

    sudo .venv/bin/python -m bench.clistart [--rounds 5] [--prefix vpnobcs] [--json out.json]

Builds a lab with ``vpnoffload lab up`` (watchdog included), then runs each command in its
namespace ``--rounds`` times plainly (wall time, from fork to exit, ``ip netns exec`` included)
and ``--rounds`` times with ``python -X importtime`` (the sum of the top-level imports, and which
of the heavy libraries were loaded). Prints a table of medians; the lab is always removed.

The commands: ``init``, ``service add`` and ``render home`` on a scratch config in the VPS's
namespace (so the lab's own PKI stays), ``up vps``/``up home`` with nothing to do, ``status``
(``--json`` too) and ``doctor`` on each end, and a real ``down home``, ``down vps``, ``up vps``,
``up home`` cycle. The Python running this script is the one measured (its vpnoffload).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

HEAVY = ("iptc", "pyroute2", "cryptography", "jinja2", "pydantic", "typer", "rich", "pkg_resources",
         "setuptools", "nftables")
_TOP = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")
_ANY = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \|\s+(\S+)$")


def imports(stderr: str) -> tuple[float, list[str]]:
    """From ``-X importtime`` output: the ms of the top-level imports, and the heavy packages loaded."""
    total = 0.0
    heavy = []
    for line in stderr.splitlines():
        top = _TOP.match(line)
        if top:
            total += int(top.group(1)) / 1000
        anyline = _ANY.match(line)
        if anyline and anyline.group(2) in HEAVY:
            heavy.append(anyline.group(2))
    return total, sorted(set(heavy))


def commands(vps_address: str, scratch: Path, export: Path) -> list[tuple[str, str, list[str]]]:
    """(label, host, args) in the order run each round; the scratch config starts empty."""
    cfg = ["-c", str(scratch / "vpnoffload.toml")]
    return [
        ("init", "vps", [*cfg, "init", "--vps-address", vps_address, "--force"]),
        ("service add", "vps", [*cfg, "service", "add", "web", "--listen", "80", "--target", "8080",
                                "--check", "http:/", "--hostname", "blog.example.org"]),
        ("render home", "vps", [*cfg, "render", "home", "--out", str(export)]),
        ("up vps (nothing to do)", "vps", ["up", "vps"]),
        ("up home (nothing to do)", "home", ["up", "home"]),
        ("status vps", "vps", ["status"]),
        ("status --json vps", "vps", ["status", "--json"]),
        ("status --json home", "home", ["status", "--json"]),
        ("doctor vps", "vps", ["doctor"]),
        ("doctor home", "home", ["doctor"]),
        ("down home", "home", ["down", "home"]),
        ("down vps", "vps", ["down", "vps"]),
        ("up vps", "vps", ["up", "vps"]),
        ("up home", "home", ["up", "home"]),
        ("--help", "vps", ["--help"]),
    ]


def measure(rounds: int, prefix: str) -> dict[str, dict[str, object]]:
    from vpnoffload.lab import steps
    from vpnoffload.lab.narrate import RecordingNarrator
    from vpnoffload.lab.sites import DEMO_COMMANDS

    lab, sites = steps.open_lab(prefix)
    narrator = RecordingNarrator()
    walls: dict[str, list[float]] = {}
    imps: dict[str, list[float]] = {}
    heavy: dict[str, list[str]] = {}
    try:
        steps.run_up(lab, sites, narrator, DEMO_COMMANDS)
        scratch = sites.root / "scratch"
        export = sites.root / "scratch-export"
        scratch.mkdir(mode=0o700)
        export.mkdir(mode=0o700)
        plan = commands(lab.vps_address, scratch, export)
        for round_ in range(2 * rounds):
            timed = round_ % 2 == 1  # alternate, so both see the same machine
            (scratch / "vpnoffload.toml").unlink(missing_ok=True)
            for label, host, args in plan:
                site_cfg = [] if args[0] in ("-c", "--help") else ["-c", str(sites.config(host))]
                py = [sys.executable, "-P", *(["-X", "importtime"] if timed else []), "-m", "vpnoffload"]
                start = time.perf_counter()
                result = lab.exec(host, *py, *site_cfg, *args, check=False, timeout=120)
                wall = time.perf_counter() - start
                if result.returncode not in (0, 1):
                    raise SystemExit(f"{label}: exit {result.returncode}: {result.stderr.strip()[-400:]}")
                if timed:
                    ms, loaded = imports(result.stderr)
                    imps.setdefault(label, []).append(ms)
                    heavy[label] = loaded
                else:
                    walls.setdefault(label, []).append(wall)
    finally:
        steps.run_down(prefix, narrator)
    return {label: {"wall_s": statistics.median(walls[label]), "import_ms": statistics.median(imps[label]),
                    "heavy": heavy[label], "walls": walls[label]} for label in walls}


def table(results: dict[str, dict[str, object]]) -> str:
    lines = ["| command | wall s (median) | imports ms (median) | heavy packages loaded |", "|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['wall_s']:.3f} | {r['import_ms']:.0f} | {', '.join(r['heavy']) or '-'} |")  # type: ignore[arg-type]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefix", default="vpnobcs")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    results = measure(options.rounds, options.prefix)
    if options.json:
        options.json.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
