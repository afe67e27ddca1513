"""The report's pictures (matplotlib, optional: without it the report has tables only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bench import bulk, failover, memory, tunnel, web


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {"vpnoffload": "#2a7ab0", "nginx": "#d9822b", "nginx keepalive": "#f2b36b", "HAProxy": "#6c9a3b"}


def web_chart(cells: Sequence[web.Cell], path: Path) -> Path:
    plt = _pyplot()
    groups = list(dict.fromkeys((c.mode, c.connections) for c in cells))
    systems = list(dict.fromkeys(c.system for c in cells))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        xs, rps, p99 = [], [], []
        for g, (mode, conns) in enumerate(groups):
            cell = next((c for c in cells if (c.system, c.mode, c.connections) == (system, mode, conns)), None)
            if cell is None:
                continue
            xs.append(g + (i - (len(systems) - 1) / 2) * width)
            rps.append(cell.rps)
            p99.append(cell.p99_ms)
        top.bar(xs, rps, width, label=system, color=COLORS.get(system))
        bottom.bar(xs, p99, width, label=system, color=COLORS.get(system))
    labels = [f"{'new connections' if m == 'new' else 'keep-alive'}\n{c} concurrent" for m, c in groups]
    for ax in (top, bottom):
        ax.set_xticks(range(len(groups)), labels)
        ax.grid(axis="y", alpha=0.3)
    top.set_ylabel("requests/s (higher is better)")
    top.set_title("Through the VPS to home: requests/s")
    top.legend(ncol=len(systems), fontsize=8)
    bottom.set_ylabel("p99 latency, ms (log; lower is better)")
    bottom.set_yscale("log")
    bottom.set_title("p99 latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


BULK_COLORS = {"via vpnoffload": COLORS["vpnoffload"], "via HAProxy": COLORS["HAProxy"], "raw tunnel": "#999999"}


def bulk_chart(cells: Sequence[bulk.Cell], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    directions = list(dict.fromkeys(c.direction for c in cells))
    paths = list(dict.fromkeys(c.path for c in cells))
    width = 0.8 / max(len(paths), 1)
    for i, name in enumerate(paths):
        values = [next((c.mbit_s for c in cells if c.path == name and c.direction == d), 0) for d in directions]
        xs = [g + (i - (len(paths) - 1) / 2) * width for g in range(len(directions))]
        ax.bar(xs, values, width, label=name, color=BULK_COLORS.get(name, "#999999"))
    ax.set_xticks(range(len(directions)), [f"{d} (home {'receives' if d == 'upload' else 'sends'})"
                                           for d in directions])
    ax.set_ylabel("Mbit/s")
    ax.set_title("Bulk TCP (iperf3) to and from home")
    ax.set_ylim(0, max((c.mbit_s for c in cells), default=1) * 1.25)
    ax.legend(loc="upper center", ncol=len(paths), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def memory_chart(samples: Sequence[memory.Sample], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 4.2))

    def line(points, label, **style):
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] / 1024 for p in points], label=label, **style)

    own = [s for s in samples if s.system == "vpnoffload"]
    if own:
        line([(s.connections, s.pss_kb - s.parts.get("OpenVPN", (0, 0))[1]) for s in own],
             "vpnoffload: watchdog + page server", marker="o", color=COLORS["vpnoffload"])
        line([(s.connections, s.conntrack_kb) for s in own], "vpnoffload: conntrack entries (kernel)",
             marker="x", linestyle="--", color=COLORS["vpnoffload"])
    for system in ("nginx", "HAProxy"):
        pts = [(s.connections, s.pss_kb) for s in samples if s.system == system]
        if pts:
            line(pts, system, marker="o", color=COLORS[system])
    if samples:
        line([(s.connections, s.openvpn[1]) for s in samples if s.system == samples[0].system],
             "OpenVPN (all three need it)", marker=".", linestyle=":", color="#777777")
    ax.set_xscale("log")
    ax.set_xlabel("idle connections held open")
    ax.set_ylabel("MiB on the VPS (PSS)")
    ax.set_ylim(bottom=0)
    ax.set_title("Memory on the VPS vs. connections held")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def failover_chart(cycles: Sequence[failover.Cycle], path: Path, goals: tuple[float, float]) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    xs = list(range(1, len(cycles) + 1))
    fo = [c.failover_s if c.failover_s is not None else math.nan for c in cycles]
    rc = [c.recovery_s if c.recovery_s is not None else math.nan for c in cycles]
    ax.plot(xs, fo, "o-", label="cable pulled → friendly page", color="#c0392b")
    ax.plot(xs, rc, "s-", label="cable back → real site", color="#2a7ab0")
    ax.axhline(goals[0], color="#c0392b", linestyle=":", label=f"goal p95 ≤ {goals[0]:g} s")
    ax.axhline(goals[1], color="#2a7ab0", linestyle=":", label=f"goal p95 ≤ {goals[1]:g} s")
    ax.set_xlabel("cable pull #")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.set_title("Failover and recovery, as a visitor sees it")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tunnel_chart(cells: Sequence[tunnel.Cell], path: Path) -> Path:
    plt = _pyplot()
    variants = list(dict.fromkeys(c.variant for c in cells))
    directions = list(dict.fromkeys(c.direction for c in cells))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.55 * len(variants) + 1.8), sharey=True)
    height = 0.8 / max(len(directions), 1)
    for ax, attr, label in ((axes[0], "mbit_s", "Mbit/s over the tunnel (iperf3)"),
                            (axes[1], "mbit_per_cpu_s", "Mbit per CPU-second of the VPS's OpenVPN")):
        for i, d in enumerate(directions):
            values = [next((getattr(c, attr) for c in cells if c.variant == v and c.direction == d), 0)
                      for v in variants]
            ys = [g + (i - (len(directions) - 1) / 2) * height for g in range(len(variants))]
            ax.barh(ys, values, height, label=d, color=["#2a7ab0", "#6c9a3b"][i % 2])
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(variants)), variants)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=8)
    fig.suptitle("OpenVPN config variants (medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
