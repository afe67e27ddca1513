#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vpnoffload contributors
# MIT License (see LICENSE in the vpnoffload repository)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vpnoffload_export
short_description: Read a VPS's config and render one home box's client profile, to copy them to that box
description:
  - Runs on the VPS. Returns its config file's text and the client profile C(vpnoffload render home)
    writes for O(home), rendered into a private scratch directory that is removed before the module returns.
  - One task instead of a stat, two reads, a scratch directory and a render; pass its results to
    M(vpnoffload.fleet.vpnoffload_import) on the home box.
  - The profile holds the home box's private key: register the result with C(no_log) set on the task.
  - Changes nothing, so it runs in check mode too. Without a config there is nothing to render, so
    RV(exists) is false and both texts are empty.
version_added: 0.1.0
author: vpnoffload contributors
options:
  home:
    description: The home box's name (C(render home --home)); it needs a valid certificate on this VPS.
    type: str
    required: true
extends_documentation_fragment:
  - vpnoffload.fleet.common
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - Needs Python 3.11 or newer on the managed host (as vpnoffload does).
'''

EXAMPLES = r'''
- name: What the home box "attic" needs from the VPS "ams"
  vpnoffload.fleet.vpnoffload_export:
    home: attic
  delegate_to: ams
  register: exported
  no_log: true  # the profile holds attic's private key
'''

RETURN = r'''
exists:
  description: Whether the config file exists.
  returned: always
  type: bool
config:
  description: The config file's text (no secrets in it; empty without a config).
  returned: always
  type: str
profile:
  description: The home box's client profile (NAME.ovpn) with its private key (empty without a config).
  returned: always
  type: str
'''

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vpnoffload.fleet.plugins.module_utils.vpnoffload import COMMON_ARGS, read_text, run


def render_profile(module, home):
    """``render home`` into a 0700 scratch directory; the profile's text. The directory goes whatever happens
    (fail_json exits through the finally)."""
    directory = tempfile.mkdtemp(prefix='vpnoffload-profile-')
    try:
        run(module, ['render', 'home', '--home', home, '--out', directory])
        profile = read_text(os.path.join(directory, home + '.ovpn'))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if not profile:
        module.fail_json(msg='vpnoffload render home --home %s wrote no %s.ovpn' % (home, home))
    return profile


def main():
    spec = dict(home=dict(type='str', required=True))
    spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    config = read_text(module.params['config'])
    if not config:
        module.exit_json(changed=False, exists=False, config='', profile='')
    module.exit_json(changed=False, exists=True, config=config, profile=render_profile(module, module.params['home']))


if __name__ == '__main__':
    main()
