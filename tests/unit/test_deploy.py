"""up/down planning on fake backends: idempotent, exact undo, rollback on failure."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests.fakes import DEPLOY_CONFIG, FakeTunnel
from vpnoffload import config as cfg
from vpnoffload import deploy, plan
from vpnoffload.errors import ApplyError
from vpnoffload.routing import Address


def test_up_vps_then_nothing_to_do_then_down_restores(env) -> None:
    config, paths, b, tunnels, proc = env
    actions = deploy.plan_up_vps(config, paths, b)
    text = "\n".join(plan.summaries(actions))
    for words in ("create system user vpnoffload", "--to-destination 198.51.100.2:8080", "203.0.113.11",
                  "net.ipv4.ip_forward = 1", "start OpenVPN server"):
        assert words in text
    fw_before = b.firewall.dump()
    plan.apply(actions)
    assert (proc / "net/ipv4/ip_forward").read_text().strip() == "1"
    assert tunnels["server"].up and (paths.server_dir / "server.conf").exists()
    assert any(str(a.address) == "203.0.113.11" for a in b.routing.address_list)

    assert deploy.plan_up_vps(config, paths, b) == []

    plan.apply(deploy.plan_down_vps(paths, b))
    assert (proc / "net/ipv4/ip_forward").read_text().strip() == "0"
    assert b.firewall.dump() == fw_before
    assert [str(a.address) for a in b.routing.address_list] == ["203.0.113.10"]
    assert not tunnels["server"].up and not b.users.names
    assert deploy.plan_down_vps(paths, b) == []


def test_dry_run_plan_changes_nothing(env) -> None:
    config, paths, b, tunnels, proc = env
    fw_before = b.firewall.dump()
    deploy.plan_up_vps(config, paths, b)
    deploy.cleanup_scratch(paths)
    assert b.firewall.dump() == fw_before and not b.routing.calls
    assert (proc / "net/ipv4/ip_forward").read_text().strip() == "0"
    assert not paths.server_dir.exists() and not list(paths.state.glob(".server.*"))


def test_failed_start_rolls_everything_back(env) -> None:
    config, paths, b, tunnels, proc = env
    fw_before = b.firewall.dump()
    tunnels["server"] = FakeTunnel("server", Path(), Path(), Path(), fail=True)
    with pytest.raises(ApplyError, match="start OpenVPN server failed: openvpn did not start"):
        plan.apply(deploy.plan_up_vps(config, paths, b))
    assert b.firewall.dump() == fw_before
    assert (proc / "net/ipv4/ip_forward").read_text().strip() == "0"
    assert [str(a.address) for a in b.routing.address_list] == ["203.0.113.10"]
    assert not b.users.names and not (paths.run / "vps.json").exists()


def test_changed_config_restarts_server_once(env) -> None:
    config, paths, b, tunnels, proc = env
    plan.apply(deploy.plan_up_vps(config, paths, b))
    paths.config.write_text(DEPLOY_CONFIG.replace('listen = "80"', 'listen = "8081"'))
    actions = deploy.plan_up_vps(cfg.load(paths.config), paths, b)
    text = "\n".join(plan.summaries(actions))
    assert "--dport 8081" in text and "start OpenVPN server" not in text
    # The rendered OpenVPN config is the same, so OpenVPN is not restarted (only the
    # pages change, since port 8081 is no longer a web port that gets the page; the
    # page server is not running: the watchdog starts it when a service needs it).
    assert "restart OpenVPN" not in text and "install friendly pages" in text and "friendly-page server" not in text
    plan.apply(actions)
    assert tunnels["server"].log == ["start", "ready"]


def test_up_home_waits_for_tunnel_then_routes(env) -> None:
    config, paths, b, tunnels, proc = env
    profile = paths.state / "home.ovpn"
    profile.write_text("client\n")
    b.routing.device_list.append("vpnoffload0")
    b.routing.address_list.append(Address(IPv4Address("198.51.100.2"), "vpnoffload0", 24))
    actions = deploy.plan_up_home(config, paths, b, "home", profile)
    text = "\n".join(plan.summaries(actions))
    assert "start OpenVPN client for home" in text and "rule from 198.51.100.2 lookup 7701" in text
    assert "--dport 8080" in text and "--dport 2222" in text
    plan.apply(actions)
    assert (proc / "net/ipv4/conf/vpnoffload0/rp_filter").read_text().strip() == "2"
    assert deploy.plan_up_home(config, paths, b, "home", profile) == []
    plan.apply(deploy.plan_down_home(paths, b, "home", profile))
    assert not tunnels["home-home"].up
    assert b.firewall.read().is_empty()
    assert not b.users.names  # `up home` created the user while applying: down removes it


def test_up_home_dry_run_shows_every_change_routing_included(env) -> None:
    """Before the tunnel exists, the plan already names each route, rule and sysctl, in order."""
    config, paths, b, tunnels, proc = env
    profile = paths.state / "home.ovpn"
    profile.write_text("client\n")
    lines = plan.summaries(deploy.plan_up_home(config, paths, b, "home", profile))
    start = next(i for i, s in enumerate(lines) if s.startswith("start OpenVPN client"))
    after = lines[start + 1:]
    assert after[0] == "wait until vpnoffload0 has 198.51.100.2"
    assert "add route default dev vpnoffload0 table 7701" in after
    assert "add rule from 198.51.100.2 lookup 7701 priority 7701" in after
    assert "set net.ipv4.conf.vpnoffload0.rp_filter = 2 (once it exists)" in after
    assert after.index("add route default dev vpnoffload0 table 7701") < after.index(
        "add rule from 198.51.100.2 lookup 7701 priority 7701")
    assert b.routing.calls == [] and not tunnels["home-home"].log  # planning changed nothing


def test_up_home_without_profile_is_a_clear_error(env) -> None:
    config, paths, b, tunnels, proc = env
    from vpnoffload.errors import NotSetUpError

    with pytest.raises(NotSetUpError, match="no client profile at .*render home"):
        deploy.plan_up_home(config, paths, b, "home", paths.state / "missing.ovpn")


def test_openvpn_runs_under_systemd_when_systemd_runs_this_namespace(env, monkeypatch) -> None:
    from vpnoffload import tunnel

    config, paths, b, tunnels, proc = env
    b.tunnel_factory = None
    monkeypatch.setattr(tunnel, "systemd_manages_this_netns", lambda: True)
    server = deploy.server_tunnel(paths, b)
    assert isinstance(server, tunnel.SystemdTunnel) and server.unit == "openvpn-server@vpnoffload"
    assert server.wrapper == Path("/etc/openvpn/server/vpnoffload.conf")
    assert server.wrapper_text.splitlines()[1:] == [f"cd {paths.server_dir}", "config server.conf"]
    home = deploy.home_tunnel(paths, b, "home", paths.state / "home.ovpn")
    assert home.unit == "openvpn-client@vpnoffload-home"
    assert home.wrapper_text.splitlines()[1:] == [f"cd {paths.state}", "config home.ovpn",
                                                  "user vpnoffload", "group vpnoffload"]
    monkeypatch.setattr(tunnel, "systemd_manages_this_netns", lambda: False)
    assert isinstance(deploy.server_tunnel(paths, b), tunnel.DaemonTunnel)


def test_stale_watchdog_state_is_ignored_and_down_forgets_it(env) -> None:
    import json

    config, paths, b, tunnels, proc = env
    plan.apply(deploy.plan_up_vps(config, paths, b))
    # A watchdog that is gone left "web on fallback" behind.
    paths.watch_state.write_text(json.dumps({"pid": 999999, "services": [{"name": "web", "active": None}]}))
    assert deploy.current_targets(config, paths) == {}
    # Nothing sends visitors to the page; the dead watchdog's state is forgotten.
    actions = deploy.plan_up_vps(config, paths, b)
    assert [a.summary for a in actions if "iptables" in a.summary] == []
    assert any("forget the stopped watchdog's state" in a.summary for a in actions)
    plan.apply(actions)
    assert deploy.plan_up_vps(config, paths, b) == []
    paths.watch_state.write_text("{}")
    summaries = plan.summaries(deploy.plan_down_vps(paths, b))
    assert any("forget the watchdog's state" in line for line in summaries)


def test_missing_page_template_is_caught_before_any_change(env, tmp_path) -> None:
    from vpnoffload import config as cfg
    from vpnoffload.errors import ConfigError

    config, paths, b, tunnels, proc = env
    paths.config.write_text(DEPLOY_CONFIG.replace('target = "8080"', 'target = "8080"\npage = "/nonexistent/page.html.j2"'))
    fw_before = b.firewall.dump()
    with pytest.raises(ConfigError, match="services.web.page: /nonexistent/page.html.j2 does not exist"):
        deploy.plan_up_vps(cfg.load(paths.config), paths, b)
    assert b.firewall.dump() == fw_before


def test_doctor_warns_when_the_conntrack_tool_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from vpnoffload.deploy import doctor
    from vpnoffload.watch import flows

    monkeypatch.setattr(flows, "conntrack_binary", lambda: None)
    missing = doctor.check_conntrack_tool()
    assert (missing.level, missing.hint) == ("warn", "apt-get install conntrack")
    assert "busy service from a blocked path" in missing.detail
    monkeypatch.setattr(flows, "conntrack_binary", lambda: "/usr/sbin/conntrack")
    found = doctor.check_conntrack_tool()
    assert (found.level, found.detail) == ("ok", "conntrack tool at /usr/sbin/conntrack")


def _sysfs(tmp_path: Path, device: dict[str, str] | None = None, loaded: str | None = None,
           modules_dep: str = "") -> tuple[Path, Path, Path]:
    """A fake /sys/class/net (one device with these files), /sys/module and /lib/modules/<release>."""
    import os

    net, modules, lib = tmp_path / "net", tmp_path / "module", tmp_path / "lib-modules"
    for where in (net, modules, lib / os.uname().release):
        where.mkdir(parents=True)
    if device is not None:
        (net / "vpnoffload0").mkdir()
        for name, text in device.items():
            (net / "vpnoffload0" / name).write_text(text)
    if loaded:
        (modules / loaded).mkdir()
    (lib / os.uname().release / "modules.dep").write_text(modules_dep)
    return net, modules, lib


TUN = {"tun_flags": "0x1001\n", "uevent": "INTERFACE=vpnoffload0\nIFINDEX=7\n"}


@pytest.mark.parametrize("device, loaded, dep, level, says", [
    (TUN, None, "kernel/net/ipv4/udp_tunnel.ko:\n", "ok",
     "not in use: vpnoffload0 is a tun device, OpenVPN's own data channel; this kernel has no ovpn module"),
    ({"uevent": "DEVTYPE=ovpn\nINTERFACE=vpnoffload0\n"}, "ovpn", "", "ok",
     "data channel offload in use: vpnoffload0 is an ovpn device"),
    ({"uevent": "DEVTYPE=ovpn-dco\nINTERFACE=vpnoffload0\n"}, "ovpn_dco_v2", "", "ok",
     "data channel offload in use: vpnoffload0 is an ovpn-dco device"),
    (TUN, "ovpn_dco_v2", "", "warn", "not in use: vpnoffload0 is a tun device although this kernel has the "
     "ovpn_dco_v2 module"),
    (TUN, None, "kernel/drivers/net/ovpn/ovpn.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz\n", "warn",
     "although this kernel has the ovpn module"),
    (None, None, "updates/dkms/ovpn-dco-v2.ko: kernel/net/ipv4/udp_tunnel.ko\n", "ok",
     "tunnel vpnoffload0 is not up; this kernel has the ovpn_dco_v2 module"),
    (None, None, "", "ok", "tunnel vpnoffload0 is not up; this kernel has no ovpn module"),
])
def test_doctor_says_whether_the_kernel_carries_the_data_channel(tmp_path: Path, device: dict[str, str] | None,
                                                                 loaded: str | None, dep: str, level: str,
                                                                 says: str) -> None:
    from vpnoffload.deploy import doctor

    # OpenVPN 2.6 drives ovpn_dco_v2, 2.7 the kernel's ovpn: each warn row with the version that uses its module.
    version = "2.6.14" if loaded == "ovpn_dco_v2" or "ovpn-dco" in dep else "2.7.0"
    found = doctor.check_dco("vpnoffload0", *_sysfs(tmp_path, device, loaded, dep), openvpn=version)
    assert (found.check, found.level) == ("dco", level) and says in found.detail, found
    assert ("disabling data channel offload" in found.hint) == (level == "warn")


@pytest.mark.parametrize("loaded, version, level", [
    ("ovpn", "2.6.14", "ok"),  # Linux 6.16+ with OpenVPN 2.6: nothing the user can fix but upgrading OpenVPN
    ("ovpn_dco_v2", "2.7.1", "ok"),
    ("ovpn", "2.7.1", "warn"),
    ("ovpn_dco_v2", "2.6.3", "warn"),
    ("ovpn", "2.5.9", "ok"),  # no DCO before 2.6
    ("ovpn", "unknown", "ok"),
])
def test_doctor_warns_only_about_the_module_the_installed_openvpn_drives(tmp_path: Path, loaded: str, version: str,
                                                                        level: str) -> None:
    from vpnoffload.deploy import doctor

    found = doctor.check_dco("vpnoffload0", *_sysfs(tmp_path, TUN, loaded, ""), openvpn=version)
    assert found.level == level, found
    if level == "ok":
        assert found.detail == (f"not in use: vpnoffload0 is a tun device; this kernel has the {loaded} module, "
                                f"which OpenVPN {version} does not drive")
        assert found.hint == "OpenVPN 2.6 uses ovpn_dco_v2 only, 2.7 and later the kernel's ovpn"


def test_doctor_asks_about_dco_on_both_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    from vpnoffload.deploy import doctor

    asked: list[str] = []
    monkeypatch.setattr(doctor, "check_dco", lambda device: asked.append(device) or doctor.Finding("ok", "dco", "x"))
    monkeypatch.setattr(doctor, "fatal_checks", lambda: [doctor.Finding("fail", "root", "not root")])
    monkeypatch.setattr(doctor, "check_firewall_backend", lambda root: [])
    for name in ("check_forwarding_config", "check_conntrack_tool"):
        monkeypatch.setattr(doctor, name, lambda: doctor.Finding("ok", "other", ""))
    monkeypatch.setattr(doctor, "check_ipv6", lambda config: doctor.Finding("ok", "ipv6", ""))
    checks = doctor.all_checks(None, "vps")
    assert asked == ["vpnoffload0"] and any(f.check == "dco" for f in checks)
    assert any(f.check == "dco" for f in doctor.all_checks(None, "home"))
