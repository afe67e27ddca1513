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
* libxt_NAT.so registers DNAT for IPv4 and IPv6 from one constructor, but
  libxtables keeps only the family current when it is loaded, and dlopen runs
  a constructor once: whichever family used DNAT first would make it unknown
  to the other ("can't find target DNAT"). :func:`_register_nat_targets`
  registers it for both before anything uses it.

IPv6: our tables "filter6" and "nat6" are ip6tables' filter and nat, written
with ``Table6``/``Rule6`` (see ``ip6tables-legacy-save``). They are read only
when already registered in this network namespace (listed in
/proc/net/ip6_tables_names): an unregistered table holds nothing of ours, and
not touching it keeps IPv4-only hosts (even ones booted with IPv6 disabled)
exactly as before.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from ipaddress import ip_network
from typing import Any

from vpnoffload.errors import BackendError
from vpnoffload.firewall import ipset
from vpnoffload.firewall.rules import TABLES, Rule, Ruleset, is_owned, table_content, table_label
from vpnoffload.firewall.xtables import (
    base, is_v6, keep_to_our_tables, readable, register_nat_targets, registered_v4_tables, registered_v6_tables,
    xtables_lock,
)


_ENTRY_ATTRS = {"-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface", "-p": "protocol"}
#: python-iptables names protocol 58 "icmpv6"; ip6tables-save (and our rules) say "ipv6-icmp".
_PROTO_ALIASES = {"icmpv6": "ipv6-icmp"}
_ANY = ("0.0.0.0/0.0.0.0", "::/0")


# --------------------------------------------------------------------------
# Error translation


def _iptc() -> Any:
    """Import python-iptables on first use, and keep it to the tables we use."""
    try:
        iptc = _import_python_iptables()
    except Exception as exc:  # the module, libiptc/libxtables missing, or its XTablesError
        # ("can't find directory with extensions"), raised while importing: no class to name yet
        raise BackendError(f"cannot load python-iptables: {_clean(exc)}") from exc
    global _kept
    if not _kept:  # once: write() widens it for the table it writes
        _kept = True
        keep_to_our_tables(iptc)
    register_nat_targets()
    return iptc


_kept = False


def _import_python_iptables() -> Any:
    """``import iptc``, without two detours that cost more than python-iptables itself.

    * python-iptables does ``from distutils.sysconfig import get_python_lib``. In a venv,
      setuptools' ``distutils-precedence.pth`` puts a finder first on ``sys.meta_path`` that
      answers it with setuptools' own distutils, which loads pkg_resources: ~110 ms. Without the
      finder the standard library's distutils answers (~3 ms, the same directory); Python 3.12+,
      which has none, makes python-iptables fall back to ``sysconfig`` on its own. (The watchdog's
      swap child also sets ``SETUPTOOLS_USE_DISTUTILS=stdlib``; that variable is read when ``site``
      starts, too late for a process already running.)
    * It looks for its own C helper, ``libxtwrapper``, with ``ctypes.util.find_library`` under
      four names before it tries the directory it is installed in; each miss runs ``ldconfig``,
      ``gcc`` and ``ld`` (~50 processes, ~50 ms). ``IPTABLES_LIBDIR``, python-iptables' own
      setting, makes it try that directory first; the system's libxtables and libiptc are still
      found as before (after the same names in that directory, which holds none of them).
      A value the user set is left as it is.
    """
    import os
    import sys
    import warnings

    if "iptc" in sys.modules:
        return sys.modules["iptc"]
    shims = [(i, f) for i, f in enumerate(sys.meta_path) if type(f).__module__ == "_distutils_hack"]
    for _, finder in reversed(shims):
        sys.meta_path.remove(finder)
    libdir = None if "IPTABLES_LIBDIR" in os.environ else _installed_beside_iptc()
    if libdir is not None:
        os.environ["IPTABLES_LIBDIR"] = libdir
    try:
        with warnings.catch_warnings():
            # Python 3.11's distutils warns that it is deprecated, on the import we cannot change.
            warnings.filterwarnings("ignore", "The distutils package is deprecated", DeprecationWarning)
            import iptc  # noqa: PLC0415 - deliberately lazy, see module docstring
    finally:
        for index, finder in shims:
            sys.meta_path.insert(index, finder)
        if libdir is not None:
            del os.environ["IPTABLES_LIBDIR"]
    return iptc


def _installed_beside_iptc() -> str | None:
    """The directory python-iptables is installed in, when its libxtwrapper is there too."""
    import glob
    import importlib.util
    import os

    spec = importlib.util.find_spec("iptc")
    if spec is None or spec.origin is None:
        return None
    directory = os.path.dirname(os.path.dirname(spec.origin))
    return directory if glob.glob(os.path.join(glob.escape(directory), "libxtwrapper*.so")) else None


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
    """'!203.0.113.10/255.255.255.255' -> (True, '203.0.113.10/32'), as iptables-save
    prints it (IPv6 comes as '2001:db8::80/128' already)."""
    inverted = value.startswith("!")
    value = value.lstrip("!")
    try:
        return inverted, str(ip_network(value, strict=False))
    except ValueError:  # a non-contiguous mask: iptables-save prints it as is
        return inverted, value


def _entry_args(rule: Any, v6: bool = False) -> list[str]:
    args: list[str] = []
    for flag, value in (("-s", rule.src), ("-d", rule.dst)):
        if value.lstrip("!") not in _ANY:
            inverted, text = _address(value)
            args += (["!", flag, text] if inverted else [flag, text])
    for flag, value in (("-i", rule.in_interface), ("-o", rule.out_interface)):
        if value:
            args += (["!", flag, value[1:]] if value.startswith("!") else [flag, value])
    proto = rule.protocol
    if proto and proto not in ("ip", "all", "0"):
        inverted, proto = proto.startswith("!"), proto.lstrip("!")
        proto = _PROTO_ALIASES.get(proto, proto)
        args += (["!", "-p", proto] if inverted else ["-p", proto])
    if not v6 and rule.fragment:  # IPv6 has no -f (fragments are a header there)
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


def _rule_args(rule: Any, v6: bool = False) -> tuple[str, ...]:
    args = _entry_args(rule, v6)
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
        raise BackendError(f"{table_label(rule.table)}: cannot write `{rule.chain}: {rule.text}`: {reason}") from exc


def _parse_args(iptc: Any, rule: Rule) -> Any:
    v6 = is_v6(rule.table)
    out = iptc.Rule6() if v6 else iptc.Rule()
    aliases = {v: k for k, v in _PROTO_ALIASES.items()} if v6 else {}
    args, module, invert, i = rule.args, None, False, 0
    while i < len(args):
        token = args[i]
        if token == "!":
            invert = True
            i += 1
            continue
        if token in _ENTRY_ATTRS:
            value = aliases.get(args[i + 1], args[i + 1]) if token == "-p" else args[i + 1]
            setattr(out, _ENTRY_ATTRS[token], ("!" if invert else "") + value)
            i += 2
        elif token == "-f" and not v6:
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
    if out.target is None:
        # A rule without -j (the VPS's counting rules) falls through: libiptc's empty target
        # name. python-iptables refuses a rule with no target at all ("invalid rule").
        out.target = iptc.Target(out, "")
    return out


# --------------------------------------------------------------------------
# The backend


class IptcBackend:
    """Reads and writes vpnoffload's chains in the legacy filter and nat tables,
    of iptables and (as "filter6"/"nat6") of ip6tables."""

    def preload(self) -> None:
        _iptc()

    def read(self) -> Ruleset:
        iptc = _iptc()
        chains: set[tuple[str, str]] = set()
        rules: list[Rule] = []
        present4, present6 = registered_v4_tables(), registered_v6_tables()
        for table in TABLES:
            if not readable(table, present4, present6):
                continue
            with _translated(f"{table_label(table)}: cannot read the table"):
                handle = self._table(iptc, table)
                chains |= {(table, c) for c in self._owned_chains(handle)}
                rules += self._owned_rules(iptc, handle, table)
        return Ruleset(frozenset(chains), tuple(rules))

    def write(self, table: str, content: Ruleset) -> None:
        content = table_content(content, table)
        iptc = _iptc()
        keep_to_our_tables(iptc, writing=table)
        wanted = content.set_names(table)
        present = ipset.our_sets() if wanted else set()
        # Access-control sets (access.py): new ones exist in full before the commit names them.
        created = ipset.create(self._specs(content, [n for n in wanted if n not in present], table))
        try:
            with xtables_lock(), _translated(table_label(table)):
                handle = self._table(iptc, table)
                try:
                    named = [n for r in self._owned_rules(iptc, handle, table) for n in r.set_names]
                    self._stage(iptc, handle, table, content)
                    handle.commit()
                finally:
                    handle.refresh()  # after a failure: drops what was staged
        except BaseException:
            ipset.destroy(created, quiet=True)
            raise
        if named:  # a set our rules used before may be unused now (and any we left behind)
            ipset.destroy(ipset.unused(present | ipset.our_sets(), wanted, 6 if is_v6(table) else 4))

    @staticmethod
    def _specs(content: Ruleset, names: list[str], table: str) -> list[Any]:
        specs = {s.name: s for s in content.sets}
        missing = [n for n in names if n not in specs]
        if missing:
            raise BackendError(f"{table_label(table)}: ipset {missing[0]} is gone and its content is not known "
                               "here; run 'vpnoffload up vps' again")
        return [specs[n] for n in names]

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def _table(iptc: Any, name: str) -> Any:
        kind = iptc.Table6 if is_v6(name) else iptc.Table
        handle = kind(base(name), autocommit=False)
        handle.refresh()  # the cached handle may predate someone else's change
        return handle

    @staticmethod
    def _owned_chains(handle: Any) -> list[str]:
        return [c.name for c in handle.chains if is_owned(c.name) and not handle.builtin_chain(c.name)]

    def _owned_rules(self, iptc: Any, handle: Any, table: str) -> list[Rule]:
        """Every rule in our chains, and our jumps found in the other chains."""
        v6 = is_v6(table)
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
                    entry_rule = iptc.Rule6(entry, chain) if v6 else iptc.Rule(entry, chain)
                    found.append(Rule(table, chain.name, _rule_args(entry_rule, v6)))
                entry = handle.next_rule(entry)
        return found

    def _stage(self, iptc: Any, handle: Any, table: str, content: Ruleset) -> None:
        """Stage in ``handle``: our jumps out, our chains replaced, jumps back in."""
        for rule in self._owned_rules(iptc, handle, table):
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
                raise BackendError(f"{table_label(table)}: there is no chain {rule.chain}")
            position = positions.get(rule.chain, 0)
            iptc.Chain(handle, rule.chain).insert_rule(_build(iptc, rule), position)
            positions[rule.chain] = position + 1


