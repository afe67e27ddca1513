"""Which backend writes vpnoffload's own rules: python-iptables or nftables.

python-iptables (:mod:`.iptc`) wherever the legacy x_tables exist, as always;
nftables (:mod:`.nft`) where they do not (nft-only kernels). The check is the
one ``iptables-legacy`` itself relies on: ``/proc/net/ip_tables_names`` exists
once the ip_tables module is loaded (or built in), and otherwise iptables runs
``modprobe ip_tables``, which works if the running kernel ships the module.
``VPNOFFLOAD_FIREWALL=nft|iptc`` forces one (tests run the nft backend on a
kernel that has both); child processes (the watchdog's swap) inherit it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from vpnoffload.errors import ConfigError
from vpnoffload.firewall.rules import Backend

ENV = "VPNOFFLOAD_FIREWALL"
CHOICES = ("iptc", "nft")


def legacy_tables_available(proc_net: Path = Path("/proc/net"), modules: Path = Path("/lib/modules"),
                            release: str | None = None) -> bool:
    """Can the legacy iptables tables be used here: ip_tables loaded, or loadable?"""
    if (proc_net / "ip_tables_names").exists():
        return True
    release = release or platform.release()
    for listing in ("modules.dep", "modules.builtin"):
        try:
            text = (modules / release / listing).read_text(errors="replace")
        except OSError:
            continue
        # "kernel/net/ipv4/netfilter/ip_tables.ko.xz: kernel/net/netfilter/x_tables.ko.xz"
        if any(line.split(":", 1)[0].rsplit("/", 1)[-1].startswith("ip_tables.ko") for line in text.splitlines()):
            return True
    return False


def chosen(env: dict[str, str] | None = None, legacy: bool | None = None) -> tuple[str, str]:
    """("iptc" or "nft", why); ConfigError for an unknown VPNOFFLOAD_FIREWALL."""
    forced = (os.environ if env is None else env).get(ENV, "").strip()
    if forced:
        if forced not in CHOICES:
            raise ConfigError(f"{ENV}={forced!r}: use one of {', '.join(CHOICES)}")
        return forced, f"{ENV}={forced}"
    if legacy_tables_available() if legacy is None else legacy:
        return "iptc", "the legacy iptables tables exist"
    return "nft", "this kernel has no legacy iptables tables (ip_tables)"


def make(name: str) -> Backend:
    if name == "nft":
        from vpnoffload.firewall.nft import NftBackend

        return NftBackend()
    from vpnoffload.firewall.iptc import IptcBackend

    return IptcBackend()


def describe(name: str) -> str:
    """For doctor and status: where vpnoffload's rules are and how to see them."""
    if name == "nft":
        return "nftables tables ip vpnoffload and ip6 vpnoffload (see: nft list table ip vpnoffload)"
    return "legacy iptables through python-iptables (see: iptables-legacy-save)"

