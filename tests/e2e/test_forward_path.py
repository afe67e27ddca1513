"""Issue 13 items 3-4 end to end: a rule on the VPS that drops forwarded traffic to home
(the tunnel and the direct check still fine) is seen by the watchdog's check from the probe
namespace the watchdog keeps: status says "path blocked on the VPS" and visitors get the page
within 10 s; once the rule is gone, the site is back within 10 s; the probe's veth goes with the
watchdog (stopped or killed); `down` leaves the VPS as it was.

The three blocks (everything into the tunnel, nft port 8080, iptables FORWARD 8080) run one
after the other on one deployment, each with a watchdog of its own that is stopped cleanly
afterwards (its probe veth must go), so a block that leaves something behind shows up in the
next one and in the snapshot after ``down``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import cli, cli_argv, configure
from tests.e2e.labkit import BLOCK, IPTABLES_BLOCK, IPTABLES_UNBLOCK, PORT_BLOCK, PORT_UNBLOCK, UNBLOCK, status
from tests.helpers import seconds_until
from vpnoffload.lab.netns import Lab
from vpnoffload.lab.snapshot import snapshot, snapshot_diff

pytestmark = pytest.mark.root

BLOCKS = {"all-into-tunnel": (BLOCK, UNBLOCK), "nft-port-8080": (PORT_BLOCK, PORT_UNBLOCK),
          "iptables-forward-8080": (IPTABLES_BLOCK, IPTABLES_UNBLOCK)}


def probe_link(lab: Lab) -> bool:
    """Is the watchdog's probe veth (its VPS end) there?"""
    return lab.exec("vps", "ip", "link", "show", "vpnoffload-pb", check=False).returncode == 0


def test_forward_path_blocked_on_the_vps_page_then_back(lab: Lab, sites: tuple[Path, Path], tmp_path: Path,
                                                         capsys) -> None:
    vps_site, home_site = sites
    configure(lab, vps_site, home_site, ["web", "--listen", "80", "--target", "8080", "--check", "http:/"])
    lab.popen("home", sys.executable, "-m", "vpnoffload.lab.web", "--port", "8080")
    assert lab.wait_tcp("home", "127.0.0.1", 8080)
    before = snapshot(lab, "vps")

    cli(lab, "vps", vps_site, "up", "vps")
    assert not probe_link(lab)  # `up` makes no probe: the watchdog owns it
    cli(lab, "home", home_site, "up", "home")
    for block in sorted(BLOCKS):
        _blocked_then_fixed(lab, vps_site, tmp_path, capsys, block, *BLOCKS[block])
    _gone_with_a_killed_watchdog(lab, vps_site, tmp_path)
    cli(lab, "home", home_site, "down", "home")
    cli(lab, "vps", vps_site, "down", "vps")
    after = snapshot(lab, "vps")
    assert after == before, f"vps differs after down:\n{snapshot_diff(before, after)}"


def _gone_with_a_killed_watchdog(lab: Lab, vps_site: Path, tmp_path: Path) -> None:
    """SIGKILL leaves nothing: the kernel frees the namespace, and the veth pair with it."""
    with open(tmp_path / "watch2.log", "ab") as out:
        watch = lab.popen("vps", *cli_argv("-c", str(vps_site / "vpnoffload.toml"), "watch"), stdout=out, stderr=out)
    seconds_until("the probe link is made", lambda: (probe_link(lab), None), 10)
    watch.kill()
    watch.wait(10)
    seconds_until("the probe link goes with the killed watchdog", lambda: (not probe_link(lab), None), 5)


def _blocked_then_fixed(lab: Lab, vps_site: Path, tmp_path: Path, capsys, name: str,
                        block: list[list[str]], unblock: list[list[str]]) -> None:
    log = tmp_path / f"watch-{name}.log"
    with open(log, "ab") as out:
        watch = lab.popen("vps", *cli_argv("-c", str(vps_site / "vpnoffload.toml"), "watch"), stdout=out, stderr=out)
    url = f"http://{lab.vps_address}/whoami"

    def served() -> tuple[bool, object]:
        code, body = lab.http_get("visitor", url, timeout=1)
        return code == 200 and body.strip() == lab.visitor_address, (code, body[:80])

    def healthy() -> tuple[bool, object]:
        code, data = status(lab, vps_site)
        return code == 0 and data["watchdog"]["running"], data["services"]

    seconds_until("served from home and status ok", lambda: (served()[0] and healthy()[0], None), 20)
    assert probe_link(lab), log.read_text()

    blocked_at = time.monotonic()
    # iptables (the nft variant) makes `table ip filter` for its rule; removing the rule leaves the table.
    had_filter = lab.exec("vps", "nft", "list", "table", "ip", "filter", check=False).returncode == 0
    for argv in block:
        lab.exec("vps", *argv)
    try:
        def blocked() -> tuple[bool, object]:
            code, data = status(lab, vps_site)
            svc = data["services"][0]
            return code != 0 and svc.get("reason") == "path blocked on the VPS", svc

        took_status = seconds_until("status names the blocked path", blocked, 10)
        took_page = seconds_until("visitors get the page", lambda: ((r := lab.http_get("visitor", url, timeout=1))[0] == 503, r[0]),
                          max(0.5, 10 - (time.monotonic() - blocked_at)))
        text = cli(lab, "vps", vps_site, "status", check=False).stdout
        assert "path blocked on the VPS" in text and "drops forwarded traffic" in text, text
        # While on the page it stays there: the probe still finds the path blocked.
        time.sleep(2)
        assert lab.http_get("visitor", url, timeout=1)[0] == 503
    finally:
        for argv in unblock:
            lab.exec("vps", *argv, check=False)
        if not had_filter:
            lab.exec("vps", "nft", "delete", "table", "ip", "filter", check=False)
    fixed_at = time.monotonic()
    took_back = seconds_until("the site is back", served, 10)
    seconds_until("status ok again", healthy, max(1.0, 10 - (time.monotonic() - fixed_at)))
    with capsys.disabled():
        print(f"\n[forward path] {name}: blocked -> status {took_status:.1f} s, page {took_page:.1f} s; "
              f"fixed -> site back {took_back:.1f} s", flush=True)

    watch.terminate()
    watch.wait(10)
    assert not probe_link(lab)  # a clean stop deletes it before exiting
