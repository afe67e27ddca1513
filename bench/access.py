"""``python -m bench.access``: how long a 100 000-prefix deny list takes to apply (issue 28).

As root. For each firewall backend, in a network namespace of its own
(``vpnobencha<pid>``, always removed): one VPS ruleset with a service whose
``deny_file`` holds 100 000 /24s, applied as ``up vps`` applies it (plan, then
one commit per table), timed in parts: reading and checking the file, the
first apply (the set loaded and the rules committed), a second plan (read back:
nothing to do), a rewrite that keeps the set (what a watchdog swap does), and
``down``. Prints JSON, and whether the first apply met :data:`BUDGET_S`. The
kernel memory an ipset takes is its own "Size in memory"; nftables does not
report one per set.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Issue 28: 100 000 prefixes load in under a second (the first apply: parse + set + commit).
BUDGET_S = 1.0
PREFIXES = 100_000


def write_list(path: Path, count: int = PREFIXES) -> None:
    lines = [f"{(20 << 24) + i * 512 >> 24}.{(20 << 24) + i * 512 >> 16 & 255}.{(20 << 24) + i * 512 >> 8 & 255}.0/24"
             for i in range(count)]
    path.write_text("# bench\n" + "\n".join(lines) + "\n")


def inner(backend: str, deny_file: Path) -> dict[str, float | int | str]:
    """Runs inside the namespace: the timings of one backend."""
    os.environ["VPNOFFLOAD_FIREWALL"] = backend
    from vpnoffload import firewall, plan
    from vpnoffload.config.parse import parse
    from vpnoffload.firewall.rules import Ruleset

    config = parse({"vps": {"address": "203.0.113.10"}, "homes": {"home": {"address": "10.88.0.2"}},
                    "services": {"web": {"listen": "80", "target": "8080", "deny_file": str(deny_file)}}})
    fw = firewall.default_backend()
    fw.preload()
    out: dict[str, float | int | str] = {"backend": backend}
    cpu = _cpu_s()
    t = time.perf_counter()
    desired = firewall.vps_ruleset(config)
    # What the backend loads: nft merges adjacent prefixes into intervals (none here: every
    # other /24, the worst case), ipset takes the prefixes.
    loaded = [s.intervals() if backend == "nft" else s.elements() for s in desired.sets]
    out["parse_s"] = time.perf_counter() - t
    t = time.perf_counter()
    plan.apply(firewall.plan(fw, desired))
    out["first_apply_s"] = time.perf_counter() - t
    # CPU time (this process and nft/ipset): what the load costs whatever else runs on the machine.
    out["load_cpu_s"] = _cpu_s() - cpu
    out["prefixes"] = sum(len(s.elements()) for s in desired.sets)
    out["set_elements"] = sum(len(x) for x in loaded)
    out["load_s"] = out["parse_s"] + out["first_apply_s"]  # type: ignore[operator]
    t = time.perf_counter()
    again = firewall.plan(fw, firewall.vps_ruleset(config))
    out["second_plan_s"] = time.perf_counter() - t
    out["second_plan_actions"] = len(again)
    t = time.perf_counter()
    plan.apply(firewall.plan(fw, firewall.vps_ruleset(config, fallback=frozenset({"web"}))))
    out["swap_s"] = time.perf_counter() - t
    if backend == "iptc":
        listing = subprocess.run(["ipset", "list", "-t"], capture_output=True, text=True).stdout
        out["ipset_bytes"] = sum(int(line.split(":")[1]) for line in listing.splitlines()
                                 if line.startswith("Size in memory"))
    t = time.perf_counter()
    plan.apply(firewall.plan(fw, Ruleset()))
    out["down_s"] = time.perf_counter() - t
    return out


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.access", description=__doc__)
    parser.add_argument("--inner", nargs=2, metavar=("BACKEND", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        print(json.dumps(inner(args.inner[0], Path(args.inner[1]))))
        return 0
    if os.geteuid() != 0:
        print("bench.access: run as root (it makes a network namespace)", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="vpnoffload-bench-") as tmp:
        deny = Path(tmp) / "deny.txt"
        write_list(deny)
        for backend in ("iptc", "nft"):
            ns = f"vpnobencha{os.getpid()}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            try:
                subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
                proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "bench.access", "--inner",
                                       backend, str(deny)], capture_output=True, text=True, timeout=120)
                if proc.returncode != 0:
                    print(proc.stderr, file=sys.stderr)
                    return 1
                results.append(json.loads(proc.stdout))
            finally:
                subprocess.run(["ip", "netns", "del", ns], check=False)
    print(json.dumps(results, indent=2))
    for r in results:
        verdict = "met" if r["load_s"] < BUDGET_S else "MISSED"
        print(f"{r['backend']}: {r['prefixes']} prefixes loaded in {r['load_s']:.2f} s "
              f"(parse {r['parse_s']:.2f} s + apply {r['first_apply_s']:.2f} s; CPU {r['load_cpu_s']:.2f} s): "
              f"budget {BUDGET_S:g} s {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
