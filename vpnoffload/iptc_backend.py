"""The one module that touches iptables: python-iptables on the legacy x_tables.

python-iptables (``iptc``) is imported lazily: it costs ~20 MB of RSS, and the
watchdog should pay that only if it changes rules. Its known traps, and how
this module avoids them:

* It is not thread-safe and caches one libiptc handle per table for the whole
  process: use one :class:`IptcBackend` from one thread, and never run
  ``iptables`` commands that change tables in the same process.
* With autocommit on, every change is a commit of the whole table; we turn it
  off, stage every change for a table in the handle, commit once (libiptc
  swaps the whole table atomically), and always ``refresh()`` afterwards,
  which also throws away staged changes after a failure.
* A commit replaces the table the handle was read from; if someone else
  changed it in between, the kernel refuses (EAGAIN). We hold the xtables lock
  (the one ``iptables -w`` takes) from the read to the commit, so well-behaved
  iptables users wait for us and we for them.
* Constructing a rule with a jump target makes python-iptables look for that
  chain in *every* table, which loads (and registers in this network
  namespace) mangle, raw and security too; we tell it those are unavailable.
* Its errors (IPTCError, XTablesError, ValueError from extension parsers) are
  turned into one-line :class:`BackendError` messages here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Any

from vpnoffload.errors import BackendError
from vpnoffload.firewall import TABLES, Rule, Ruleset, is_owned, table_content

DEFAULT_LOCKFILE = "/run/xtables.lock"
LOCKFILE_ENV = "XTABLES_LOCKFILE"  # honoured by iptables itself, so by us too
LOCK_TIMEOUT = 10.0

_ENTRY_ATTRS = {"-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface", "-p": "protocol"}


# --------------------------------------------------------------------------
# The xtables lock


def lockfile_path() -> str:
    return os.environ.get(LOCKFILE_ENV) or DEFAULT_LOCKFILE


@contextlib.contextmanager
def xtables_lock(timeout: float = LOCK_TIMEOUT, path: str | None = None) -> Iterator[None]:
    """Hold the lock every ``iptables`` command takes (flock on /run/xtables.lock).

    Waits up to ``timeout`` seconds, then raises BackendError. The lock is
    machine-wide (not per network namespace), like iptables' own.
    """
    path = path or lockfile_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackendError(f"cannot open the xtables lock {path}: {exc.strerror or exc}") from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BackendError(
                        f"another program has held the xtables lock {path} for {timeout:g} s "
                        "(a hung iptables command?); try again"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing drops the flock


# --------------------------------------------------------------------------
# Error translation


def _iptc() -> Any:
    """Import python-iptables on first use, and keep it to the tables we use."""
    try:
        import iptc  # noqa: PLC0415 - deliberately lazy, see module docstring
    except (ImportError, OSError) as exc:  # the module, or libiptc/libxtables missing
        raise BackendError(f"cannot load python-iptables: {exc}") from exc
    names = getattr(iptc.Table, "existing_table_names", None)
    if isinstance(names, dict):
        for table in iptc.Table.ALL:
            if table not in TABLES:
                names.setdefault(table, False)
    return iptc


def _clean(exc: BaseException) -> str:
    """python-iptables messages embed libiptc's bytes repr: b'No such file...'."""
    return re.sub(r"b(['\"])(.*?)\1", r"\2", str(exc)).rstrip(".").replace("\n", " ")


def _hint(message: str) -> str:
    found = re.search(r"can't find (match|target) (\S+)", message)
    if found:
        kind, name = found.groups()
        return f"cannot load the {name} {kind} (are its kernel module and xtables extension available?)"
    lowered = message.lower()
    if "resource temporarily unavailable" in lowered:
        return f"{message} (the table changed while we wrote it: another program not using the xtables lock?)"
    if "can't commit: invalid argument" in lowered:
        return f"{message} (the kernel refused a rule: a target in the wrong table or an unsupported option?)"
    if "no chain/target/match by that name" in lowered:
        return f"{message} (is the kernel module of one of the matches or targets available?)"
    if "permission denied" in lowered or "operation not permitted" in lowered:
        return f"{message} (vpnoffload must run as root)"
    return message


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    iptc = _iptc()
    try:
        yield
    except BackendError:
        raise
    except (iptc.IPTCError, iptc.XTablesError, ValueError, AttributeError) as exc:
        raise BackendError(f"{what}: {_hint(_clean(exc))}") from exc
    except OSError as exc:
        raise BackendError(f"{what}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------
# Reading: python-iptables rule -> iptables-save arguments


def _address(value: str) -> tuple[bool, str]:
    """'!203.0.113.10/255.255.255.255' -> (True, '203.0.113.10/32'), as iptables-save prints it."""
    inverted = value.startswith("!")
    value = value.lstrip("!")
    try:
        return inverted, str(IPv4Network(value, strict=False))
    except ValueError:  # a non-contiguous mask: iptables-save prints it as is
        return inverted, value


def _entry_args(rule: Any) -> list[str]:
    args: list[str] = []
    for flag, value in (("-s", rule.src), ("-d", rule.dst)):
        if value.lstrip("!") != "0.0.0.0/0.0.0.0":
            inverted, text = _address(value)
            args += (["!", flag, text] if inverted else [flag, text])
    for flag, value in (("-i", rule.in_interface), ("-o", rule.out_interface)):
        if value:
            args += (["!", flag, value[1:]] if value.startswith("!") else [flag, value])
    proto = rule.protocol
    if proto and proto not in ("ip", "all", "0"):
        args += (["!", "-p", proto[1:]] if proto.startswith("!") else ["-p", proto])
    if rule.fragment:
        args.append("-f")
    return args


def _params(module: Any) -> list[str]:
    args: list[str] = []
    for key, values in module.get_all_parameters().items():
        if values and values[0] == "!":
            args += ["!", f"--{key}", *values[1:]]
        else:
            args += [f"--{key}", *values]
    return args


def _rule_args(rule: Any) -> tuple[str, ...]:
    args = _entry_args(rule)
    for match in rule.matches:
        args += ["-m", match.name, *_params(match)]
    target = rule.target
    if target is not None and target.name:
        args += ["-g" if target.goto else "-j", target.name, *_params(target)]
    return tuple(args)


# --------------------------------------------------------------------------
# Writing: iptables-save arguments -> python-iptables rule


def _build(iptc: Any, rule: Rule) -> Any:
    """A python-iptables Rule from ``rule.args`` (the subset of iptables syntax we write)."""
    try:
        return _parse_args(iptc, rule)
    except (iptc.XTablesError, ValueError, AttributeError) as exc:
        reason = _hint(_clean(exc))
        raise BackendError(f"iptables {rule.table}: cannot write `{rule.chain}: {rule.text}`: {reason}") from exc


def _parse_args(iptc: Any, rule: Rule) -> Any:
    out = iptc.Rule()
    args, module, invert, i = rule.args, None, False, 0
    while i < len(args):
        token = args[i]
        if token == "!":
            invert = True
            i += 1
            continue
        if token in _ENTRY_ATTRS:
            setattr(out, _ENTRY_ATTRS[token], ("!" if invert else "") + args[i + 1])
            i += 2
        elif token == "-f":
            out.fragment = True
            i += 1
        elif token == "-m":
            module = out.create_match(args[i + 1])
            i += 2
        elif token in ("-j", "-g"):
            module = out.create_target(args[i + 1], goto=token == "-g")
            i += 2
        elif token.startswith("--") and module is not None:
            j = i + 1
            while j < len(args) and args[j] != "!" and not args[j].startswith("-"):
                j += 1
            module.parse(token[2:], (["!"] if invert else []) + list(args[i + 1 : j]))
            i = j
        else:
            raise ValueError(f"cannot write {token!r} in: {rule.text}")
        invert = False
    return out


# --------------------------------------------------------------------------
# The backend


class IptcBackend:
    """Reads and writes vpnoffload's chains in the legacy filter and nat tables."""

    def read(self) -> Ruleset:
        iptc = _iptc()
        chains: set[tuple[str, str]] = set()
        rules: list[Rule] = []
        for table in TABLES:
            with _translated(f"iptables {table}: cannot read the table"):
                handle = self._table(iptc, table)
                chains |= {(table, c) for c in self._owned_chains(handle)}
                rules += self._owned_rules(iptc, handle)
        return Ruleset(frozenset(chains), tuple(rules))

    def write(self, table: str, content: Ruleset) -> None:
        content = table_content(content, table)
        iptc = _iptc()
        with xtables_lock(), _translated(f"iptables {table}"):
            handle = self._table(iptc, table)
            try:
                self._stage(iptc, handle, table, content)
                handle.commit()
            finally:
                handle.refresh()  # after a failure: drops what was staged

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def _table(iptc: Any, name: str) -> Any:
        handle = iptc.Table(name, autocommit=False)
        handle.refresh()  # the cached handle may predate someone else's change
        return handle

    @staticmethod
    def _owned_chains(handle: Any) -> list[str]:
        return [c.name for c in handle.chains if is_owned(c.name) and not handle.builtin_chain(c.name)]

    def _owned_rules(self, iptc: Any, handle: Any) -> list[Rule]:
        """Every rule in our chains, and our jumps found in the other chains."""
        found: list[Rule] = []
        for chain in handle.chains:
            owned = is_owned(chain.name)
            entry = handle.first_rule(chain.name)
            while entry:
                # Look at the jump target first: a foreign rule may use extensions
                # we could not even load, and we never need to decode it.
                target = handle.get_target(entry)
                target = target.decode() if isinstance(target, bytes) else (target or "")
                if owned or is_owned(target):
                    found.append(Rule(handle.name, chain.name, _rule_args(iptc.Rule(entry, chain))))
                entry = handle.next_rule(entry)
        return found

    def _stage(self, iptc: Any, handle: Any, table: str, content: Ruleset) -> None:
        """Stage in ``handle``: our jumps out, our chains replaced, jumps back in."""
        for rule in self._owned_rules(iptc, handle):
            if not is_owned(rule.chain):
                iptc.Chain(handle, rule.chain).delete_rule(_build(iptc, rule))
        existing = set(self._owned_chains(handle))
        for name in existing:
            handle.flush_entries(name)  # first all, so no chain still jumps to one we delete
        for name in existing - set(content.chain_names(table)):
            handle.delete_chain(name)
        for name in content.chain_names(table):
            if name not in existing:
                handle.create_chain(name)
        for name in content.chain_names(table):
            chain = iptc.Chain(handle, name)
            for rule in content.rules_of(table, name):
                chain.append_rule(_build(iptc, rule))
        positions: dict[str, int] = {}
        for rule in content.jumps(table):
            if not handle.is_chain(rule.chain):
                raise BackendError(f"iptables {table}: there is no chain {rule.chain}")
            position = positions.get(rule.chain, 0)
            iptc.Chain(handle, rule.chain).insert_rule(_build(iptc, rule), position)
            positions[rule.chain] = position + 1


# --------------------------------------------------------------------------
# Which iptables does the host's command use?


def nft_variant_note() -> str | None:
    """A warning for ``doctor``/``status`` when the host's ``iptables`` command is
    the nf_tables variant, which does not show vpnoffload's (legacy) rules.

    Runs ``iptables --version`` (which reads no table); None when the command
    is the legacy one or is missing.
    """
    exe = shutil.which("iptables")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if "nf_tables" not in out.stdout + out.stderr:
        return None
    return (
        "this host's `iptables` command is the nf_tables variant: vpnoffload's rules live in the "
        "legacy tables, so `iptables -L` does not show them; use `iptables-legacy-save` "
        "(rules of both kinds are in force, so an nf_tables rule can still drop our traffic)"
    )
