"""The collection's modules run as Ansible runs them (a module file, its arguments as JSON) on a
real vpnoffload config in a temp directory: check mode changes nothing, a second run is unchanged,
and what they report is what vpnoffload did. No root: these modules only edit the config and PKI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.prereq import missing

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "ansible" / "ansible_collections" / "vpnoffload" / "fleet" / "plugins" / "modules"
VPNOFFLOAD = str(Path(sys.executable).parent / "vpnoffload")


def module(which: str, config: Path, check_mode: bool = False, **args: object) -> dict:
    """Run ``vpnoffload_<which>`` with ``args``; its JSON result."""
    try:
        import ansible  # noqa: F401
    except ImportError:
        missing("ansible-core is not in the venv: pip install -e '.[test]'")
    common = {} if which == "import" else {"bin": VPNOFFLOAD, "config": str(config)}  # import runs no vpnoffload
    payload = {"ANSIBLE_MODULE_ARGS": {**common, "_ansible_check_mode": check_mode, "_ansible_diff": True, **args}}
    config.parent.mkdir(parents=True, exist_ok=True)
    argfile = config.parent / f"args-{which}.json"
    argfile.write_text(json.dumps(payload))
    env = {**os.environ, "PYTHONPATH": str(REPO / "ansible")}
    done = subprocess.run([sys.executable, str(MODULES / f"vpnoffload_{which}.py"), str(argfile)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    return json.loads(done.stdout)


def services(config: Path) -> dict:
    return tomllib.loads(config.read_text()).get("services", {})


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "vpnoffload.toml"
    done = module("init", path, vps_address="203.0.113.10", home="home", local_address="198.18.0.10")
    assert done["changed"], done
    return path


def test_init_once_and_never_over_another_vps(tmp_path: Path) -> None:
    path = tmp_path / "vpnoffload.toml"
    assert module("init", path, check_mode=True, vps_address="203.0.113.10")["changed"]
    assert not path.exists()
    assert module("init", path, vps_address="203.0.113.10", tunnel_subnet="10.89.0.0/24",
                  local_address="198.18.0.10")["changed"]
    assert not module("init", path, vps_address="203.0.113.10", tunnel_subnet="10.89.0.0/24")["changed"]
    refused = module("init", path, vps_address="203.0.113.20")
    assert refused["failed"] and refused["msg"].startswith("vps.address: "), refused


def test_service_check_mode_then_made_then_unchanged(config: Path) -> None:
    wanted = dict(name="blog", listen="80", target="8080", check="http:/", hostname="blog.example.org")
    checked = module("service", config, check_mode=True, **wanted)
    assert checked["changed"] and "[services.blog]" in checked["diff"]["after"], checked
    assert services(config) == {}
    assert module("service", config, **wanted)["changed"]
    assert services(config)["blog"]["hostname"] == "blog.example.org"
    assert not module("service", config, **wanted)["changed"]


def test_a_changed_service_is_changed_and_others_untouched(config: Path) -> None:
    module("service", config, name="git", listen="2222", target="22")
    module("service", config, name="blog", listen="80", target="8080")
    before = services(config)["git"]
    changed = module("service", config, name="blog", listen="80", target="8081", allow=["198.51.100.0/24"])
    assert changed["changed"], changed
    assert services(config)["blog"]["target"] == "8081"
    assert services(config)["blog"]["allow"] == ["198.51.100.0/24"]
    assert services(config)["git"] == before


def test_bad_input_fails_naming_the_field_and_changes_nothing(config: Path) -> None:
    text = config.read_text()
    refused = module("service", config, name="web", listen="70000", target="8080")
    assert refused["failed"] and "services.web.listen" in refused["msg"], refused
    assert config.read_text() == text


def test_service_absent(config: Path) -> None:
    module("service", config, name="blog", listen="80", target="8080")
    assert module("service", config, check_mode=True, name="blog", state="absent")["changed"]
    assert "blog" in services(config)
    assert module("service", config, name="blog", state="absent")["changed"]
    assert services(config) == {}
    assert not module("service", config, name="blog", state="absent")["changed"]


def test_pki_issue_and_revoke_follow_the_state(config: Path) -> None:
    assert module("pki", config, check_mode=True, name="attic")["changed"]
    assert module("info", config)["certificates"] == {"home": "valid"}
    assert module("pki", config, name="attic")["status"] == "valid"
    assert not module("pki", config, name="attic")["changed"]
    module("service", config, name="blog", listen="80", target="8080", homes=["home", "attic"])
    info = module("info", config)
    assert info["certificates"] == {"home": "valid", "attic": "valid"}
    assert info["services"]["blog"]["homes"] == ["home", "attic"]
    # vpnoffload refuses to revoke a home a service names: the role removes services first.
    assert module("pki", config, name="attic", state="absent")["failed"]
    module("service", config, name="blog", listen="80", target="8080", homes=["home"])
    revoked = module("pki", config, name="attic", state="absent")
    assert revoked["changed"] and revoked["diff"]["after"] == "attic: revoked\n", revoked
    assert not module("pki", config, name="attic", state="absent")["changed"]
    assert module("info", config)["certificates"]["attic"] == "revoked"
    # vpnoffload issues no second certificate under a revoked name: said before anything is tried.
    again = module("pki", config, check_mode=True, name="attic")
    assert again["failed"] and again["msg"].startswith("home name: "), again


def test_export_reads_the_config_and_renders_the_profile_leaving_no_scratch(config: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    done = module("export", config, check_mode=True, home="home")
    assert not done["changed"] and done["exists"], done
    assert done["config"] == config.read_text()
    assert "PRIVATE KEY" in done["profile"] and "<ca>" in done["profile"], sorted(done)
    assert list(scratch.iterdir()) == []  # the scratch directory went
    # A home box without a certificate: render fails, named, and still no scratch left.
    refused = module("export", config, home="attic")
    assert refused["failed"] and "render home" in refused["msg"], refused
    assert list(scratch.iterdir()) == []
    nothing = module("export", tmp_path / "none" / "vpnoffload.toml", home="home")
    assert (nothing["changed"], nothing["exists"], nothing["config"], nothing["profile"]) == (False, False, "", ""), \
        nothing


def test_import_writes_config_and_profile_once_with_their_modes(tmp_path: Path) -> None:
    dest = tmp_path / "home" / "vps2"
    args = dict(dest=str(dest), home="home", content="[vps]\naddress = '203.0.113.10'\n",
                profile="<key>\n-----BEGIN PRIVATE KEY-----\nsecret\n</key>\n")
    checked = module("import", tmp_path / "unused.toml", check_mode=True, **args)
    assert checked["changed"] and not dest.exists(), checked
    assert "[vps]" in checked["diff"][0]["after"] and "secret" not in json.dumps(checked), checked
    done = module("import", tmp_path / "unused.toml", **args)
    assert done["changed"] and "secret" not in json.dumps(done), done
    assert (dest / "vpnoffload.toml").read_text() == args["content"]
    assert (dest / "state" / "home.ovpn").read_text() == args["profile"]
    modes = {path: oct(path.stat().st_mode & 0o777) for path in (dest, dest / "state", dest / "vpnoffload.toml",
                                                                  dest / "state" / "home.ovpn")}
    assert list(modes.values()) == ["0o755", "0o700", "0o644", "0o600"], modes
    assert not module("import", tmp_path / "unused.toml", **args)["changed"]
    # A new profile (a new certificate) or a mode changed by hand: changed, the rest untouched.
    (dest / "vpnoffload.toml").chmod(0o600)
    again = module("import", tmp_path / "unused.toml", **{**args, "profile": args["profile"] + "# new\n"})
    assert again["changed"] and sorted(again["changed_paths"]) == sorted(
        [str(dest / "vpnoffload.toml"), str(dest / "state" / "home.ovpn")]), again
    assert oct((dest / "vpnoffload.toml").stat().st_mode & 0o777) == "0o644"
    assert (dest / "state" / "home.ovpn").read_text().endswith("# new\n")
    assert sorted(p.name for p in (dest / "state").iterdir()) == ["home.ovpn"]  # no temporary file left
