"""Kernel settings under /proc/sys: plan only what differs, remember the old values.

Keys use sysctl(8) notation (``net.ipv4.conf.vpnoffload0.rp_filter``); a dot
inside a device name is written as ``/`` (``net.ipv4.conf.eth0/100.rp_filter``),
which :func:`conf_key` does for you. Every function takes ``proc_root`` so unit
tests run on a temp directory. /proc/sys/net shows the network namespace of
the process reading it, so run inside ``ip netns exec`` to act on a namespace.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path

from vpnoffload.errors import BackendError
from vpnoffload.model import TUNNEL_DEVICE
from vpnoffload.plan import Action

PROC_SYS = Path("/proc/sys")


def conf_key(device: str, setting: str) -> str:
    """The per-device IPv4 key, e.g. ``conf_key("eth0.100", "rp_filter")``."""
    return f"net.ipv4.conf.{device.replace('.', '/')}.{setting}"


def conf6_key(device: str, setting: str) -> str:
    """The per-device IPv6 key, e.g. ``conf6_key("eth0", "accept_ra")``."""
    return f"net.ipv6.conf.{device.replace('.', '/')}.{setting}"


def vps_sysctls() -> dict[str, str]:
    """The VPS forwards DNATed visitors into the tunnel and the replies back out."""
    return {"net.ipv4.ip_forward": "1"}


def vps_ipv6_sysctls(interface: str, proc_root: Path = PROC_SYS) -> dict[str, str]:
    """IPv6 forwarding for services listening on IPv6, without losing the VPS's own route.

    With forwarding on, Linux treats the box as a router: it ignores router
    advertisements on interfaces with ``accept_ra = 1``, and switching
    forwarding on at once deletes the default routes learned from them. A VPS
    that gets its IPv6 default route by SLAAC/RA (many do) would go offline
    over IPv6. ``accept_ra = 2`` means "accept them even when forwarding", so
    it is set on the public interface first (this order is kept by
    :func:`plan_sysctls`) when it is 1 there now; 0 (a static setup) is left
    alone. ``down`` puts both back.
    """
    desired: dict[str, str] = {}
    accept_ra = conf6_key(interface, "accept_ra")
    if read_sysctl(accept_ra, proc_root) == "1":
        desired[accept_ra] = "2"
    desired["net.ipv6.conf.all.forwarding"] = "1"
    return desired


def home_sysctls(device: str = TUNNEL_DEVICE) -> dict[str, str]:
    """Loose reverse-path filtering on the tunnel, for the asymmetric replies.

    Visitors arrive on the tunnel with their real source address, which the
    main table routes out of the LAN: strict rp_filter (1, the default on many
    distributions) drops them. Our policy rule alone already makes the check
    pass (the reverse lookup uses the packet's destination, the home's tunnel
    address, as its source, so it matches ``from <home> lookup 7701`` and finds
    the tunnel), but loose mode keeps visitors working in the moments without
    the rule (during ``up``/``down``) and if someone else's rule shadows ours.

    ``all`` is deliberately left alone: the kernel uses max(all, device), and 2
    is the maximum, so the device's 2 wins whatever ``all`` says, while raising
    ``all`` would loosen every other interface on the box too. The key exists
    only while the tun device does (OpenVPN recreates it with the ``default``
    values), so set it after the tunnel is up.
    """
    return {conf_key(device, "rp_filter"): "2"}


def key_path(key: str, proc_root: Path = PROC_SYS) -> Path:
    parts = [p.replace("/", ".") for p in key.split(".")]
    if any(p in ("", ".", "..") for p in parts):
        raise BackendError(f"{key!r} is not a sysctl key")
    return Path(proc_root, *parts)


def read_sysctl(key: str, proc_root: Path = PROC_SYS) -> str:
    """The current value, whitespace-normalised (multi-value keys use tabs)."""
    try:
        return " ".join(key_path(key, proc_root).read_text().split())
    except OSError as exc:
        raise BackendError(f"cannot read {key}: {_reason(exc, key)}") from exc


def write_sysctl(key: str, value: str, proc_root: Path = PROC_SYS) -> None:
    path = key_path(key, proc_root)
    try:
        # No O_CREAT: a missing key is an error, in /proc and in a test tree alike.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, f"{value}\n".encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise BackendError(f"cannot set {key} = {value}: {_reason(exc, key)}") from exc


def _reason(exc: OSError, key: str) -> str:
    if exc.errno == errno.ENOENT:
        parts = key.split(".")
        if key.startswith(("net.ipv4.conf.", "net.ipv6.conf.")) and len(parts) == 5:
            return f"no such setting (does device {parts[3].replace('/', '.')} exist?)"
        return "no such setting in this kernel"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (run as root)"
    if exc.errno == errno.EROFS:
        return "/proc/sys is read-only here (a container without the right to change it?)"
    if exc.errno == errno.EINVAL:
        return "the kernel rejected the value"
    if exc.errno == errno.EISDIR:
        return "that is a group of settings, not one"
    return exc.strerror or str(exc)


def plan_sysctls(desired: Mapping[str, str], proc_root: Path = PROC_SYS) -> tuple[list[Action], dict[str, str]]:
    """Actions setting each key whose value differs, and the values they replace.

    Persist the returned old values (keeping the oldest on a second ``up``) and
    hand them to :func:`restore_actions` on ``down``. Every key must exist now:
    a missing one raises BackendError naming it. ``net.ipv4.ip_forward`` goes
    first: writing it also rewrites every device's ``forwarding`` and
    ``all.accept_redirects``, so an explicit per-device key must come after it.
    The other keys keep the order of ``desired`` (``accept_ra`` must precede
    ``net.ipv6.conf.all.forwarding``, see :func:`vps_ipv6_sysctls`).
    """
    keys = sorted(desired, key=lambda k: k != "net.ipv4.ip_forward")
    previous: dict[str, str] = {}
    actions: list[Action] = []
    for key in keys:
        old, new = read_sysctl(key, proc_root), " ".join(str(desired[key]).split())
        if old != new:
            previous[key] = old
            actions.append(_set(key, new, old, proc_root))
    return actions, previous


def set_once_present(key: str, value: str, previous: dict[str, str], proc_root: Path = PROC_SYS) -> Action:
    """Set ``key`` to ``value`` when the action runs, for a key that appears only then
    (a setting of the tun device, which exists once OpenVPN is up).

    The old value is read at that moment and put into ``previous`` (unless a
    value is already remembered there, so a re-run keeps the oldest), for
    :func:`restore_actions`. Undo puts the old value back if the key still exists.
    """
    seen: dict[str, str] = {}

    def do() -> None:
        old = read_sysctl(key, proc_root)
        seen["old"] = old
        if old != value:
            previous.setdefault(key, old)
            write_sysctl(key, value, proc_root)

    def undo() -> None:
        if "old" in seen and key_path(key, proc_root).exists():
            write_sysctl(key, seen["old"], proc_root)

    return Action(f"set {key} = {value} (once it exists)", do, undo)


def restore_actions(saved: Mapping[str, str], proc_root: Path = PROC_SYS) -> list[Action]:
    """Put back the values :func:`plan_sysctls` replaced.

    Keys that no longer exist (the tun device went away with OpenVPN, and its
    settings with it) and keys already at their old value are skipped.
    """
    actions: list[Action] = []
    for key, old in saved.items():
        if not key_path(key, proc_root).exists():
            continue
        current = read_sysctl(key, proc_root)
        if current != old:
            actions.append(_set(key, old, current, proc_root, verb="restore"))
    return actions


def _set(key: str, new: str, old: str, proc_root: Path, verb: str = "set") -> Action:
    return Action(
        f"{verb} {key} = {new} (was {old})",
        lambda: write_sysctl(key, new, proc_root),
        lambda: write_sysctl(key, old, proc_root),
    )
