"""Plans that open (and close) vpnoffload's way through the host's own firewall, and the watchdog's reconcile.

:class:`HostFirewall` reads the host (:func:`read_host`), places the openings
(:func:`vpnoffload.firewall.host.openings.choose`) and compares them with what is
there and what the record says vpnoffload added: the difference is a list of
:class:`~vpnoffload.plan.Action` with exact undo. Each opening added is
recorded (``Record.host_openings``) as a plain dict::

    {"mechanism": "nft" | "iptables-nft" | "ufw" | "firewalld", "family": "inet", "table": "filter",
     "chain": "input", "handle": 12, "opening": {...Opening fields...}}

so ``down`` removes exactly those, and :func:`reconcile` (run by the watchdog
every few seconds) puts back the ones a host reload wiped.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from vpnoffload import runfiles
from vpnoffload.firewall.host import docker as host_docker, firewalld as host_firewalld, nft as host_nft, \
    ufw as host_ufw
from vpnoffload.firewall.host.mechanism import Live, Mechanism
from vpnoffload.firewall.host.openings import Host, Opening, Placement, choose, detect
from vpnoffload.plan import Action
from vpnoffload.proc import run

log = logging.getLogger(__name__)
#: Where the watchdog's reconcile says what it put back on the VPS (read by ``status``).
STATUS_FILE = runfiles.HOSTFW_STATUS


def status_file(end: str) -> str:
    """What the reconcile of ``end`` ("vps", or "home-NAME" for the home keeper's) put back."""
    return STATUS_FILE if end == "vps" else f"hostfw-{end}.json"


def legacy_tables(proc_net: Path = Path("/proc/net")) -> tuple[str, ...]:
    """Legacy x_tables registered in this network namespace ("filter", "nat6", ...)."""
    found = []
    for name, suffix in (("ip_tables_names", ""), ("ip6_tables_names", "6")):
        try:
            found += [t.strip() + suffix for t in (proc_net / name).read_text().split() if t.strip()]
        except OSError:
            continue
    return tuple(found)


def read_host() -> tuple[Host, dict[str, Any]]:
    """The host's firewall now, and the ruleset it was read from."""
    ruleset = host_nft.list_ruleset() if shutil.which("nft") else {"nftables": []}
    firewalld = host_firewalld.running()
    bindings, default = host_firewalld.zones() if firewalld else ((), "public")
    return detect(ruleset, ufw=host_ufw.active(), firewalld=firewalld, legacy_tables=legacy_tables(),
                  firewalld_zones=bindings, firewalld_default=default), ruleset


def entry_of(place: Placement, handle: int | None = None) -> dict[str, Any]:
    return {"mechanism": place.mechanism, "family": place.family, "table": place.table, "chain": place.chain,
            "handle": handle, "opening": place.opening.to_dict()}


def placement_of(entry: dict[str, Any]) -> Placement:
    return Placement(entry["mechanism"], entry["family"], entry["table"], entry["chain"],
                     Opening.from_dict(entry["opening"]))


#: Every mechanism, by the name a record entry carries.
MECHANISMS: dict[str, Mechanism] = {m.name: m for m in (host_nft.MECHANISM, host_docker.MECHANISM, host_ufw.MECHANISM,
                                                         host_firewalld.MECHANISM)}


def _add(place: Placement, entries: list[dict[str, Any]]) -> None:
    """Make the opening and append its record entry (not for a rule that was not ours to record)."""
    ours, handle = MECHANISMS[place.mechanism].add(place)
    if ours:
        entries.append(entry_of(place, handle))


def _remove(entry: dict[str, Any]) -> None:
    """Remove the recorded opening if it is still there (and still ours); never anything else."""
    place = placement_of(entry)
    MECHANISMS[place.mechanism].remove(place, entry.get("handle"))


def _same(entry: dict[str, Any], place: Placement) -> bool:
    return placement_of(entry) == place


class HostFirewall:
    """The real host firewall (``Backends.host``); tests pass a ``reader`` returning a recorded ruleset."""

    def __init__(self, reader: Any = read_host) -> None:
        self.reader = reader

    def plan_open(self, openings: list[Opening], rec: Any) -> list[Action]:
        """Actions that make exactly ``openings`` where the host would drop them; record-keeping on ``rec``."""
        host, ruleset = self.reader()
        rec.host_found = host.found()
        live = Live(ruleset)
        places = choose(openings, host)
        actions: list[Action] = []
        for entry in [e for e in rec.host_openings if not any(_same(e, p) for p in places)]:
            actions.append(_close_action(entry, rec))  # no longer needed (config changed, host changed)
        for place in places:
            recorded = any(_same(e, place) for e in rec.host_openings)
            mechanism = MECHANISMS[place.mechanism]
            if mechanism.present(place, live):
                if not recorded and mechanism.adopts:  # ours by its comment: adopt it so down removes it
                    entry = entry_of(place, mechanism.handle(place, live))
                    actions.append(Action(f"remember {place.summary}", functools.partial(rec.host_openings.append, entry),
                                          functools.partial(rec.host_openings.remove, entry)))
                continue
            actions.append(_open_action(place, rec))
        return actions

    def plan_close(self, rec: Any) -> list[Action]:
        """Actions that remove every opening ``rec`` says vpnoffload made, newest first."""
        return [_close_action(entry, rec) for entry in reversed(list(rec.host_openings))]


def _open_action(place: Placement, rec: Any) -> Action:
    made: list[dict[str, Any]] = []

    def do() -> None:
        made.clear()
        _add(place, made)
        rec.host_openings = [e for e in rec.host_openings if not _same(e, place)] + made

    def undo() -> None:
        for entry in made:
            _remove(entry)
            if entry in rec.host_openings:
                rec.host_openings.remove(entry)

    return Action(place.summary, do, undo)


def _close_action(entry: dict[str, Any], rec: Any) -> Action:
    place = placement_of(entry)
    restored: list[dict[str, Any]] = []

    def do() -> None:
        _remove(entry)
        if entry in rec.host_openings:
            rec.host_openings.remove(entry)

    def undo() -> None:
        restored.clear()
        _add(place, restored)
        rec.host_openings.extend(restored)

    return Action(f"close in {place.where}: {place.opening.match_text()} ({place.opening.why}; opened by up)", do, undo)


# ------------------------------------------------------------------ the watchdog's reconcile


def missing(entries: list[dict[str, Any]], ruleset: dict[str, Any]) -> list[dict[str, Any]]:
    """Recorded openings a host reload wiped and whose chain still exists (ufw puts its own back)."""
    live = Live(ruleset)
    return [entry for entry in entries
            if MECHANISMS[(place := placement_of(entry)).mechanism].lost(place, live)]


#: The reconcile child's exit status when it could not finish (the run lock held, firewall-cmd mid-restart):
#: the watchdog looks again at its next round even if the ruleset did not change.
TRY_AGAIN = 4


class TryAgain(Exception):
    """The reconcile could not look now; its text (possibly empty) is for the watchdog's log."""


def reconcile(run_dir: Path, lock: Path, end: str = "vps") -> list[str] | None:
    """Put back the openings of ``run_dir/END.json`` that the host's firewall lost; what was put back
    (None: the record holds no opening, so there is nothing to watch). ``end`` is "vps" (the
    watchdog's) or "home-NAME" (the home keeper's).

    One ``nft -j list ruleset`` (plus one ``iptables-nft-save`` per family
    with iptables-nft openings, and ``firewall-cmd`` queries for firewalld's).
    Raises :class:`TryAgain` while ``up``/``down`` holds the run lock, or when
    the host changed under it (firewalld restarting): the next round tries again.
    """
    from vpnoffload.errors import VpnOffloadError
    from vpnoffload.locks import held

    rec_path = run_dir / runfiles.record(end)
    if not rec_path.exists():
        return None
    try:
        with held(str(lock), 0.0, lambda: "busy"):
            try:
                return _put_back(run_dir, rec_path, end)
            except VpnOffloadError as exc:
                raise TryAgain(f"host firewall check failed: {exc}") from None
    except VpnOffloadError:
        raise TryAgain("") from None  # up/down holds the run lock: it makes the host right itself


def _put_back(run_dir: Path, rec_path: Path, end: str) -> list[str] | None:
    from vpnoffload import record as record_mod

    rec = record_mod.load(rec_path)
    if not rec.host_openings:
        return None
    # Each nft write below takes the nftables lock itself (firewall/nftlock.py); holding it around
    # the whole repair would hold up a failover's swap for as long as firewall-cmd takes.
    gone = missing(rec.host_openings, host_nft.list_ruleset())
    restored = []
    for entry in gone:
        place = placement_of(entry)
        made: list[dict[str, Any]] = []
        _add(place, made)
        rec.host_openings = [e for e in rec.host_openings if e is not entry] + made
        restored.append(place.summary.replace("open in", "reopened in", 1))
    if restored:
        record_mod.save(rec_path, rec)
        _note(run_dir, restored, end)
    return restored


def main(argv: list[str]) -> int:
    """``python -I -m vpnoffload.firewall.host.plan --run DIR [--end home-NAME]``: the reconcile child
    of the watchdog (or, with ``--end``, of the home keeper).

    Prints one line per opening put back; exits 3 when ``up`` recorded none,
    4 (:data:`TRY_AGAIN`) when it could not look now.
    """
    from vpnoffload.exits import run_main
    from vpnoffload.lean import options

    def body() -> int:
        opts = options.parse(argv, values=("--run", "--end"), required=("--run",))
        run_dir, end = Path(str(opts["--run"])), str(opts.get("--end", "vps"))
        if end != "vps" and not end.startswith("home-"):
            from vpnoffload.errors import ConfigError

            raise ConfigError(f"--end {end!r}: use vps or home-NAME", field="--end")
        try:
            restored = reconcile(run_dir, run_dir / runfiles.LOCK, end)
        except TryAgain as exc:
            if str(exc):
                print(exc)
            return TRY_AGAIN
        if restored is None:
            return 3
        for line in restored:
            print(line)
        return 0

    return run_main(body, prog="vpnoffload-reconcile")


def _note(run_dir: Path, restored: list[str], end: str = "vps") -> None:
    path = run_dir / status_file(end)
    data = read_status(run_dir, end)
    data["restored"] = (data.get("restored", []) + [{"at": time.time(), "what": restored}])[-10:]
    data["count"] = int(data.get("count", 0)) + len(restored)
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        log.error("cannot write %s: %s", path, exc)


def read_status(run_dir: Path, end: str = "vps") -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((run_dir / status_file(end)).read_text())
        return data
    except (OSError, ValueError):
        return {}


def status_report(run_dir: Path, end: str | None = None) -> dict[str, Any]:
    """What ``status`` shows of the host's firewall: what ``up`` found there, what it opened,
    and what the watchdog (on the VPS) or the home keeper had to put back. Reads files only.

    Without ``end``: the VPS's record, or on a home box (no ``vps.json``) its first home's.
    """
    from vpnoffload import record as record_mod
    from vpnoffload.errors import VpnOffloadError

    if end is None:
        homes = sorted(p.stem for p in run_dir.glob("home-*.json") if not p.stem.startswith("home-keeper"))
        end = homes[0] if homes and not (run_dir / runfiles.record("vps")).exists() else "vps"
    by = "the watchdog" if end == "vps" else "the home keeper"
    try:
        rec = record_mod.load(run_dir / runfiles.record(end))
    except VpnOffloadError:
        return {"found": [], "opened": [], "reopened": 0, "last_reopened": None, "by": by}
    noted = read_status(run_dir, end) if rec.host_openings else {}
    last = (noted.get("restored") or [None])[-1]
    return {"found": list(rec.host_found), "opened": [placement_of(e).summary for e in rec.host_openings],
            "reopened": int(noted.get("count", 0)), "last_reopened": last, "by": by}


def render_status(report: dict[str, Any], ago: Any) -> list[str]:
    """The status table's lines for :func:`status_report` (``ago`` formats a timestamp)."""
    lines = [f"host firewall: {'; '.join(report['found']) or 'not examined (run up vps)'}"]
    lines += [f"  {line.replace('open in', 'opened in', 1)}" for line in report["opened"]]
    if report["reopened"]:
        last = report["last_reopened"] or {}
        lines.append(f"  reopened by {report.get('by', 'the watchdog')} after a host reload: "
                     f"{report['reopened']} rule(s), last "
                     f"{ago(last.get('at'))}")
    return lines


def home_box_report(run_dir: Path) -> dict[str, Any] | None:
    """``status`` on a home box (``up home`` ran here, no VPS end): the host firewall there and
    whether the home keeper, which puts its openings back, runs now. None: not a home box."""
    homes = sorted(p.stem for p in run_dir.glob("home-*.json"))
    if not homes:
        return None
    from vpnoffload.homekeeper import keeper_pid, restart_unit_of, watch_only

    found = []
    for end in homes:
        pid = keeper_pid(str(run_dir), end.removeprefix("home-"))
        # "firewall": the systemd unit's keeper (systemd runs the client); "client and firewall": the daemon's.
        mode = None if pid is None else "firewall" if watch_only(pid) else "client and firewall"
        # The unit's keeper has systemd restart this end when the client is gone (an older unit's does not).
        restarts = restart_unit_of(pid) if mode == "firewall" and pid is not None else None
        found.append({"name": end.removeprefix("home-"), "keeper_pid": pid, "keeper_mode": mode,
                      "keeper_restarts_unit": restarts, "host_firewall": status_report(run_dir, end)})
    return {"end": "home", "homes": found}


def render_home_box(report: dict[str, Any], ago: Any) -> list[str]:
    lines = ["home box: the VPS's tunnel and services are shown by 'vpnoffload status' on the VPS"]
    for home in report["homes"]:
        pid = home["keeper_pid"]
        if pid is None:
            state = ("NOT running: nothing puts the openings back after a host firewall reload (under systemd: "
                     "'vpnoffload install-service home' runs it; without: 'vpnoffload up home')")
        elif home.get("keeper_mode") == "firewall" and home.get("keeper_restarts_unit"):
            state = (f"running (pid {pid}, under systemd): it keeps the host firewall's openings in place "
                     f"and has systemd restart {home['keeper_restarts_unit']} when the OpenVPN client is gone")
        elif home.get("keeper_mode") == "firewall":
            state = (f"running (pid {pid}, under systemd): it keeps the host firewall's openings in place "
                     "(systemd runs the OpenVPN client)")
        else:
            state = f"running (pid {pid}): it keeps the OpenVPN client and the host firewall's openings in place"
        lines.append(f"home {home['name']}: keeper {state}")
        lines += render_status(home["host_firewall"], ago)
    return lines


def _local_interface(address: str) -> str | None:
    """The interface holding ``address`` here, or None (this is not that host)."""
    result = run(["ip", "-j", "addr", "show"], check=False, timeout=10)
    try:
        links = json.loads(result.stdout or "[]")
    except ValueError:
        return None
    for link in links:
        if any(a.get("local") == address for a in link.get("addr_info", [])):
            name = link.get("ifname")
            return str(name) if name is not None else None
    return None


def doctor_findings(config: Any, home_device: str | None = None) -> list[tuple[str, str, str, str]]:
    """(level, check, detail, hint) lines for ``doctor``: the host's firewall and what ``up`` would open in it.

    The end is told by the address: the VPS holds ``vps.address``; anywhere
    else is taken for the first home box.
    """
    from vpnoffload.errors import VpnOffloadError
    from vpnoffload.firewall.host.openings import home_openings, vps_openings

    try:
        host, _ = read_host()
    except VpnOffloadError as exc:
        return [("warn", "host firewall", f"cannot read the host's firewall: {exc}", "apt-get install nftables")]
    out = [("ok", "host firewall", "; ".join(host.found()), "")]
    if host.firewalld:
        out.append(("ok", "firewalld", f"firewalld runs (default zone {host.firewalld_default}): vpnoffload opens "
                    "its way through firewall-cmd, in the runtime configuration only (never --permanent); "
                    "after a firewall-cmd --reload or a restart of firewalld the watchdog puts it back "
                    "(within about 5 s)", ""))
    if config is None:
        return out
    interface = _local_interface(str(config.vps.bind_address))  # 1:1 NAT: the VPS holds local_address
    if interface is not None:
        end, openings = "up vps", vps_openings(config, interface)
    else:
        end, openings = (f"up home ({config.default_home.name})",
                         home_openings(config, config.default_home.name, home_device))
    places = choose(openings, host)
    if places:
        out.append(("ok", "host firewall openings", f"{end} will open {len(places)}: "
                    + "; ".join(p.summary.removeprefix("open ") for p in places), ""))
    else:
        out.append(("ok", "host firewall openings", f"{end} needs no opening: nothing here drops what it needs", ""))
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
