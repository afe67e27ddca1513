#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vpnoffload contributors
# MIT License (see LICENSE in the vpnoffload repository)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vpnoffload_import
short_description: Write a VPS's config and a home box's client profile on that home box
description:
  - Runs on the home box with what M(vpnoffload.fleet.vpnoffload_export) read on the VPS. Makes
    O(dest) (0755) and O(dest)/state (0700), and writes O(dest)/vpnoffload.toml (0644) and
    O(dest)/state/O(home).ovpn (0600), each only when its text or mode differs. One task instead of
    two directories and two copies.
  - Files are written to a temporary file beside them and renamed into place; the profile is never
    readable by others, not even while it is written.
  - Check mode reports what would change without writing; diff mode shows the config before and after
    and only says that the profile changes.
version_added: 0.1.0
author: vpnoffload contributors
options:
  dest:
    description: The home box's config directory for this VPS.
    type: path
    required: true
  home:
    description: The home box's name (its profile is O(dest)/state/NAME.ovpn).
    type: str
    required: true
  content:
    description: The VPS's config file's text.
    type: str
    required: true
  profile:
    description: The home box's client profile (it holds the box's private key; never logged).
    type: str
    required: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
'''

EXAMPLES = r'''
- name: The config and profile from "ams" on this home box
  vpnoffload.fleet.vpnoffload_import:
    dest: /etc/vpnoffload
    home: "{{ inventory_hostname }}"
    content: "{{ exported.config }}"
    profile: "{{ exported.profile }}"
'''

RETURN = r'''
changed_paths:
  description: The directories and files that were (or in check mode would be) made or changed.
  returned: always
  type: list
  elements: str
  sample: ["/etc/vpnoffload/vpnoffload.toml"]
'''

import os
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule


def directory_differs(path, mode):
    """Whether ``path`` is missing or not a directory of ``mode``."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return True
    return not stat.S_ISDIR(found.st_mode) or stat.S_IMODE(found.st_mode) != mode


def make_directory(path, mode):
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)  # makedirs' mode is masked by the umask, and an existing one keeps its own


def file_text(path):
    """The file's text and mode, or (None, None) when it does not exist."""
    try:
        with open(path, encoding='utf-8') as handle:
            return handle.read(), stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
    except FileNotFoundError:
        return None, None


def write_file(path, text, mode):
    """``text`` into ``path`` through a temporary file in the same directory, created with ``mode``."""
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.vpnoffload-')
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, 'w', encoding='utf-8') as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def main():
    spec = dict(dest=dict(type='path', required=True), home=dict(type='str', required=True),
                content=dict(type='str', required=True), profile=dict(type='str', required=True, no_log=True))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    dest, home = module.params['dest'], module.params['home']
    config_path = os.path.join(dest, 'vpnoffload.toml')
    profile_path = os.path.join(dest, 'state', home + '.ovpn')
    directories = ((dest, 0o755), (os.path.join(dest, 'state'), 0o700))
    files = ((config_path, module.params['content'], 0o644), (profile_path, module.params['profile'], 0o600))

    changed = [path for path, mode in directories if directory_differs(path, mode)]
    before = {}
    for path, text, mode in files:
        before[path], found_mode = file_text(path)
        if before[path] != text or found_mode != mode:
            changed.append(path)
    result = dict(changed=bool(changed), changed_paths=changed)
    if module._diff:
        diffs = []
        if before[config_path] != module.params['content']:
            diffs.append(dict(before=before[config_path] or '', after=module.params['content'],
                              before_header=config_path, after_header=config_path))
        if profile_path in changed:
            diffs.append(dict(prepared='%s: written (not shown: it holds the private key)' % profile_path))
        result['diff'] = diffs
    if changed and not module.check_mode:
        for path, mode in directories:
            if path in changed:
                make_directory(path, mode)
        for path, text, mode in files:
            if path in changed:
                write_file(path, text, mode)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
