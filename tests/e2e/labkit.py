"""The e2e lab's shared steps: visit, status, the watchdog, deploy, kill, crowds through an outage.

Test modules import these from here (or tests/e2e/conftest.py), never from each other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import crowd as crowd_script
from tests import hostshapes
from tests.e2e.conftest import cli, cli_argv, configure, openvpn_pids
from tests.helpers import wait_until
from tests.nslib import in_ns, unique
from vpnoffload.lab.netns import Lab, child_env, namespace_pids
from vpnoffload.lab.snapshot import snapshot, snapshot_diff
from vpnoffload.procs import alive

HOSTNAME = "blog.example.org"

# Runs in the visitor's namespace: one request on a new connection, as JSON.
VISIT = r"""
import http.client, json, sys, time
host, port, timeout, path, method = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
start = time.monotonic()
try:
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    c.request(method, path, headers={"Host": "blog.example.org"})
    r = c.getresponse()
    out = {"status": r.status, "headers": dict(r.getheaders()), "body": r.read().decode("utf-8", "replace")}
except Exception as e:
    out = {"status": 0, "error": f"{type(e).__name__}: {e}"}
out["seconds"] = time.monotonic() - start
print(json.dumps(out))
"""


def visit(lab: Lab, port: int = 80, timeout: float = 1.0, path: str = "/whoami", method: str = "GET") -> dict:
    """One visitor's request (Host: blog.example.org) to the VPS on a new connection:
    {"status" (0: none), "headers", "body" or "error", "seconds"}."""
    proc = lab.exec("visitor", sys.executable, "-c", VISIT, lab.vps_address, str(port), str(timeout), path, method,
                    timeout=timeout + 10)
    return json.loads(proc.stdout)


def until(lab: Lab, want: int, limit: float) -> tuple[float, dict]:
    """Visit on new connections several times a second until status ``want``; (seconds, last reply)."""
    start = time.monotonic()
    last = wait_until(f"HTTP {want} for a visitor", lambda: ((r := visit(lab))["status"] == want, r), limit)
    return time.monotonic() - start, last


def status(lab: Lab, site: Path) -> tuple[int, dict]:
    proc = cli(lab, "vps", site, "status", "--json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def wait_status(lab: Lab, site: Path, want: int, limit: float = 6) -> tuple[int, dict]:
    return wait_until(f"status exit {want}", lambda: ((got := status(lab, site))[0] == want, got), limit, 0.2)


def start_watch(lab: Lab, site: Path, log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    proc = lab.popen("vps", *cli_argv("-c", str(site / "vpnoffload.toml"), "watch"), stdout=out, stderr=out)

    def running() -> tuple[bool, str]:
        assert proc.poll() is None, log.read_text()
        return status(lab, site)[1]["watchdog"]["running"], log.read_text()[-2000:]
    wait_until("the watchdog starts", running, 15, 0.2)
    return proc


def down_both(lab: Lab, vps_site: Path, home_site: Path, before: dict[str, dict], *, openvpn_gone: bool = True) -> None:
    """`down` on home, then on the VPS: each host is then exactly as ``before`` (its snapshot
    by host name) and, with ``openvpn_gone``, runs no OpenVPN."""
    cli(lab, "home", home_site, "down", "home")
    cli(lab, "vps", vps_site, "down", "vps")
    for host in ("vps", "home"):
        after = snapshot(lab, host)
        assert after == before[host], f"{host} differs after down:\n{snapshot_diff(before[host], after)}"
        if openvpn_gone:
            assert openvpn_pids(lab, host) == []


def report(capsys: pytest.CaptureFixture, text: str) -> None:
    with capsys.disabled():
        print(f"\n[failover] {text}", flush=True)


WEB = ["web", "--listen", "80", "--target", "8080", "--check", "http:/", "--hostname", HOSTNAME]


def home_web(lab: Lab) -> None:
    lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080")
    assert lab.wait_tcp("home", "127.0.0.1", 8080)


def deploy(lab: Lab, sites: tuple[Path, Path], tmp_path: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """Configure, start home's web server, up vps, up home, watch; (watchdog, home before up home)."""
    vps_site, home_site = sites
    configure(lab, vps_site, home_site, WEB)
    home_web(lab)
    cli(lab, "vps", vps_site, "up", "vps")
    before = snapshot(lab, "home")
    cli(lab, "home", home_site, "up", "home")
    watch = start_watch(lab, vps_site, tmp_path / "watch.log")
    wait_status(lab, vps_site, 0, limit=10)
    assert visit(lab)["status"] == 200
    return watch, before


def kill(lab: Lab, host: str, *, names: tuple[str, ...] = (), everything: bool = False) -> list[int]:
    """SIGKILL processes in ``host``'s namespace: by comm name, or all of them (a power cut)."""
    killed = []
    for pid in namespace_pids(lab.namespace(host)):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if everything or comm in names:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in killed):
        time.sleep(0.05)
    return killed


def through_outage(lab: Lab, since: float, limit: float = 40,
                   page_required: bool = True) -> tuple[float | None, float]:
    """A crowd (5 new connections a second) from now until home serves again: seconds from
    ``since`` to the first friendly page and to the start of the final run of 200s. Fails if,
    once the page showed, a visitor got anything but the page or the site, or waited >= 1 s.

    Without ``page_required`` an outage shorter than the watchdog's detection may show no
    page: then every visitor must have got the site (late, by TCP's SYN retry), none a failure."""
    results = crowd_script.run(lab, "^200 ", 0.2, limit, 5, host_header=HOSTNAME)
    pages = [done for _, done, reply in results if reply.startswith("503 ")]
    if not pages and not page_required:
        assert results and all(r[2].startswith("200 ") for r in results), [r[2][:30] for r in results]
        return None, min(r[1] for r in results) - since
    assert pages, f"no friendly page: {[r[2][:30] for r in results]}"
    first_page = min(pages)
    not_ok = [i for i, r in enumerate(results) if not r[2].startswith("200 ")]
    assert not_ok and not_ok[-1] + 1 < len(results), f"site not back within {limit} s"
    back = results[not_ok[-1] + 1][1]
    bad = [r for r in results if r[0] > first_page and (r[2][:4] not in ("200 ", "503 ") or r[1] - r[0] >= 1.0)]
    assert not bad, bad
    return first_page - since, back - since


def wipe_like_a_reboot(lab: Lab, host: str) -> None:
    """What a reboot loses and the disk keeps: routing policy, our routes, every xtables chain, sysctls."""
    rules = lab.exec(host, "ip", "rule").stdout
    for line in rules.splitlines():
        if "lookup 7701" in line:
            lab.exec(host, "ip", "rule", "del", *line.split(":", 1)[1].split())
    lab.exec(host, "ip", "route", "flush", "table", "7701", check=False)
    for table in ("filter", "nat", "mangle", "raw"):
        lab.exec(host, "iptables-legacy", "-t", table, "-F", check=False)
        lab.exec(host, "iptables-legacy", "-t", table, "-X", check=False)
    lab.exec(host, "nft", "flush", "ruleset", check=False)
    lab.exec(host, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")


def wait_reply(lab: Lab, url: str, want: str, limit: float) -> tuple[int, str, float]:
    """Visit ``url`` from the visitor until the reply contains ``want``; (status, body, seconds)."""
    start = time.monotonic()

    def holds() -> tuple[bool, tuple[int, str]]:
        status, body = lab.http_get("visitor", url, timeout=2)
        return want in f"{status} {body}", (status, body)
    status, body = wait_until(f"{url}: {want!r} in the reply", holds, limit, 0.2)
    return status, body, time.monotonic() - start


# ------------------------------------------------------------------ blocks on the VPS (forward path, truth, faults)

#: The brief's block, with the chain renamed: "fwd" is an nft keyword (the netdev fwd statement).
BLOCK = [
    ["nft", "add", "table", "inet", "blk"],
    ["nft", "add", "chain", "inet", "blk", "drops", "{ type filter hook forward priority 0; }"],
    ["nft", "add", "rule", "inet", "blk", "drops", "oifname", "vpnoffload0", "drop"],
]
UNBLOCK = [["nft", "delete", "table", "inet", "blk"]]
HOME = "198.51.100.2"  # the home's tunnel address in TUNNEL_SUBNET
#: Issue 21: only the service's own forwarded port is dropped (home still answers ping and the
#: direct check): in a forward-hook chain before everyone else's, and in iptables' FORWARD.
PORT_BLOCK = [
    ["nft", "add", "table", "ip", "blk"],
    ["nft", "add", "chain", "ip", "blk", "drops", "{ type filter hook forward priority -10; }"],
    ["nft", "add", "rule", "ip", "blk", "drops", "ip", "daddr", HOME, "tcp", "dport", "8080", "drop"],
]
PORT_UNBLOCK = [["nft", "delete", "table", "ip", "blk"]]
IPTABLES_BLOCK = [["iptables", "-I", "FORWARD", "-d", HOME, "-p", "tcp", "--dport", "8080", "-j", "DROP"]]
IPTABLES_UNBLOCK = [["iptables", "-D", "FORWARD", "-d", HOME, "-p", "tcp", "--dport", "8080", "-j", "DROP"]]


TUNNEL_SUBNET6 = "fd00:88::/64"


def wait_http(lab: Lab, url: str, want: int, limit: float) -> tuple[float, str]:
    """GET ``url`` from the visitor on new connections until HTTP ``want``; (seconds, body)."""
    start = time.monotonic()
    last = wait_until(f"HTTP {want} from {url}", lambda: ((r := lab.http_get("visitor", url, timeout=1.0))[0] == want, r),
                      limit)
    return time.monotonic() - start, last[1]


# -- a home box shaped as Docker makes it (a container behind a published port)

BRIDGE = "docker0"
BRIDGE_ADDRESS = "198.18.5.1/24"  # the "private" side, as ENVIRONMENT.md asks
CONTAINER = "198.18.5.2"
PUBLISHED = 8080  # `docker run -p 8080:80`
INSIDE = 80

# What dockerd (Debian 12's docker.io, iptables-nft) writes with one container publishing 8080 -> 80.
DOCKER_RULES = hostshapes.docker(BRIDGE, "198.18.5.0/24", published=((PUBLISHED, CONTAINER, INSIDE),))


def make_container_home(lab: Lab, container_ns: str) -> None:
    """docker0 in the home namespace, one container behind it, Docker's rules, forwarding on,
    and the container's web server (named "container") answering on INSIDE."""
    home = lab.namespace("home")
    lab.exec("home", "ip", "link", "add", BRIDGE, "type", "bridge")
    lab.exec("home", "ip", "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE)
    lab.exec("home", "ip", "link", "set", BRIDGE, "up")
    veth = f"ve{unique('')[-6:]}"
    subprocess.run(["ip", "link", "add", veth, "netns", home, "type", "veth", "peer", "name", "eth0",
                    "netns", container_ns], check=True, timeout=10)
    lab.exec("home", "ip", "link", "set", veth, "master", BRIDGE, "up")
    in_ns(container_ns, "ip", "addr", "add", f"{CONTAINER}/24", "dev", "eth0")
    in_ns(container_ns, "ip", "link", "set", "eth0", "up")
    in_ns(container_ns, "ip", "route", "add", "default", "via", BRIDGE_ADDRESS.split("/")[0])
    lab.exec("home", "sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.exec("home", "iptables-nft-restore", input=DOCKER_RULES)
    subprocess.Popen(["ip", "netns", "exec", container_ns, sys.executable, "-m", "vpnoffload.lab.web",
                      "--port", str(INSIDE), "--name", "container"], env=child_env(),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert lab.wait_tcp("home", CONTAINER, INSIDE)


# --------------------------------------------------------------------------
# Several VPSes, and a fleet driven over SSH (the Ansible collection's e2e)


def wait_served(lab: Lab, address: str, want: str, limit: float = 15, path: str = "/", port: int = 80) -> str:
    """GET ``path`` on ``address:port`` from the visitor until the reply holds ``want``; the body."""
    from tests.helpers import wait_until

    def holds() -> tuple[bool, tuple[int, str]]:
        status, body = lab.http_get("visitor", f"http://{address}:{port}{path}", timeout=2)
        return want in f"{status} {body}", (status, body)
    return wait_until(f"{address}:{port}: {want!r} in the reply", holds, limit, 0.2)[1]


#: The controller's link to the lab's router: a TEST-NET /26 no lab host uses.
CONTROLLER_ADDRESS = "192.0.2.194"
CONTROLLER_GATEWAY = "192.0.2.193"


def attach_controller(lab: Lab, namespace: str) -> None:
    """Give an existing namespace a link to the lab's router, like any other host of the internet."""
    from tests.nslib import link

    link(lab.namespace("internet"), f"{CONTROLLER_GATEWAY}/26", namespace, f"{CONTROLLER_ADDRESS}/26")
    in_ns(namespace, "ip", "route", "add", "default", "via", CONTROLLER_GATEWAY)


SSHD_CONFIG = """\
Port 22
ListenAddress {address}
HostKey {directory}/host_ed25519
PidFile {directory}/sshd-{host}.pid
AuthorizedKeysFile {directory}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
"""

SSH_CONFIG = """\
Host *
  User root
  IdentityFile {directory}/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  ControlMaster auto
  ControlPersist 120s
  ControlPath {directory}/cm-%C
"""


def ssh_keys(directory: Path) -> Path:
    """A client key and a host key made for this test, the client key authorized; the ssh client config.

    ``StrictHostKeyChecking no`` lives in this config only: the hosts' keys are born with the test.
    """
    for name in ("id_ed25519", "host_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"vpnoffload-e2e-{name}",
                        "-f", str(directory / name)], check=True, capture_output=True, timeout=30)
    (directory / "authorized_keys").write_text((directory / "id_ed25519.pub").read_text())
    os.chmod(directory / "authorized_keys", 0o600)
    config = directory / "ssh_config"
    config.write_text(SSH_CONFIG.format(directory=directory))
    return config


def start_sshd(lab: Lab, host: str, address: str, directory: Path) -> None:
    """An sshd in ``host``'s namespace on ``address`` (the lab's teardown kills it)."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    config = directory / f"sshd-{host}.conf"
    config.write_text(SSHD_CONFIG.format(address=address, directory=directory, host=host))
    lab.popen(host, "/usr/sbin/sshd", "-D", "-e", "-f", str(config))
    if not lab.wait_tcp(host, address, 22, timeout=10):
        pytest.fail(f"sshd in {host} did not listen on {address}:22", pytrace=False)


# Runs in the visitor's namespace: one request every PAUSE s on a new connection for SECONDS
# (each waiting at most TIMEOUT s); prints how many got a 200 from home (MARKER in the body)
# and how many got anything else.
STEADY_VISITORS = r"""
import http.client, sys, time
host, port, seconds, marker, pause, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], \
    float(sys.argv[5]), float(sys.argv[6])
home = other = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        c.request("GET", "/", headers={"Host": "blog.example.org"})
        r = c.getresponse()
        if r.status == 200 and marker in r.read().decode("utf-8", "replace"):
            home += 1
        else:
            other += 1
    except Exception:
        other += 1
    time.sleep(pause)
print(home, other)
"""


def steady_visitors_argv(lab: Lab, port: int, seconds: float, *, marker: str = "served from", pause: float = 0.5,
                         timeout: float = 5.0) -> list[str]:
    """The command line of :data:`STEADY_VISITORS` towards the VPS's public address."""
    return [sys.executable, "-c", STEADY_VISITORS, lab.vps_address, str(port), f"{seconds:g}", marker,
            f"{pause:g}", f"{timeout:g}"]


def up_homes(lab: Lab, vps_site: Path, homes: dict[str, Path]) -> None:
    """Each home box (namespace name -> its site) gets its profile from the VPS and a web
    server on 8080; then ``up vps`` and each ``up home`` (``--home NAME`` but for "home")."""
    for name, site in homes.items():
        (site / "state").mkdir(mode=0o755)
        cli(lab, "vps", vps_site, "render", "home", "--home", name, "--out", str(site / "state"))
        shutil.copy(vps_site / "vpnoffload.toml", site / "vpnoffload.toml")
        lab.popen(name, sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080", "--name", name)
        assert lab.wait_tcp(name, "127.0.0.1", 8080)
    cli(lab, "vps", vps_site, "up", "vps")
    for name, site in homes.items():
        cli(lab, name, site, "up", "home", *(() if name == "home" else ("--home", name)))
