"""The sample outputs in README.md and docs/*.md, made by the real CLI on a fake host.

A fenced block right after a line ``<!-- sample: ID -->`` must be exactly what
``SAMPLES[ID]()`` prints: the real ``vpnoffload`` command (typer's CliRunner)
on a fixed, fake Debian 12 VPS, where only the OS layer is faked (root, the
``openvpn``/``iptables`` binaries, /proc, the host's nftables ruleset, the
watchdog's pid) and the clock is fixed, so the text never depends on the
machine or the minute. ``tests/unit/test_doc_samples.py`` compares; after a
change to what a command prints, rewrite the blocks with

    .venv/bin/python -m tests.docsamples --write

and read the diff: it is what a user now sees.
"""

from __future__ import annotations

import re
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARK = re.compile(r"^<!-- sample: (?P<id>[a-z0-9-]+) -->\n(?P<fence>```[a-z]*)\n(?P<body>.*?)^```$", re.S | re.M)

#: The fixed "now" of every sample (2026-11-25 18:37:21 UTC) and the watchdog's pid.
NOW = 1795631841.0
PID = 30804
CONNECTED_SINCE = "2026-11-25 18:37:16"

VPS_CONFIG = """\
[vps]
address = "203.0.113.10"

[homes.home]
address = "10.88.0.2"

[services.blog]
listen = 80
target = 8080
check = "http:/"
hostname = "blog.example.org"
"""

PROXY_SERVICE = """
[services.shop]
listen = 443
target = 8080
hostname = "shop.example.org"
via = "proxy"
"""


# ------------------------------------------------------------------ running the CLI


def cli(*args: str) -> str:
    """``vpnoffload ARGS`` through typer's runner: what the user reads (stdout and stderr)."""
    from vpnoffload.cli.app import app

    # The user's own settings do not leak in (None removes a variable for the run).
    result = CliRunner().invoke(app, list(args), env={"VPNOFFLOAD_CONFIG": None, "VPNOFFLOAD_STATE_DIR": None})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.output.rstrip("\n")


def shown(args: list[str], output: str) -> str:
    """A terminal transcript: the command as typed (without -c), then its output."""
    return "$ vpnoffload " + " ".join(args) + "\n" + output


# ------------------------------------------------------------------ the fake host


class _Present(str):
    """A path that exists (``/dev/net/tun``)."""

    def exists(self) -> bool:
        return True


def _fake_run(argv: list[str], **_: object) -> types.SimpleNamespace:
    """``openvpn --version`` and ``iptables --version`` as Debian 12 answers them."""
    name = Path(argv[0]).name
    out = {"openvpn": "OpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)] [LZO] [LZ4] [EPOLL] [PKCS11] [MH/PKTINFO]",
           "iptables": "iptables v1.8.9 (nf_tables)"}.get(name, "")
    return types.SimpleNamespace(returncode=0, stdout=out + "\n", stderr="")


@contextmanager
def debian_vps(mp: pytest.MonkeyPatch, scratch: Path) -> Iterator[None]:
    """A fresh Debian 12 VPS as root: OpenVPN 2.6, the legacy tables (nat, filter), iptables-nft
    as the ``iptables`` command, no host firewall, no IPv6 prefix, no sysctl file of note."""
    import shutil

    from vpnoffload import proc
    from vpnoffload.deploy import doctor
    from vpnoffload.firewall import choose, iptc
    from vpnoffload.firewall.host import openings, plan

    which = {"openvpn": "/usr/sbin/openvpn", "iptables": "/usr/sbin/iptables"}
    mp.setattr(shutil, "which", lambda name, *a, **k: which.get(name))
    mp.setattr("vpnoffload.watch.flows.conntrack_binary", lambda: "/usr/sbin/conntrack")
    mp.setattr("os.geteuid", lambda: 0)
    mp.setattr(proc, "run", _fake_run)
    mp.setattr(doctor.check_tun, "__defaults__", (_Present("/dev/net/tun"),))
    # No tunnel yet and a kernel without the ovpn module (Debian 12's 6.1), whatever this machine has.
    mp.setattr(doctor.check_dco, "__defaults__", (scratch / "net", scratch / "module", scratch / "lib-modules"))
    mp.setattr(choose, "legacy_tables_available", lambda *a, **k: True)
    mp.delenv(choose.ENV, raising=False)  # the backend is chosen as on a host nobody forced
    mp.setattr(iptc.IptcBackend, "read", lambda self: None)
    forwarding, ipv6 = doctor.check_forwarding_config, doctor.check_ipv6
    mp.setattr(doctor, "check_forwarding_config", lambda: forwarding((str(scratch / "sysctl.d"),)))
    mp.setattr(doctor, "check_ipv6", lambda config: ipv6(config, scratch / "if_inet6"))
    host = openings.detect({"nftables": []}, legacy_tables=("nat", "filter"))
    mp.setattr(plan, "read_host", lambda: (host, {"nftables": []}))
    yield


def _status_file(path: Path, connected: bool = True) -> None:
    """OpenVPN's status-version 3 file, as the server writes it every 2 s."""
    import os

    head = ["Common Name", "Real Address", "Virtual Address", "Virtual IPv6 Address", "Bytes Received",
            "Bytes Sent", "Connected Since", "Connected Since (time_t)", "Username", "Client ID", "Peer ID",
            "Data Channel Cipher"]
    row = ["home", "192.0.2.66:51095", "10.88.0.2", "", "51200", "48800", CONNECTED_SINCE, str(int(NOW) - 5),
           "UNDEF", "0", "0", "AES-256-GCM"]
    lines = ["TITLE\tOpenVPN 2.6.14", "HEADER\tCLIENT_LIST\t" + "\t".join(head)]
    if connected:
        lines.append("CLIENT_LIST\t" + "\t".join(row))
    path.write_text("\n".join(lines + ["END"]) + "\n")
    os.utime(path, (NOW, NOW))


def _watch_state(run: Path, services: list[dict[str, object]]) -> None:
    """What the watchdog publishes every round: its services, each home's last answer through the
    tunnel (it answered this round while any service is healthy), OpenVPN's live client list."""
    from vpnoffload.watchfile import write_state

    answered = any(s["healthy"] for s in services)
    client = {"real_address": "192.0.2.66:51095", "since": CONNECTED_SINCE, "since_time": int(NOW) - 3600,
              "bytes_received": 183004, "bytes_sent": 2201145}
    write_state(run / "watch.json", {
        "pid": PID, "updated": NOW - 0.3, "interval": 0.5,
        "homes": {"home": {"answered": answered, "last_answer": NOW - 0.3 if answered else NOW - 4.2}},
        "openvpn": {"clients": {"home": client}, "read_at": NOW - 0.3}, "services": services})


def _seen(name: str, state: str, active: str | None, healthy: bool, latency: float | None, detail: str,
          reason: str, last_change: float, swaps: int, last_check: float = NOW - 1) -> dict[str, object]:
    return {"name": name, "state": state, "active": active, "healthy": healthy, "last_check": last_check,
            "latency": latency, "detail": detail, "reason": reason, "last_change": last_change, "swaps": swaps}


@contextmanager
def vps_state(scratch: Path, mp: pytest.MonkeyPatch, config: str, services: list[dict[str, object]]) -> Iterator[Path]:
    """The VPS's config and state dir after `up vps`, with a watchdog running: the config path."""
    from vpnoffload import record, status, tunnel, watchfile
    from vpnoffload.firewall.host import openings

    cfg = scratch / "vpnoffload.toml"
    cfg.write_text(config)
    run = scratch / "state" / "run"
    (scratch / "state" / "server").mkdir(parents=True)
    run.mkdir()
    _status_file(run / "openvpn-server.status")
    _watch_state(run, services)
    found = openings.detect({"nftables": []}, legacy_tables=("nat", "filter")).found()
    record.save(run / "vps.json", record.Record(sysctl={"net.ipv4.ip_forward": "0"}, host_found=found))
    mp.setattr(status, "time", types.SimpleNamespace(time=lambda: NOW))
    mp.setattr(watchfile, "watch_pid", lambda paths: PID)
    mp.setattr(tunnel, "server_running", lambda paths: True)
    yield cfg


# ------------------------------------------------------------------ the samples


def _scratch() -> Iterator[tuple[pytest.MonkeyPatch, Path]]:
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory(prefix="vpnoffload-sample-") as tmp:
        yield mp, Path(tmp)


def doctor_fresh() -> str:
    """`doctor` on a fresh Debian 12 VPS before `init`."""
    for mp, tmp in _scratch():
        with debian_vps(mp, tmp):
            return shown(["doctor"], cli("-c", str(tmp / "none.toml"), "doctor"))
    raise AssertionError("unreachable")


HEALTHY = [_seen("blog", "forwarding", "home", True, 0.0052, "http 200", "", NOW - 3, 0, NOW - 0.3)]
FAILING = [_seen("blog", "fallback", None, False, 0.5004, "connect: timed out", "home unreachable", NOW - 3, 1,
                 NOW - 0.3),
           _seen("shop", "fallback", None, False, 0.5004, "connect: timed out", "home unreachable", NOW - 3, 1,
                 NOW - 0.3)]


def _status(config: str, services: list[dict[str, object]], *args: str) -> str:
    for mp, tmp in _scratch():
        with vps_state(tmp, mp, config, services) as cfg:
            return shown(["status", *args], cli("-c", str(cfg), "status", *args))
    raise AssertionError("unreachable")


def status_healthy() -> str:
    return _status(VPS_CONFIG, HEALTHY)


def status_failing() -> str:
    return _status(VPS_CONFIG + PROXY_SERVICE, FAILING)


def status_json() -> str:
    return _status(VPS_CONFIG, HEALTHY, "--json").split("\n", 1)[1]


def _error(config: str, *args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="vpnoffload-sample-") as tmp:
        cfg = Path(tmp) / "vpnoffload.toml"
        cfg.write_text(config)
        return cli("-c", str(cfg), *args)


def error_port() -> str:
    args = ["service", "add", "web", "--listen", "70000", "--target", "8080"]
    return shown(args, _error(VPS_CONFIG, *args))


def error_unknown_key() -> str:
    return _error(VPS_CONFIG + '\n[services.a]\nlisten = 8000\ntarget = 8000\nbogus = 1\n', "service", "list")


# ------------------------------------------------------------------ a home box behind two VPSes

HOME_KEEPER_PID, HOME_CLIENT_PID = 812, 790
SECOND_VPS_CONFIG = """\
[vps]
address = "203.0.113.20"

[tunnel]
subnet = "10.89.0.0/24"

[homes.home]
address = "10.89.0.2"

[services.blog]
listen = 80
target = 8080
check = "http:/"
hostname = "blog.example.org"
"""


def _home_end(config: Path, text: str, slot: int, log: str, last_visitor: float) -> None:
    """A config on the home box after its `up home`: the record (with the tunnel slot and the
    host firewall it found), the OpenVPN client's log, the newest visitor an earlier status saw."""
    from vpnoffload import record
    from vpnoffload.firewall.host import openings
    from vpnoffload.hometunnels import Slot

    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    run = config.parent / "state" / "run"
    run.mkdir(parents=True)
    found = openings.detect({"nftables": []}, legacy_tables=("nat", "filter")).found()
    record.save(run / "home-home.json", record.Record(sysctl={"net.ipv4.conf.vpnoffload0.rp_filter": "1"},
                                                      host_found=found, slot=slot))
    (run / f"openvpn-{Slot(slot).tunnel_name('home')}.log").write_text(log)
    (run / "last-visitor").write_text(f"{last_visitor:.0f}\n")


def status_home() -> str:
    """`status` on a home box that serves two VPSes: the first tunnel up, the second one's VPS
    gone silent (its client is reconnecting), no visitor connected right now."""
    from vpnoffload import homestatus, runfiles

    connected = "2026-11-25 18:20:02 Initialization Sequence Completed\n"
    for mp, tmp in _scratch():
        root = tmp / "vpnoffload"
        _home_end(root / "vpnoffload.toml", VPS_CONFIG, 0, connected, NOW - 20)
        _home_end(root / "vps2" / "vpnoffload.toml", SECOND_VPS_CONFIG, 1,
                  connected + "2026-11-25 18:36:58 [server] Inactivity timeout (--ping-restart), restarting\n"
                  "2026-11-25 18:36:58 SIGUSR1[soft,ping-restart] received, process restarting\n"
                  "2026-11-25 18:37:03 Restart pause, 5 second(s)\n", NOW - 14 * 60)
        devices = {"vpnoffload0": "10.88.0.2", "vpnoffload1": "10.89.0.2"}  # persist-tun keeps it
        mp.setattr(homestatus, "_device_address", devices.get)
        mp.setattr(homestatus, "_conntrack", lambda: ("", None))
        mp.setattr(homestatus, "time", types.SimpleNamespace(time=lambda: NOW))
        mp.setattr(runfiles, "pid_of", lambda pidfile, **_: HOME_KEEPER_PID if "keeper" in str(pidfile)
                   else HOME_CLIENT_PID)
        out = cli("-c", str(root / "vpnoffload.toml"), "status")
        return shown(["status"], out.replace(str(root), "/etc/vpnoffload"))
    raise AssertionError("unreachable")


def error_clash() -> str:
    """What `up home` on a home box says for a third config whose tunnel subnet overlaps the second's:
    the real check (hometunnels.check_box) and the one line a user reads (exits.error_line), with
    the configs where the docs put them (the line is cut at a fixed length, so paths count)."""
    from vpnoffload import config as cfg
    from vpnoffload import hometunnels
    from vpnoffload.errors import ConfigError
    from vpnoffload.exits import error_line

    with tempfile.TemporaryDirectory(prefix="vpnoffload-sample-") as tmp:
        root = Path(tmp) / "vpnoffload"
        third = SECOND_VPS_CONFIG.replace("203.0.113.20", "203.0.113.30")
        for sub, text in (("", VPS_CONFIG), ("vps2", SECOND_VPS_CONFIG), ("vps3", third)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / "vpnoffload.toml").write_text(text)
        config = root / "vps3" / "vpnoffload.toml"
        try:
            hometunnels.check_box(config, cfg.load(config))
        except ConfigError as exc:
            return error_line(str(exc).replace(str(root), "/etc/vpnoffload"))
    raise AssertionError("the clash was not refused")


def render_nginx() -> str:
    """What `render nginx` prints for a name on a shared :80 and :443 (deploying.md's example)."""
    config = VPS_CONFIG.split("[services.")[0] + """
[services.blog]
listen = 80
target = 8080
check = "http:/"
hostname = "blog.example.org"
via = "proxy"

[services.blog-tls]
listen = 443
target = 8443
hostname = "blog.example.org"
via = "proxy"
"""
    with tempfile.TemporaryDirectory(prefix="vpnoffload-sample-") as tmp:
        cfg = Path(tmp) / "vpnoffload.toml"
        cfg.write_text(config)
        out = Path(tmp) / "nginx"
        return cli("-c", str(cfg), "render", "nginx", "--out", str(out)).replace(str(out), "/etc/vpnoffload/nginx")


# ------------------------------------------------------------------ plans (--dry-run)

LAB_CONFIG = """\
[vps]
address = "203.0.113.10"

[tunnel]
subnet = "198.51.100.0/24"

[homes.home]
address = "198.51.100.2"

[services.blog]
listen = 80
target = 8080
"""


def _plan(end: str) -> str:
    """The plan of a first `up END` with one service, on fake backends (the lab's tunnel subnet;
    paths as with the default config): the lines `up END --dry-run` prints under "would change"."""
    from tests.fakes import deploy_env
    from vpnoffload import config as cfg
    from vpnoffload import deploy, plan

    for mp, tmp in _scratch():
        with debian_vps(mp, tmp):
            _, paths, backends, _, proc = deploy_env(tmp)
            paths.config.write_text(LAB_CONFIG)
            (proc / "net/netfilter").mkdir(parents=True)
            (proc / "net/netfilter/nf_conntrack_acct").write_text("0\n")
            config = cfg.load(paths.config)
            if end == "vps":
                actions = deploy.plan_up_vps(config, paths, backends)
            else:
                profile = paths.state / "home.ovpn"
                profile.write_text("client\n")
                actions = deploy.plan_up_home(config, paths, backends, "home", profile)
            deploy.cleanup_scratch(paths)
            return "\n".join(f"  - {line}" for line in plan.summaries(actions)).replace(str(tmp), "/etc/vpnoffload")
    raise AssertionError("unreachable")


def plan_up_vps() -> str:
    return _plan("vps")


def plan_up_home() -> str:
    return _plan("home")


SAMPLES: dict[str, Callable[[], str]] = {
    "doctor": doctor_fresh,
    "status-healthy": status_healthy,
    "status-failing": status_failing,
    "status-json": status_json,
    "error-port": error_port,
    "error-unknown-key": error_unknown_key,
    "status-home": status_home,
    "render-nginx": render_nginx,
    "error-clash": error_clash,
    "plan-up-vps": plan_up_vps,
    "plan-up-home": plan_up_home,
}


# ------------------------------------------------------------------ the documents


def blocks(text: str) -> Iterator[re.Match[str]]:
    return MARK.finditer(text)


def rewritten(text: str, made: dict[str, str]) -> str:
    """``text`` with every marked block replaced by its sample (made once per id)."""
    def one(m: re.Match[str]) -> str:
        return f"<!-- sample: {m['id']} -->\n{m['fence']}\n{made[m['id']]}\n```"

    return MARK.sub(one, text)


def main(argv: list[str]) -> int:
    made = {name: make() for name, make in SAMPLES.items()}
    stale = []
    for doc in DOCS:
        text = doc.read_text()
        new = rewritten(text, made)
        if new != text:
            stale.append(doc.relative_to(REPO))
            if "--write" in argv:
                doc.write_text(new)
    verb = "rewrote" if "--write" in argv else "stale"
    print(f"{verb}: {', '.join(map(str, stale))}" if stale else "every sample is current")
    return 1 if stale and "--write" not in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
