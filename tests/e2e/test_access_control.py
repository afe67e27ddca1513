"""Issue 28 end to end, on both firewall backends: per-service allow and deny lists, a
100 000-prefix deny file, per-source rate and connection limits, in the VPS's kernel.

The visitor namespace gets a second address in its own /26 (192.0.2.3 beside
192.0.2.2; the lab router already routes the /26 there), so two sources visit at
the same moment. Services, all served by one web server at home:

* web   :80   --deny 192.0.2.3          (the friendly page too, once home is gone)
* api   :8081 --allow 192.0.2.2 --max-conns 3
* burst :8082 --rate 10/s --deny-file (100 000 prefixes, none of them ours)

What a visitor gets is what the test asserts: a TCP handshake and an HTTP reply,
or nothing at all. ``down`` must leave every table and ipset as it was.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import cli, configure
from tests.e2e.labkit import HOSTNAME, down_both, start_watch
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

FIRST = Lab.visitor_address  # 192.0.2.2
SECOND = "192.0.2.3"  # a second visitor, in the visitor's own /26
DENY_FILE_PREFIXES = 100_000

#: Run in the visitor namespace: argv = VPS, then JSON jobs [[source, port, count, spread_s, kind]].
#: Each job opens ``count`` connections from ``source`` evenly over ``spread_s`` seconds, all
#: jobs at once; "http" sends a GET and keeps the status code, "hold" keeps the socket open
#: until every job is done. Prints, per job, the replies ("" for nothing within 1 s).
VISITORS = r"""
import json, socket, sys, threading, time
vps, jobs = sys.argv[1], json.loads(sys.argv[2])
results = [[None] * job[2] for job in jobs]
held = []
def one(j, i, source, port, kind):
    s = socket.socket()
    s.settimeout(1.0)
    s.bind((source, 0))
    try:
        s.connect((vps, port))
        if kind == "hold":
            held.append(s)
            results[j][i] = "connected"
            return
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        words = s.recv(200).decode(errors="replace").split(" ")
        results[j][i] = words[1] if len(words) > 1 else "connected"
    except OSError:
        results[j][i] = ""
    if kind != "hold":
        s.close()
threads = []
start = time.monotonic()
for j, (source, port, count, spread, kind) in enumerate(jobs):
    for i in range(count):
        t = threading.Timer(spread * i / count, one, (j, i, source, port, kind))
        threads.append(t)
        t.start()
for t in threads:
    t.join()
print(json.dumps(results))
for s in held:
    s.close()
"""


def visitors(lab: Lab, *jobs: tuple[str, int, int, float, str]) -> list[list[str]]:
    proc = lab.exec("visitor", sys.executable, "-c", VISITORS, lab.vps_address, json.dumps(jobs), timeout=30)
    return json.loads(proc.stdout)


def served(replies: list[str]) -> int:
    return sum(1 for r in replies if r)


def write_deny_file(path: Path) -> None:
    """100 000 /24s from 20.0.0.0 on, every other one: no lab address among them."""
    lines = ["# a country's worth of prefixes"]
    for i in range(DENY_FILE_PREFIXES):
        n = (20 << 24) + i * 512
        lines.append(f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.0/24")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("backend", ["iptc", "nft"])
def test_lists_and_limits_per_service(lab: Lab, sites: tuple[Path, Path], tmp_path: Path, backend: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPNOFFLOAD_FIREWALL", backend)  # the CLI, the watchdog and its swap child
    vps_site, home_site = sites
    deny_file = vps_site / "deny.txt"
    write_deny_file(deny_file)
    configure(lab, vps_site, home_site,
              ["web", "--listen", "80", "--target", "8080", "--check", "http:/", "--hostname", HOSTNAME,
               "--deny", f"{SECOND}/32"],
              ["api", "--listen", "8081", "--target", "8080", "--allow", f"{FIRST}/32", "--max-conns", "3"],
              ["burst", "--listen", "8082", "--target", "8080", "--rate", "10/s"])
    lab.exec("visitor", "ip", "addr", "add", f"{SECOND}/26", "dev", lab.uplink_device)
    web = lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080")
    assert lab.wait_tcp("home", "127.0.0.1", 8080)
    before = {host: snapshot(lab, host) for host in ("vps", "home")}

    cli(lab, "vps", vps_site, "up", "vps")
    cli(lab, "home", home_site, "up", "home")
    _wait_served(lab)

    # A denied source gets nothing from web and is still served by burst; api lets only FIRST in.
    web_first, web_second, api_first, api_second, burst_second = visitors(
        lab, (FIRST, 80, 2, 0.2, "http"), (SECOND, 80, 2, 0.2, "http"), (FIRST, 8081, 2, 0.2, "http"),
        (SECOND, 8081, 2, 0.2, "http"), (SECOND, 8082, 2, 0.2, "http"))
    assert web_first == ["200"] * 2, web_first
    assert web_second == ["", ""], web_second
    assert api_first == ["200"] * 2, api_first
    assert api_second == ["", ""], api_second
    assert burst_second == ["200"] * 2, burst_second

    # max_conns 3: a fourth open connection from the same source gets no handshake.
    (held,) = visitors(lab, (FIRST, 8081, 4, 0.4, "hold"))
    assert held.count("connected") == 3, held

    # rate 10/s: 100 new connections in 1 s from one source, a few get through; another
    # source at the same moment is served every time.
    flood, other = visitors(lab, (FIRST, 8082, 100, 1.0, "http"), (SECOND, 8082, 5, 1.0, "http"))
    assert 5 <= served(flood) <= 30, served(flood)
    assert other == ["200"] * 5, other

    status = json.loads(cli(lab, "vps", vps_site, "status", "--json", check=False).stdout)
    dropped = {s["name"]: s.get("access_dropped") for s in status["services"]}
    assert dropped["web"]["deny"] >= 2, dropped
    assert dropped["api"]["allow"] >= 2 and dropped["api"]["max_conns"] >= 1, dropped
    assert dropped["burst"]["rate"] >= 70, dropped

    # A 100 000-prefix deny file, changed on the running service: applied in one step
    # (its timing is bench/access.py's), and the service still forwards.
    cli(lab, "vps", vps_site, "service", "set", "burst", "--deny-file", str(deny_file))
    dry = cli(lab, "vps", vps_site, "up", "vps", "--dry-run").stdout
    assert f"{DENY_FILE_PREFIXES} prefix line(s) of {deny_file}" in dry, dry
    time.sleep(1.1)  # the rate limit's bucket refills
    cli(lab, "vps", vps_site, "up", "vps")
    assert "nothing to do" in cli(lab, "vps", vps_site, "up", "vps").stdout
    (burst_first,) = visitors(lab, (FIRST, 8082, 3, 0.6, "http"))
    assert burst_first == ["200"] * 3, burst_first
    if backend == "nft":
        assert "vpnoffload-3-d4-" in lab.exec("vps", "nft", "-t", "list", "ruleset").stdout
    else:
        sets = lab.exec("vps", "ipset", "list", "-t").stdout
        assert f"Number of entries: {DENY_FILE_PREFIXES}" in sets, sets

    # Home gone: the friendly page obeys web's deny list too.
    watch = start_watch(lab, vps_site, tmp_path / "watch.log")
    try:
        lab.pull_cable()
        deadline = time.monotonic() + 15
        while visitors(lab, (FIRST, 80, 1, 0, "http"))[0] != ["503"]:
            assert time.monotonic() < deadline, "no friendly page within 15 s"
            time.sleep(0.3)
        page_first, page_second = visitors(lab, (FIRST, 80, 2, 0.2, "http"), (SECOND, 80, 2, 0.2, "http"))
        assert page_first == ["503"] * 2, page_first
        assert page_second == ["", ""], page_second
        lab.plug_cable()
    finally:
        watch.terminate()
        watch.wait(10)

    down_both(lab, vps_site, home_site, before)
    web.terminate()


def _wait_served(lab: Lab, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while visitors(lab, (FIRST, 80, 1, 0, "http"))[0] != ["200"]:
        assert time.monotonic() < deadline, "web not served within 20 s of up"
        time.sleep(0.3)
