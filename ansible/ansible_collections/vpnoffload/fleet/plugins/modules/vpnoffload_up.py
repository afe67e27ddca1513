#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vpnoffload contributors
# MIT License (see LICENSE in the vpnoffload repository)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vpnoffload_up
short_description: Bring a VPS or home box up (or down) with vpnoffload, from its own dry-run plan
description:
  - Runs C(vpnoffload up END --dry-run) (C(down) with O(state=absent)) first. When vpnoffload says there
    is nothing to do the task is unchanged; otherwise it is changed, the plan is the task's diff, and
    (outside check mode) C(vpnoffload up END) (or C(down END)) applies it.
  - So check mode reports exactly the steps vpnoffload would take and changes nothing.
version_added: 0.1.0
author: vpnoffload contributors
options:
  end:
    description: Which end this host is.
    type: str
    choices: [vps, home]
    required: true
  state:
    description: V(present) runs C(up), V(absent) runs C(down) (which undoes exactly what C(up) did).
    type: str
    choices: [present, absent]
    default: present
  home:
    description: C(--home), the home box's name (O(end=home) only).
    type: str
  profile:
    description: C(--profile), the client profile (O(end=home) only; default STATE_DIR/HOME.ovpn).
    type: path
extends_documentation_fragment:
  - vpnoffload.fleet.common
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
'''

EXAMPLES = r'''
- name: OpenVPN server, DNAT rules and forwarding on the VPS
  vpnoffload.fleet.vpnoffload_up:
    end: vps

- name: The home box joins its second VPS
  vpnoffload.fleet.vpnoffload_up:
    end: home
    home: attic
    config: /etc/vpnoffload/vps2/vpnoffload.toml

- name: The home box leaves a VPS
  vpnoffload.fleet.vpnoffload_up:
    end: home
    state: absent
    config: /etc/vpnoffload/old/vpnoffload.toml
'''

RETURN = r'''
plan:
  description: The steps vpnoffload's dry run listed (empty when there was nothing to do).
  returned: always
  type: list
  elements: str
  sample: ["start OpenVPN client vpnoffload0", "add rule fwmark 0x20000000/0xe0000000 lookup 7701"]
stdout:
  description: What C(vpnoffload up) (or C(down)) printed (empty in check mode or when nothing was done).
  returned: always
  type: str
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vpnoffload.fleet.plugins.module_utils.vpnoffload import COMMON_ARGS, NOTHING_TO_DO, run


def plan_lines(out):
    """The steps of a ``--dry-run`` plan: its ``  - `` lines."""
    return [line.strip()[2:] for line in out.splitlines() if line.startswith('  - ')]


def main():
    spec = dict(end=dict(type='str', choices=['vps', 'home'], required=True), home=dict(type='str'),
                profile=dict(type='path'), state=dict(type='str', choices=['present', 'absent'], default='present'))
    spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    argv = ['up' if module.params['state'] == 'present' else 'down', module.params['end']]
    if module.params['home']:
        argv += ['--home', module.params['home']]
    if module.params['profile']:
        argv += ['--profile', module.params['profile']]
    rc, dry, err = run(module, argv + ['--dry-run'])
    if NOTHING_TO_DO in dry:
        module.exit_json(changed=False, plan=[], stdout='')
    plan = plan_lines(dry)
    result = dict(changed=True, plan=plan, stdout='')
    if module._diff:
        result['diff'] = dict(prepared=dry)
    if not module.check_mode:
        rc, out, err = run(module, argv)
        result['stdout'] = out
    module.exit_json(**result)


if __name__ == '__main__':
    main()
