# -*- coding: utf-8 -*-
# Copyright: vpnoffload contributors
# MIT License (see LICENSE in the vpnoffload repository)
"""What every vpnoffload.fleet module shares: how to call the vpnoffload CLI on the
managed host, and how to read its config file.

The modules never edit vpnoffload's files themselves: every change is a vpnoffload
command, and every "would change" comes from the same command run against a scratch
copy of the config (service edits) or from the command's own ``--dry-run`` plan (up).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

try:
    import tomllib
    HAS_TOMLLIB = True
except ImportError:  # Python < 3.11: vpnoffload itself needs 3.11, so this host cannot run it anyway
    tomllib = None
    HAS_TOMLLIB = False

#: Options every module takes (merged into each module's argument_spec).
COMMON_ARGS = dict(
    bin=dict(type='path', default='vpnoffload'),
    config=dict(type='path', default='/etc/vpnoffload/vpnoffload.toml'),
    state_dir=dict(type='path'),
)

#: The exact line ``up``/``down`` print when the plan is empty.
NOTHING_TO_DO = 'nothing to do:'


def base_argv(module, config=None, state_dir=None):
    """``vpnoffload -c CONFIG [--state-dir DIR]``: the start of every command line."""
    argv = [module.params['bin'], '-c', config or module.params['config']]
    state = state_dir if state_dir is not None else module.params.get('state_dir')
    if state:
        argv += ['--state-dir', state]
    return argv


def run(module, args, config=None, state_dir=None, check=True):
    """Run one vpnoffload command; fail the module (with both streams) on a non-zero exit."""
    argv = base_argv(module, config, state_dir) + list(args)
    rc, out, err = module.run_command(argv, environ_update={'COLUMNS': '200', 'NO_COLOR': '1'})
    if check and rc != 0:
        module.fail_json(msg='vpnoffload %s exited %d: %s' % (' '.join(args), rc, (err or out).strip()),
                         rc=rc, stdout=out, stderr=err, cmd=argv)
    return rc, out, err


def read_text(path):
    """The file's text, or '' when it does not exist."""
    try:
        with open(path, encoding='utf-8') as handle:
            return handle.read()
    except FileNotFoundError:
        return ''


def load_config(module, path=None):
    """The config as data ({} when there is none yet)."""
    if not HAS_TOMLLIB:
        module.fail_json(msg='vpnoffload needs Python 3.11 or newer on the managed host (tomllib)')
    text = read_text(path or module.params['config'])
    if not text:
        return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        module.fail_json(msg='%s: not valid TOML: %s' % (path or module.params['config'], exc))
    return {}  # not reached: fail_json exits


class Scratch(object):
    """A copy of the config in a temporary directory (with an empty state dir), to run an
    edit on first: what vpnoffload writes there is exactly what the real edit would write."""

    def __init__(self, module):
        self.module = module
        self.directory = tempfile.mkdtemp(prefix='vpnoffload-ansible-')
        self.config = os.path.join(self.directory, 'vpnoffload.toml')
        self.state = os.path.join(self.directory, 'state')
        shutil.copyfile(module.params['config'], self.config)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.directory, ignore_errors=True)
        return False

    def run(self, args):
        return run(self.module, args, config=self.config, state_dir=self.state)

    def text(self):
        return read_text(self.config)

    def data(self):
        return load_config(self.module, self.config)


_ROW = re.compile(r'^(?P<name>.+?)\s+(?P<kind>ca|server|client)\s+[0-9a-f]+\s+\S+\s+(?P<status>valid|revoked)\s*$')


def clients(module):
    """Home box name -> 'valid' or 'revoked', from ``pki list``."""
    rc, out, err = run(module, ['pki', 'list'])
    found = {}
    for line in out.splitlines():
        match = _ROW.match(line.strip())
        if match and match.group('kind') == 'client':
            found[match.group('name')] = match.group('status')
    return found
