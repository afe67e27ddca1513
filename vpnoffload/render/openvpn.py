"""Turn a Config and the PKI into OpenVPN files: the VPS's server directory and
each home's self-contained ``.ovpn`` profile.

The hardened settings live in ``templates/*.j2`` with comments saying why;
this module only computes the values and writes files with the right modes.
``server_config`` and ``client_profile`` are pure (golden-tested);
``render_vps`` and ``render_home`` write.

Permissions of the server directory, which OpenVPN reads with ``--cd`` into it
and then, after dropping to ``run_as``, keeps re-reading ``crl.pem`` and
``ccd/<home>`` (on every connection):

- the directory is 0711: the unprivileged user can open files by name but not
  list them; because OpenVPN chdir's into it as root, its ancestors may stay
  0700 (relative lookups never walk them);
- ``server.key`` and ``tls-crypt.key`` are 0600 (read once, as root; kept in
  memory by ``persist-key``);
- everything else (config, certificates, CRL, ``ccd/`` 0755 and its files)
  is 0644: public material the unprivileged process must be able to read.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jinja2

from vpnoffload.errors import ConfigError, NotSetUpError
from vpnoffload.model import Config, Home
from vpnoffload.fsio import make_dir, write_atomic
from vpnoffload.names import check_name, shown
from vpnoffload.pki import Pki
from vpnoffload.render import jinja
from vpnoffload.render.outdir import write_tree

SECRET = 0o600
PUBLIC = 0o644
SERVER_DIR_MODE = 0o711
CCD_DIR_MODE = 0o755
PROFILE_DIR_MODE = 0o700

_SAFE_WORD = re.compile(r"[A-Za-z0-9_./:@+=,-]+")

#: The data ciphers both ends offer: AEAD only, both carried by the kernel's data channel (DCO).
#: OpenVPN's server takes the first of *its* list that the home also offers, so the VPS's order
#: decides: AES-GCM first on a CPU with AES instructions, ChaCha20-Poly1305 first on one without
#: (docs/benchmarks.md, item 6: without them AES-GCM costs the VPS several times more CPU).
AES_FIRST = ("AES-256-GCM", "CHACHA20-POLY1305")
CHACHA_FIRST = ("CHACHA20-POLY1305", "AES-256-GCM")


def cpu_has_aes(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True if this CPU has AES instructions (x86 ``flags``, ARM ``Features``: ``aes``); True if unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return True
    flags = [line.partition(":")[2].split() for line in text.splitlines()
             if line.split(":")[0].strip() in ("flags", "Features")]
    return not flags or "aes" in flags[0]


def data_ciphers(aes: bool) -> str:
    """The ``data-ciphers`` value for a VPS whose CPU has (``aes``) or lacks AES instructions."""
    return ":".join(AES_FIRST if aes else CHACHA_FIRST)


def ovpn_quote(value: object, field: str | None = None) -> str:
    """Make ``value`` one OpenVPN config argument: bare if safe, else double-quoted.

    autoescape is off (these are not HTML), so this filter is what stops a
    value with spaces, quotes or a newline from becoming extra directives.
    ConfigError names ``field`` and repeats at most ~60 characters of the value.
    """
    text = str(value)
    if _SAFE_WORD.fullmatch(text):
        return text
    if not text or any(c in text for c in "\n\r\0"):
        raise ConfigError(f"{shown(text)} cannot be written into an OpenVPN config", field=field)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja.environment(ovpn_quote=ovpn_quote)


def _render(template: str, **values: object) -> str:
    return environment().get_template(template).render(**values)


# ----- pure renderers -----------------------------------------------------------


def server_config(config: Config, *, status_path: Path | None = None, run_as: str | None = None,
                  management_path: Path | None = None, aes: bool = True) -> str:
    """The text of ``server.conf`` (files referenced relative to its directory); ``aes``: the
    VPS's CPU has AES instructions (see AES_FIRST)."""
    tunnel = config.tunnel
    return _render(
        "server.conf.j2",
        device=ovpn_quote(tunnel.device, "tunnel"),
        network=tunnel.subnet.network_address,
        netmask=tunnel.subnet.netmask,
        subnet6=tunnel.subnet6,
        local=config.vps.bind_address,  # the private address on 1:1-NAT clouds (the public one is on no interface)
        port=tunnel.port,
        proto=tunnel.proto,
        run_as=run_as,
        status_path=status_path,
        management_path=management_path,
        data_ciphers=data_ciphers(aes),
    )


def ccd_entry(config: Config, home: Home) -> str:
    """The ``ccd/<home>`` file: the home's fixed address in the tunnel subnet (and in subnet6)."""
    if home.address not in config.tunnel.subnet:
        raise ConfigError(f"{home.address} is outside {config.tunnel.subnet}", field=f"homes.{home.name}.address")
    subnet6 = config.tunnel.subnet6
    address6 = None
    if home.address6 is not None and subnet6 is not None:
        address6 = f"{home.address6}/{subnet6.prefixlen}"
    return _render("ccd.j2", home=check_name(home.name, f"homes.{home.name}"), address=home.address, netmask=config.tunnel.subnet.netmask,
                   address6=address6, server6=config.tunnel.server_address6)


def client_profile(config: Config, pki: Pki, home: str) -> str:
    """The text of ``<home>.ovpn``: settings plus inline CA, cert, key and tls-crypt key."""
    _usable_home(config, pki, home)
    return _render(
        "client.ovpn.j2",
        home=home,
        device=ovpn_quote(config.tunnel.device, "tunnel"),
        remote=config.vps.address,
        port=config.tunnel.port,
        proto=config.tunnel.proto,
        server_name=pki.server_name,
        ca=_pem(pki.ca_cert()),
        cert=_pem(pki.cert(home)),
        key=_pem(pki.key(home)),
        tls_crypt=_pem(pki.tls_crypt_key()),
    )


def _pem(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _usable_home(config: Config, pki: Pki, home: str) -> None:
    if home not in config.homes:
        raise ConfigError(f"no home named {home!r} in the config")
    if not pki.exists(home):
        raise NotSetUpError(f"home {home!r} has no certificate yet: issue one first")
    if pki.is_revoked(home):
        raise ConfigError(f"the certificate of home {home!r} is revoked: issue a new one first")


# ----- writers -----------------------------------------------------------------


def render_vps(
    config: Config,
    pki: Pki,
    out: Path,
    *,
    status_path: Path | None = None,
    run_as: str | None = "vpnoffload",
    set_mode: bool = False,
    management_path: Path | None = None,
    aes: bool | None = None,
) -> list[Path]:
    """Write the server directory ``out`` (see the module docstring for modes).

    A new ``out`` is made 0711; an existing one keeps its mode unless
    ``set_mode`` (the caller just made it, e.g. a scratch directory for
    ``up vps``). ``ccd/`` must not be a symlink. It ends up holding one file
    per configured home; ccd files vpnoffload wrote for homes no longer in the
    config are deleted (with ``ccd-exclusive`` a ccd file is what lets a
    certificate in); files it did not write are left alone. ``aes`` None: this
    machine's CPU decides the cipher order (the VPS renders its own server.conf).
    """
    out = Path(out).absolute()
    ccd = out / "ccd"
    files: dict[Path, tuple[str, int]] = {
        out / "server.conf": (server_config(config, status_path=status_path, run_as=run_as,
                                            management_path=management_path,
                                            aes=cpu_has_aes() if aes is None else aes), PUBLIC),
        out / "ca.crt": (pki.ca_cert(), PUBLIC),
        out / "server.crt": (pki.cert(pki.server_name), PUBLIC),
        out / "server.key": (pki.key(pki.server_name), SECRET),
        out / "tls-crypt.key": (pki.tls_crypt_key(), SECRET),
        out / "crl.pem": (pki.crl(), PUBLIC),
    }
    files.update({ccd / name: (ccd_entry(config, home), PUBLIC) for name, home in config.homes.items()})
    return write_tree(out, files, dir_mode=SERVER_DIR_MODE, subdirs={"ccd": CCD_DIR_MODE}, set_mode=set_mode,
                      owned_globs=("ccd/*",))


def render_home(config: Config, pki: Pki, home: str, out: Path) -> Path:
    """Write ``out/<home>.ovpn`` (0600; ``out`` is created 0700 if missing)."""
    text = client_profile(config, pki, home)
    out = make_dir(Path(out), PROFILE_DIR_MODE)
    path = out / f"{check_name(home, '--home')}.ovpn"
    write_atomic(path, text, SECRET)
    return path
