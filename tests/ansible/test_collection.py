"""The Ansible collection vpnoffload.fleet as Ansible itself checks it, in place.

``ansible-test sanity`` runs on the collection where it lives (ansible/ansible_collections/
vpnoffload/fleet) with this venv's Python. Only the sanity tests that need nothing from the
network are selected: the others (OFFLINE_MISSING) make ansible-test download its pip bootstrap
script and pinned linters into fresh virtualenvs (see docs/testing.md); ansible-doc's part of
them is run here directly, against every module's DOCUMENTATION, EXAMPLES and RETURN.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prereq import missing

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
COLLECTION = ANSIBLE / "ansible_collections" / "vpnoffload" / "fleet"
BIN = Path(sys.executable).parent
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

#: ansible-test sanity tests that run offline.
OFFLINE = ("action-plugin-docs", "changelog", "compile", "empty-init", "ignores", "line-endings", "no-assert",
           "no-get-exception", "no-illegal-filenames", "no-smart-quotes", "pslint", "replace-urlopen", "shebang",
           "shellcheck", "symlinks", "use-argspec-type-path", "use-compat-six")
#: The ones that need the network (a pip bootstrap from ci-files.testing.ansible.com, pinned packages).
OFFLINE_MISSING = ("ansible-doc", "import", "pep8", "pylint", "runtime-metadata", "validate-modules", "yamllint")
MODULES = sorted(p.stem for p in (COLLECTION / "plugins" / "modules").glob("*.py"))


def ansible(tool: str, *args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = BIN / tool
    if not exe.exists():
        missing(f"{tool} is not in the venv: pip install -e '.[test]' (ansible-core)")
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ANSIBLE), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_ansible_test_sanity_in_place() -> None:
    selected = [arg for name in OFFLINE for arg in ("--test", name)]
    done = ansible("ansible-test", "sanity", "--python", PYTHON, *selected, cwd=COLLECTION)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in OFFLINE:
        assert f'Running sanity test "{name}"' in done.stdout + done.stderr, name


def test_every_module_is_documented() -> None:
    assert MODULES == ["vpnoffload_export", "vpnoffload_import", "vpnoffload_info", "vpnoffload_init",
                       "vpnoffload_pki", "vpnoffload_service", "vpnoffload_units", "vpnoffload_up",
                       "vpnoffload_watch"]
    done = ansible("ansible-doc", "--json", *(f"vpnoffload.fleet.{name}" for name in MODULES))
    assert done.returncode == 0, done.stderr
    import json

    docs = json.loads(done.stdout)
    for name in MODULES:
        doc = docs[f"vpnoffload.fleet.{name}"]
        assert doc["doc"]["short_description"] and doc["examples"] and doc["return"], name
        assert doc["doc"]["attributes"]["check_mode"]["support"] == "full", name


def test_site_playbook_parses(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.json"
    inventory.write_text('{"vpnoffload_vps": {"hosts": {"vps1": {}}}, "vpnoffload_home": {"hosts": {"home": {}}}}')
    done = ansible("ansible-playbook", "-i", str(inventory), "vpnoffload.fleet.site", "--syntax-check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_collection_builds(tmp_path: Path) -> None:
    done = ansible("ansible-galaxy", "collection", "build", str(COLLECTION), "--output-path", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["vpnoffload-fleet-0.1.0.tar.gz"]


def fleet_inventory() -> str:
    """The inventory docs/fleet.md shows (the YAML block after its marker)."""
    text = (REPO / "docs" / "fleet.md").read_text()
    block = text.split("<!-- fleet: inventory -->", 1)[1]
    return block.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_documented_inventory_is_a_fleet(tmp_path: Path) -> None:
    import json

    inventory = tmp_path / "inventory.yml"
    inventory.write_text(fleet_inventory())
    done = ansible("ansible-inventory", "-i", str(inventory), "--list")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["vpnoffload_vps"]["hosts"] == ["ams", "fra"]
    assert found["vpnoffload_home"]["hosts"] == ["home", "attic"]
    named = {home for vps in ("ams", "fra") for service in found["_meta"]["hostvars"][vps]["vpnoffload_services"]
             for home in service["homes"]}
    assert named == {"home", "attic"}
    done = ansible("ansible-playbook", "-i", str(inventory), "vpnoffload.fleet.site", "--syntax-check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_inventory_variable_is_documented() -> None:
    import re

    used: set[str] = set()
    for path in [*(COLLECTION / "roles").rglob("*.yml"), *(COLLECTION / "playbooks").rglob("*.yml")]:
        used |= set(re.findall(r"(?<![\w.])(vpnoffload_[a-z_]+)", path.read_text()))
    modules = {f"vpnoffload_{name.removeprefix('vpnoffload_')}" for name in MODULES}
    variables = used - modules
    assert {"vpnoffload_bin", "vpnoffload_package", "vpnoffload_venv", "vpnoffload_config_dir", "vpnoffload_systemd",
            "vpnoffload_public_address", "vpnoffload_tunnel_subnet", "vpnoffload_services", "vpnoffload_vps",
            "vpnoffload_home"} <= variables
    for doc in (COLLECTION / "README.md", REPO / "docs" / "fleet.md"):
        text = doc.read_text()
        assert not [name for name in sorted(variables) if name not in text], doc


class _Spec(Exception):
    """Carries a module's argument_spec out of its main()."""


@pytest.mark.parametrize("name", MODULES)
def test_documented_options_are_the_argument_spec(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What validate-modules checks first (it needs the network here): every option of the
    argument_spec documented with its type, default and choices, and nothing documented that is not."""
    import importlib
    import json

    try:
        from ansible.module_utils import basic
    except ImportError:
        missing("ansible-core is not in the venv: pip install -e '.[test]'")

    def capture(self: object, argument_spec: dict, **_: object) -> None:
        raise _Spec(argument_spec)

    monkeypatch.syspath_prepend(str(ANSIBLE))
    monkeypatch.setattr(basic.AnsibleModule, "__init__", capture)
    module = importlib.import_module(f"ansible_collections.vpnoffload.fleet.plugins.modules.{name}")
    with pytest.raises(_Spec) as caught:
        module.main()
    spec = caught.value.args[0]
    done = ansible("ansible-doc", "--json", f"vpnoffload.fleet.{name}")
    options = json.loads(done.stdout)[f"vpnoffload.fleet.{name}"]["doc"]["options"]
    assert sorted(options) == sorted(spec)
    for option, want in spec.items():
        doc = options[option]
        assert doc.get("type", "str") == want.get("type", "str"), option
        assert doc.get("default") == want.get("default"), option
        assert doc.get("choices") == want.get("choices"), option
        assert bool(doc.get("required")) == bool(want.get("required")), option
        assert doc.get("elements") == want.get("elements"), option


def test_a_failed_export_says_why_and_shows_no_key(tmp_path: Path) -> None:
    """The role's export task hides its result (the profile holds a private key); when it fails,
    the play still says why, in vpnoffload's own words. Both hosts are this machine (local)."""
    vps, attic = tmp_path / "vps", tmp_path / "attic"
    vps.mkdir()
    init = subprocess.run([str(BIN / "vpnoffload"), "-c", str(vps / "vpnoffload.toml"), "init", "--vps-address",
                           "203.0.113.10", "--tunnel-subnet", "198.51.100.0/24"], capture_output=True, text=True,
                          check=False)
    assert init.returncode == 0, init.stderr
    inventory = tmp_path / "inventory.yml"
    common = f'ansible_connection: local\n      ansible_python_interpreter: "{sys.executable}"'
    inventory.write_text(f"""all:
  hosts:
    vps:
      {common}
      _vpnoffload_bin: "{BIN / 'vpnoffload'}"
      vpnoffload_config_dir: "{vps}"
    attic:
      {common}
      vpnoffload_config_dir: "{attic}"
""")
    playbook = tmp_path / "join.yml"
    playbook.write_text("""- hosts: attic
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: vpnoffload.fleet.home
        tasks_from: join
      vars:
        _vpnoffload_vps: vps
        _vpnoffload_index: 0
""")
    done = ansible("ansible-playbook", "-i", str(inventory), str(playbook), timeout=120)
    assert done.returncode != 0, done.stdout
    assert "unknown home box 'attic'" in done.stdout and "censored" not in done.stdout, done.stdout[-3000:]
    assert "PRIVATE KEY" not in done.stdout + done.stderr and not attic.exists()
