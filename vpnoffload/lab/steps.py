"""The steps of ``vpnoffload lab up`` and of tearing a lab down.

Both ends are set up with vpnoffload's own commands run inside the lab's
namespaces (``ip netns exec <prefix>-vps python -m vpnoffload ...``), exactly
the commands a user runs on two real machines. Teardown runs the user's
``down`` commands first (``up`` may have created the ``vpnoffload`` system user,
which lives outside the namespaces), then deletes the namespaces and the files,
so the machine is left as it was found.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Collection
from pathlib import Path

from vpnoffload import proc, users
from vpnoffload.errors import BackendError, ConfigError, VpnOffloadError
from vpnoffload.lab.netns import ROUTER, Lab, check_prerequisites
from vpnoffload.lab.narrate import Narrator

from vpnoffload.lab.sites import (
    DEMO_COMMANDS,
    HOME_MARKER,
    HOSTNAME,
    KEPT_PAGE,
    LAB_ROOT,
    LabStepError,
    SERVICE,
    STOP_WAIT,
    Sites,
    TUNNEL_SUBNET,
    WATCH_READY_WAIT,
    WEB_PORT,
    describe_reply,
    last_line,
    notify_socket,
    shown_argv,
    start_background,
    uninterruptible,
    vpnoffload,
    wait_ready,
)


# ------------------------------------------------------------------ the steps of `lab up`


def build(lab: Lab, sites: Sites, n: Narrator) -> None:
    n.section(f"Build the lab '{lab.prefix}': four network namespaces on this machine")
    n.note(
        f"  visitor {lab.visitor_address}, vps {lab.vps_address}, home {lab.home_uplink_address}, "
        f"all joined by a router ({lab.namespace(ROUTER)}); no NAT, so every address is real"
    )
    sites.create()
    # Recorded before anything runs: teardown removes the system user only if it was not there.
    sites.update_manifest(prefix=lab.prefix, user_existed=users.exists())
    lab.create()
    n.ok(f"namespaces {', '.join(lab.namespaces.values())}; files in {sites.root}")


def configure_vps(lab: Lab, sites: Sites, n: Narrator) -> None:
    n.section("On the VPS: config, PKI and one offloaded service")
    n.note(f"(each vps# command runs as 'ip netns exec {lab.namespace('vps')} ...')")
    vpnoffload(
        lab, sites, "vps", "init", "--vps-address", lab.vps_address, "--tunnel-subnet", TUNNEL_SUBNET, narrator=n
    )
    vpnoffload(
        lab,
        sites,
        "vps",
        "service",
        "add",
        SERVICE,
        "--listen",
        "80",
        "--target",
        str(WEB_PORT),
        "--check",
        "http:/",
        "--hostname",
        HOSTNAME,
        "--offline-copy",
        KEPT_PAGE,
        narrator=n,
    )
    sites.export.mkdir(mode=0o700, exist_ok=True)
    vpnoffload(lab, sites, "vps", "render", "home", "--out", str(sites.export), narrator=n)


def copy_to_home(sites: Sites, n: Narrator) -> None:
    n.section("Copy the config and the home box's profile to home (on real machines: scp)")
    state = sites.site("home") / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    copies = [(sites.config("vps"), sites.config("home")), (sites.export / "home.ovpn", state / "home.ovpn")]
    for src, dst in copies:
        n.command("you", ["cp", str(src), str(dst)])
        if not src.is_file():
            raise LabStepError(f"copying to home failed: {src} was not written")
        shutil.copyfile(src, dst)
    os.chmod(state / "home.ovpn", 0o600)  # it holds the home box's private key
    n.ok("home has the config (no secrets) and its profile (0600)")


def start_home_site(lab: Lab, sites: Sites, n: Narrator) -> None:
    n.section(f"At home: the web site the VPS will forward to (port {WEB_PORT})")
    argv = [sys.executable, "-P", "-m", "vpnoffload.lab.web", "--port", str(WEB_PORT), "--name", "home"]
    n.command("home", ["python3", "-m", "vpnoffload.lab.web", "--port", str(WEB_PORT), "--name", "home"])
    n.note("  (left running in the background)")
    start_background(lab, sites, "home", "labweb", argv)
    if not lab.wait_tcp("home", "127.0.0.1", WEB_PORT, timeout=5):
        raise LabStepError(f"the demo web site did not start listening on port {WEB_PORT} at home within 5 s")
    n.ok(f"home serves http://127.0.0.1:{WEB_PORT}/")


def bring_up(lab: Lab, sites: Sites, n: Narrator) -> None:
    n.section("Bring both ends up")
    vpnoffload(lab, sites, "vps", "up", "vps", narrator=n)
    vpnoffload(lab, sites, "home", "up", "home", narrator=n)


def start_watchdog(lab: Lab, sites: Sites, n: Narrator, available: bool) -> bool:
    """Start ``vpnoffload watch`` on the VPS if this version has it; True if it runs."""
    n.section("On the VPS: the watchdog that swaps in the friendly page")
    if not available:
        n.warn("'vpnoffload watch' is not available in this version: no friendly page when home is down")
        return False
    argv = [sys.executable, "-P", "-m", "vpnoffload", "-c", str(sites.config("vps")), "watch"]
    n.command("vps", shown_argv(sites, "vps", "watch"))
    n.note("  (left running in the background; on a real VPS systemd runs it as vpnoffload-watch)")
    # Wait for READY=1 as systemd would: it is sent after the first round of checks,
    # before which a pulled cable would go unnoticed.
    with notify_socket(sites.root / "notify.sock") as sock:
        child = start_background(
            lab,
            sites,
            "vps",
            "watch",
            argv,
            log=sites.watch_log,
            env={**os.environ, "NOTIFY_SOCKET": sock.getsockname()},
        )
        ready = wait_ready(sock, child, WATCH_READY_WAIT)
    if child.poll() is not None:
        raise LabStepError(
            f"'vpnoffload watch' exited at once (status {child.returncode}): {last_line(sites.watch_log)}"
        )
    if not ready:
        raise LabStepError(
            f"'vpnoffload watch' did not report ready within {WATCH_READY_WAIT:g} s (log: {sites.watch_log})"
        )
    n.ok(f"watchdog running (log: {sites.watch_log})")
    return True


def check_visitor(lab: Lab, n: Narrator) -> None:
    """The visitor gets home's page through the VPS, and home sees the visitor's own address."""
    n.section("The visitor asks the VPS for the site")
    url = f"http://{lab.vps_address}/"
    n.command("visitor", ["curl", url])
    status, body = lab.http_get("visitor", url, timeout=5)
    if status != 200 or HOME_MARKER not in body:
        raise LabStepError(f"the visitor did not get home's page from {url}: {describe_reply(status, body)}")
    n.output(body)
    n.command("visitor", ["curl", f"{url}whoami"])
    status, body = lab.http_get("visitor", f"{url}whoami", timeout=5)
    seen = body.strip()
    if status != 200 or seen != lab.visitor_address:
        raise LabStepError(f"home saw the visitor as {seen or describe_reply(status, body)}, not {lab.visitor_address}")
    n.output(body)
    n.ok(f"served from home, and home sees the visitor's real address {seen} (forwarded, not proxied)")


def run_up(
    lab: Lab, sites: Sites, n: Narrator, commands: Collection[str] | None = None, *, keep_on_failure: bool = False
) -> bool:
    """Everything ``lab up`` does; on failure (or Ctrl-C) the lab is torn down again
    unless ``keep_on_failure``. Returns whether the watchdog runs.
    """
    commands = DEMO_COMMANDS if commands is None else commands
    try:
        build(lab, sites, n)
        configure_vps(lab, sites, n)
        copy_to_home(sites, n)
        start_home_site(lab, sites, n)
        bring_up(lab, sites, n)
        watching = start_watchdog(lab, sites, n, "watch" in commands)
        check_visitor(lab, n)
    except BaseException as exc:
        if not keep_on_failure:
            teardown_after(exc, lab, sites, n)
        raise
    return watching


def how_to_poke(lab: Lab, sites: Sites, n: Narrator, commands: Collection[str] = ()) -> None:
    n.section(f"The lab '{lab.prefix}' is up")
    n.note("Visit the site as the visitor:")
    n.command("you", ["ip", "netns", "exec", lab.namespace("visitor"), "curl", f"http://{lab.vps_address}/"])
    if "status" in commands:
        n.note("See what the VPS thinks:")
        n.command("you", ["ip", "netns", "exec", lab.namespace("vps"), *shown_argv(sites, "vps", "status")])
    n.note("Pull home's cable (and 'up' to plug it back in):")
    n.command("you", ["ip", "-n", lab.namespace(ROUTER), "link", "set", lab.home_cable, "down"])
    n.note("Remove everything when done:")
    n.command("you", ["vpnoffload", "lab", "down", "--prefix", lab.prefix])


# ------------------------------------------------------------------ opening and tearing down


def open_lab(prefix: str, base: Path = LAB_ROOT) -> tuple[Lab, Sites]:
    """The lab to build: checks prerequisites and that no lab of that name is up."""
    lab = Lab(prefix)  # validates the prefix before it names a directory
    check_prerequisites()
    sites = Sites.for_prefix(prefix, base)
    if lab.exists():
        raise ConfigError(f"a lab named {prefix} is already up; run 'vpnoffload lab down --prefix {prefix}' first")
    if sites.root.exists():
        _forget(sites, None)  # files of a lab whose namespaces are gone (a crash, a reboot)
    return lab, sites


def run_down(prefix: str, n: Narrator, base: Path = LAB_ROOT) -> bool:
    """``lab down``: remove the lab and its files. False if there was nothing to remove."""
    lab = Lab(prefix)
    check_prerequisites()
    sites = Sites.for_prefix(prefix, base)
    if not lab.exists() and not sites.root.exists():
        n.note(f"no lab named {prefix} is up; nothing to do")
        return False
    teardown(lab, sites, n)
    return True


def teardown(lab: Lab, sites: Sites, n: Narrator) -> None:
    """Stop what the lab started, run the user's ``down`` on both ends, delete everything.

    Ctrl-C is ignored meanwhile so a second one cannot leave half a lab. The
    ``down`` commands are best effort (the namespaces go anyway); only a lab
    that cannot be deleted raises.
    """
    n.section(f"Tear down the lab '{lab.prefix}'")
    with uninterruptible():
        alive = lab.exists()
        if alive:
            _stop_background(lab, sites, n)
            for host in ("home", "vps"):
                if sites.config(host).is_file():
                    try:
                        vpnoffload(lab, sites, host, "down", host, narrator=n)
                    except BackendError as exc:  # a timeout: the namespace is deleted anyway
                        n.warn(str(exc))
                    except LabStepError as exc:
                        n.warn(f"{exc} (continuing: the namespaces are deleted anyway)")
        lab.destroy()
        _forget(sites, n)
    n.ok(f"lab {lab.prefix} removed: no namespace, process or file of it is left")


def teardown_after(exc: BaseException, lab: Lab, sites: Sites, n: Narrator) -> None:
    """Tear down after a failed step; a teardown problem is attached to the original error."""
    try:
        teardown(lab, sites, n)
    except VpnOffloadError as cleanup:
        exc.add_note(f"tearing the lab down also failed: {cleanup}")


def _stop_background(lab: Lab, sites: Sites, n: Narrator) -> None:
    """SIGTERM the watchdog and web site first, so nothing changes rules while ``down`` runs."""
    for entry in sites.load_manifest().get("background", []):
        pid, host = int(entry["pid"]), str(entry["host"])
        if not _in_namespace(pid, lab.namespace(host)):
            continue  # gone already, or the pid now belongs to someone else
        n.command(host, ["kill", str(pid)])
        n.note(f"  (stops {_STOP_NOTES.get(entry.get('what'), entry.get('what', 'it'))})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        while _in_namespace(pid, lab.namespace(host)) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Whatever is still running is killed with the namespace (Lab.destroy).


_STOP_NOTES = {
    "watch": "the watchdog; on a real VPS: systemctl stop vpnoffload-watch",
    "labweb": "the demo web site",
}


def _in_namespace(pid: int, namespace: str) -> bool:
    try:
        result = proc.run(["ip", "netns", "identify", str(pid)], timeout=5, check=False)
    except VpnOffloadError:
        return False
    return result.ok and namespace in result.stdout.split()


def _forget(sites: Sites, n: Narrator | None) -> None:
    """Remove the lab's files, and the system user if the lab's ``up`` created it."""
    manifest = sites.load_manifest()
    # `down vps` deletes the user it created; this covers a down that failed or never ran.
    if manifest.get("user_existed") is False and users.exists():
        users.delete()
        if n is not None:
            n.note(f"deleted system user {users.RUN_AS} (the lab created it)")
    sites.remove()
