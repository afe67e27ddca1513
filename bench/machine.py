"""What the numbers were measured on: CPU, cores, memory, kernel, tool versions."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path


def _first_line(argv: list[str], pattern: str = r".*") -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    for line in (proc.stdout + proc.stderr).splitlines():
        match = re.search(pattern, line)
        if match:
            return match.group(0).strip()
    return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    except (OSError, AttributeError):
        return "unknown"
    return f"{kb / 1024 / 1024:.1f} GiB"


def _virtualization() -> str:
    return _first_line(["lscpu"], r"Hypervisor vendor:.*").split(":", 1)[-1].strip() or "none"


def describe() -> dict[str, str]:
    from vpnoffload import __version__

    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "hypervisor": _virtualization(),
        "memory": _memory(),
        "kernel": platform.release(),
        "OS": _first_line(["cat", "/etc/debian_version"], r"\S+"),
        "Python": platform.python_version(),
        "vpnoffload": __version__,
        "OpenVPN": _first_line(["openvpn", "--version"], r"OpenVPN \S+"),
        "OpenSSL": _first_line(["openssl", "version"], r"OpenSSL \S+"),
        "nginx": _first_line(["nginx", "-v"], r"nginx/\S+"),
        "HAProxy": _first_line(["haproxy", "-v"], r"HAProxy version \S+"),
        "wrk": _first_line(["wrk", "-v"], r"wrk \S+"),
        "iperf3": _first_line(["iperf3", "--version"], r"iperf \S+"),
    }
