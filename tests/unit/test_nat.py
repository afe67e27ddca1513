"""1:1-NAT clouds (issue 13, item 1): the config keys, init's detection, the renders,
the rules, the page server's mapping, up's check and doctor's words, on fakes."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fakes import FakeBackend, FakePki, FakeRoutingBackend, FakeTunnel, FakeUsers
from tests.helpers import golden
from vpnoffload import config as cfg
from vpnoffload import deploy, firewall, plan
from vpnoffload.cli.app import app
from vpnoffload.config import edits
from vpnoffload.config.files import parse_text
from vpnoffload.deploy.doctor import check_vps_address
from vpnoffload.errors import BackendError, ConfigError
from vpnoffload.paths import Paths
from vpnoffload.pki import Pki
from vpnoffload.render.openvpn import client_profile, server_config
from vpnoffload.routing import nat
from vpnoffload.routing.state import Address

A = IPv4Address
BASE = """[vps]
address = "203.0.113.10"
{vps}
[tunnel]
subnet = "10.88.0.0/24"

[homes.home]
address = "10.88.0.2"

[services.web]
listen = "80"
target = "8080"
check = "http:/"

[services.blog]
listen = "203.0.113.11:80"
target = "8081"
"""
NATTED = 'local_address = "198.18.0.10"\nnat = { "203.0.113.11" = "198.18.0.11" }\n'


def config_with(vps: str = NATTED):
    return parse_text(BASE.format(vps=vps))


def cloud(*extra: Address, public: bool = False) -> FakeRoutingBackend:
    """A cloud VPS's kernel: 198.18.0.10/24 on eth0 (the default route), the public address nowhere."""
    held = [Address(A("198.18.0.10"), "eth0", 24), *extra]
    if public:
        held.append(Address(A("203.0.113.10"), "eth0", 24))
    return FakeRoutingBackend(devices=("lo", "eth0"), addresses=held, default_device="eth0")


# ----- config -------------------------------------------------------------------------


def test_local_address_and_nat_parse_and_map() -> None:
    vps = config_with().vps
    assert vps.local_address == A("198.18.0.10") and vps.bind_address == A("198.18.0.10")
    assert vps.nat == ((A("203.0.113.11"), A("198.18.0.11")),)
    assert vps.local_of(A("203.0.113.10")) == A("198.18.0.10")
    assert vps.local_of(A("203.0.113.11")) == A("198.18.0.11")
    assert vps.local_of(A("203.0.113.12")) == A("203.0.113.12")  # not mapped: a dedicated address as before
    assert config_with().dedicated_addresses() == [A("198.18.0.11")]  # never the public one
    plain = config_with("")
    assert plain.vps.bind_address == A("203.0.113.10") and plain.dedicated_addresses() == [A("203.0.113.11")]


@pytest.mark.parametrize("vps, field, words", [
    ('local_address = "203.0.113.10"\n', "vps.local_address", "leave local_address out"),
    ('local_address = "nope"\n', "vps.local_address", "not an IPv4 address"),
    ('local_address = "127.0.0.1"\n', "vps.local_address", "loopback"),
    ('local_address = "10.88.0.7"\n', "tunnel.subnet", "contains the VPS address 10.88.0.7"),
    ('nat = "198.18.0.11"\n', "vps.nat", "must be a table"),
    ('nat = { "203.0.113.10" = "198.18.0.10" }\n', "vps.nat.203.0.113.10", "local_address instead"),
    ('nat = { "203.0.113.11" = "x" }\n', "vps.nat.203.0.113.11", "not an IPv4 address"),
    ('nat = { "2001:db8::1" = "198.18.0.11" }\n', "vps.nat.2001:db8::1", "IPv6"),
    ('local_address = "198.18.0.10"\nnat = { "203.0.113.11" = "198.18.0.10" }\n', "vps.nat.203.0.113.11", "already"),
    ('nat = { "203.0.113.11" = "198.18.0.9", "203.0.113.12" = "198.18.0.9" }\n', "vps.nat.203.0.113.12", "already"),
    ('nat = { "203.0.113.11" = "10.88.0.9" }\n', "tunnel.subnet", "contains the VPS address 10.88.0.9"),
    ('local = "198.18.0.10"\n', "vps.local", "unknown key"),
])
def test_bad_nat_keys_name_the_field(vps: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_with(vps)
    assert err.value.field == field and words in str(err.value), (err.value.field, str(err.value))


# ----- renders and rules -----------------------------------------------------------------


def test_openvpn_binds_the_local_address_and_home_dials_the_public_one() -> None:
    config = config_with()
    text = server_config(config, status_path=Path("/var/lib/vpnoffload/run/status"), run_as="vpnoffload")
    golden("server-nat.conf", text)
    assert "\nlocal 198.18.0.10\n" in text and "203.0.113.10" not in text
    assert "\nremote 203.0.113.10 1194 udp\n" in client_profile(config, FakePki(), "home")  # type: ignore[arg-type]


def test_dnat_and_page_match_and_target_the_local_addresses() -> None:
    config = config_with()
    normal = {" ".join(r.args) for r in firewall.vps_ruleset(config).rules if r.chain == "VPNOFFLOAD-DNAT"}
    assert "-d 198.18.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.88.0.2:8080" in normal
    assert "-d 198.18.0.11/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.88.0.2:8081" in normal
    down = {" ".join(r.args) for r in firewall.vps_ruleset(config, fallback=frozenset({"web"})).rules}
    assert "-d 198.18.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.18.0.10:503" in down
    every = " ".join(" ".join(r.args) for r in firewall.vps_ruleset(config, fallback=frozenset({"web"})).rules)
    assert "203.0.113." not in every  # no packet carries the public addresses here
    assert firewall.fallback_address(config, config.services["web"]) == "198.18.0.10:503"


def test_page_server_maps_original_destinations_by_the_local_address(tmp_path: Path) -> None:
    from vpnoffload.fallback import pageserver
    from vpnoffload.lean import snapshot

    config = config_with()
    paths = Paths(config=tmp_path / "vpnoffload.toml", state=tmp_path / "state")
    paths.pages.mkdir(parents=True)
    (paths.pages / "web.html").write_bytes(b"web page")
    (paths.pages / "blog.html").write_bytes(b"blog page")
    view = snapshot.ConfigView(snapshot.build(config, paths))
    assert view.vps_local_address == "198.18.0.10"
    assert pageserver.load_pages(view, str(paths.pages)) == {("198.18.0.10", 80): b"web page",
                                                             ("198.18.0.11", 80): b"blog page"}


# ----- detection (init) and the check (up) -------------------------------------------------


def test_find_local_on_a_cloud_and_on_a_plain_vps() -> None:
    found = nat.find_local(A("203.0.113.10"), cloud(Address(A("198.18.0.11"), "eth0", 32)))
    assert (found.local, found.device, found.natted) == (A("198.18.0.10"), "eth0", True)
    assert str(found) == "203.0.113.10 is on no interface: 1:1 NAT to 198.18.0.10 on eth0"
    # A /32 added earlier (a dedicated address) is not the primary one, whatever its order.
    first32 = FakeRoutingBackend(devices=("lo", "eth0"), default_device="eth0", addresses=[
        Address(A("198.18.0.11"), "eth0", 32), Address(A("198.18.0.10"), "eth0", 24)])
    assert nat.find_local(A("203.0.113.10"), first32).local == A("198.18.0.10")
    plain = nat.find_local(A("203.0.113.10"), cloud(public=True))
    assert not plain.natted and str(plain) == "203.0.113.10 is on eth0"
    with pytest.raises(BackendError, match="no interface holds or routes to"):
        nat.find_local(A("203.0.113.10"), FakeRoutingBackend())


def test_init_writes_the_local_address_it_found(tmp_path: Path) -> None:
    paths = Paths(config=tmp_path / "c.toml", state=tmp_path / "state")
    found = edits.init(paths, vps_address="203.0.113.10", tunnel_subnet="10.88.0.0/24", tunnel_subnet6=None,
                       port=1194, proto="udp", home="home", force=False,
                       find_local=lambda a: nat.find_local(a, cloud()))
    text = paths.config.read_text()
    assert found.natted and 'local_address = "198.18.0.10"' in text
    assert "1:1" in text and "found by init on eth0" in text  # the comment says why
    assert cfg.load(paths.config).vps.bind_address == A("198.18.0.10")


def test_init_without_nat_or_without_an_answer_writes_no_local_address(tmp_path: Path) -> None:
    for n, finder in enumerate((lambda a: nat.find_local(a, cloud(public=True)),
                                lambda a: nat.find_local(a, FakeRoutingBackend()))):  # raises: nothing routes
        paths = Paths(config=tmp_path / f"{n}.toml", state=tmp_path / f"state{n}")
        edits.init(paths, vps_address="203.0.113.10", tunnel_subnet="10.88.0.0/24", tunnel_subnet6=None,
                   port=1194, proto="udp", home="home", force=False, find_local=finder)
        assert "local_address" not in paths.config.read_text()


def test_cli_init_says_what_it_found_and_takes_local_address(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(nat, "_backend", lambda backend: cloud() if backend is None else backend)
    result = CliRunner().invoke(app, ["-c", str(tmp_path / "a.toml"), "init", "--vps-address", "203.0.113.10"])
    assert result.exit_code == 0, result.output
    assert "203.0.113.10 is on no interface: 1:1 NAT to 198.18.0.10 on eth0" in result.output
    given = tmp_path / "b.toml"
    result = CliRunner().invoke(app, ["-c", str(given), "--state-dir", str(tmp_path / "sb"), "init",
                                      "--vps-address", "203.0.113.10", "--local-address", "198.18.7.7"])
    assert result.exit_code == 0 and "1:1 NAT" not in result.output, result.output
    assert 'local_address = "198.18.7.7"' in given.read_text() and "--local-address" in given.read_text()
    bad = CliRunner().invoke(app, ["-c", str(tmp_path / "c.toml"), "--state-dir", str(tmp_path / "sc"), "init",
                                   "--vps-address", "203.0.113.10", "--local-address", "203.0.113.10"])
    assert bad.exit_code == 2 and "leave local_address out" in bad.output and not (tmp_path / "c.toml").exists()


def test_require_bindable_says_what_to_set() -> None:
    nat.require_bindable(config_with(), cloud())
    nat.require_bindable(config_with(""), cloud(public=True))
    with pytest.raises(ConfigError) as err:
        nat.require_bindable(config_with(""), cloud())
    assert 'set local_address = "198.18.0.10" in [vps] (the address of eth0)' in str(err.value)
    with pytest.raises(ConfigError, match="198.18.0.10 is on no interface of this host"):
        nat.require_bindable(config_with(), FakeRoutingBackend(devices=("lo", "eth0"), default_device="eth0"))


@pytest.fixture
def cloud_env(tmp_path: Path):
    paths = Paths(config=tmp_path / "vpnoffload.toml", state=tmp_path / "state")
    paths.config.write_text(BASE.format(vps=NATTED))
    Pki.create(paths.pki).issue("home")
    proc = tmp_path / "proc"
    (proc / "net/ipv4").mkdir(parents=True)
    (proc / "net/ipv4/ip_forward").write_text("0\n")
    tunnels: dict[str, FakeTunnel] = {}
    backends = deploy.Backends(
        page_factory=lambda paths: tunnels.setdefault("pages", FakeTunnel("pages", Path(), Path(), Path())),
        firewall=FakeBackend(), routing=cloud(), proc_root=proc, users=FakeUsers(),
        tunnel_factory=lambda **kw: tunnels.setdefault(kw["name"], FakeTunnel(**kw)),
    )
    return paths, backends


def test_up_vps_adds_the_private_address_of_a_mapped_one_and_binds_the_local_one(cloud_env) -> None:
    paths, b = cloud_env
    actions = deploy.plan_up_vps(cfg.load(paths.config), paths, b)
    text = "\n".join(plan.summaries(actions))
    assert "add address 198.18.0.11/32 dev eth0" in text and "203.0.113.11" not in text, text
    plan.apply(actions)
    assert "\nlocal 198.18.0.10\n" in (paths.server_dir / "server.conf").read_text()
    assert (paths.pages / "listen.txt").read_text().startswith("198.18.0.10:503 ")
    plan.apply(deploy.plan_down_vps(paths, b))
    assert [str(a.address) for a in b.routing.address_list] == ["198.18.0.10"]


def test_up_vps_without_local_address_changes_nothing(cloud_env) -> None:
    paths, b = cloud_env
    paths.config.write_text(BASE.format(vps=""))
    with pytest.raises(ConfigError, match='local_address = "198.18.0.10"'):
        deploy.plan_up_vps(cfg.load(paths.config), paths, b)
    assert b.firewall.dump() == FakeBackend().dump() and b.routing.calls == []


def test_doctor_explains_what_it_found() -> None:
    lines = [(f.level, f.detail) for f in check_vps_address(config_with(), cloud())]
    assert lines == [("ok", "203.0.113.10 is on no interface: 1:1 NAT to 198.18.0.10 on eth0 ([vps] local_address)"),
                     ("ok", "203.0.113.11 maps 1:1 to 198.18.0.11 ([vps] nat), not on an interface yet "
                            "('up vps' adds it)")]
    assert check_vps_address(config_with(""), cloud(public=True))[0].detail == "203.0.113.10 is on eth0"
    unset = check_vps_address(config_with(""), cloud())[0]
    assert unset.level == "warn" and "1:1 NAT to 198.18.0.10 on eth0" in unset.detail and "local_address" in unset.hint


def test_host_firewall_opens_openvpn_on_the_local_address() -> None:
    from vpnoffload.firewall.host.openings import home_openings, vps_openings

    config = config_with()
    openvpn = [o for o in vps_openings(config, "eth0") if o.why == "OpenVPN server"]
    assert [o.daddr for o in openvpn] == ["198.18.0.10"]
    assert {o.daddr for o in home_openings(config, "home") if o.hook == "output" and o.dport == 1194} == {"203.0.113.10"}


def test_proxy_include_listens_where_a_mapped_dedicated_address_arrives() -> None:
    """nginx/HAProxy on a 1:1-NAT cloud: a dedicated proxy address listens on its private mapping."""
    from pathlib import Path

    from vpnoffload.render import webserver

    text = BASE.format(vps=NATTED).replace(
        '[services.blog]\nlisten = "203.0.113.11:80"\ntarget = "8081"\n',
        '[services.blog]\nlisten = "203.0.113.11:80"\ntarget = "8081"\nvia = "proxy"\nhostname = "blog.example.org"\n')
    out = Path("/etc/nginx/vpnoffload")
    nginx = webserver.nginx_files(parse_text(text), out)[out / "vpnoffload.conf"]
    assert "listen 198.18.0.11:80;" in nginx and "203.0.113.11" not in nginx
