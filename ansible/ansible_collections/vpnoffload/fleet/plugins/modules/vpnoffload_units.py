#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vpnoffload contributors
# MIT License (see LICENSE in the vpnoffload repository)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vpnoffload_units
short_description: Install vpnoffload's systemd units and keep them running
description:
  - Renders the units C(vpnoffload install-service END) would write (with C(--out) into a scratch
    directory) and compares them with O(unit_dir). When one differs or is missing, or one is not
    active, runs C(vpnoffload install-service END), which writes, enables and starts them.
  - With O(state=absent) the units this config has are stopped, disabled and removed.
  - Check mode reports that without writing; diff mode shows each unit's change.
version_added: 0.1.0
author: vpnoffload contributors
options:
  end:
    description: V(vps) (the up unit and the watchdog) or V(home).
    type: str
    choices: [vps, home]
    required: true
  state:
    description: V(present) installs and starts the units, V(absent) stops and removes them.
    type: str
    choices: [present, absent]
    default: present
  home:
    description: C(--home), the home box's name (O(end=home) only).
    type: str
  unit_dir:
    description: Where systemd units live (vpnoffload writes them there).
    type: path
    default: /etc/systemd/system
extends_documentation_fragment:
  - vpnoffload.fleet.common
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
'''

EXAMPLES = r'''
- name: up vps at boot and the watchdog
  vpnoffload.fleet.vpnoffload_units:
    end: vps

- name: up home at boot, for the second VPS's config too
  vpnoffload.fleet.vpnoffload_units:
    end: home
    home: attic
    config: /etc/vpnoffload/vps2/vpnoffload.toml
'''

RETURN = r'''
units:
  description: The unit file names vpnoffload installs for this end.
  returned: always
  type: list
  elements: str
  sample: ["vpnoffload-vps.service", "vpnoffload-watch.service"]
'''

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vpnoffload.fleet.plugins.module_utils.vpnoffload import COMMON_ARGS, read_text, run


def rendered(module, argv):
    """Unit file name -> text, as install-service would write it now."""
    scratch = tempfile.mkdtemp(prefix='vpnoffload-units-')
    try:
        run(module, argv + ['--out', scratch])
        return dict((name, read_text(os.path.join(scratch, name))) for name in sorted(os.listdir(scratch)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def remove(module, systemctl, names):
    """Stop, disable and delete the units that exist (a stopped up unit runs down)."""
    present = [name for name in names if os.path.exists(os.path.join(module.params['unit_dir'], name))]
    if present and not module.check_mode:
        module.run_command([systemctl, 'disable', '--now'] + present, check_rc=True)
        for name in present:
            os.unlink(os.path.join(module.params['unit_dir'], name))
        module.run_command([systemctl, 'daemon-reload'], check_rc=True)
    module.exit_json(changed=bool(present), units=present)


def main():
    spec = dict(end=dict(type='str', choices=['vps', 'home'], required=True), home=dict(type='str'),
                unit_dir=dict(type='path', default='/etc/systemd/system'),
                state=dict(type='str', choices=['present', 'absent'], default='present'))
    spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    argv = ['install-service', module.params['end']]
    if module.params['home']:
        argv += ['--home', module.params['home']]
    wanted = rendered(module, argv)
    stale = [name for name, text in wanted.items()
             if read_text(os.path.join(module.params['unit_dir'], name)) != text]
    systemctl = module.get_bin_path('systemctl', required=True)
    if module.params['state'] == 'absent':
        remove(module, systemctl, sorted(wanted))
    inactive = [name for name in wanted
                if module.run_command([systemctl, 'is-active', '--quiet', name])[0] != 0]
    if not stale and not inactive:
        module.exit_json(changed=False, units=sorted(wanted))
    result = dict(changed=True, units=sorted(wanted))
    if module._diff:
        result['diff'] = [dict(before=read_text(os.path.join(module.params['unit_dir'], name)), after=wanted[name],
                               before_header=name, after_header=name) for name in stale]
    if not module.check_mode:
        run(module, argv)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
