#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vpnoffload contributors
# MIT License (see LICENSE in the vpnoffload repository)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vpnoffload_pki
short_description: Issue or revoke a home box's certificate on a VPS
description:
  - V(present) runs C(vpnoffload pki issue NAME) unless a valid certificate for O(name) exists.
    vpnoffload never issues a second certificate under a revoked name, so a revoked O(name) fails
    (with check mode too) and says so; the home box needs another name.
  - V(absent) runs C(vpnoffload pki revoke NAME) when a valid certificate exists. vpnoffload refuses
    while a service still names the home box, so remove those services first.
  - Run M(vpnoffload.fleet.vpnoffload_up) for the VPS afterwards to publish the CRL.
version_added: 0.1.0
author: vpnoffload contributors
options:
  name:
    description: The home box's name.
    type: str
    required: true
  state:
    description: V(present) (a valid certificate) or V(absent) (revoked).
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - vpnoffload.fleet.common
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Needs Python 3.11 or newer on the managed host (as vpnoffload does).
'''

EXAMPLES = r'''
- name: A certificate for the home box "attic"
  vpnoffload.fleet.vpnoffload_pki:
    name: attic

- name: The old box may no longer connect
  vpnoffload.fleet.vpnoffload_pki:
    name: oldbox
    state: absent
'''

RETURN = r'''
status:
  description: The certificate's status after the run (valid, revoked or missing).
  returned: always
  type: str
  sample: valid
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vpnoffload.fleet.plugins.module_utils.vpnoffload import COMMON_ARGS, clients, run

def main():
    spec = dict(name=dict(type='str', required=True),
                state=dict(type='str', choices=['present', 'absent'], default='present'))
    spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    name, present = module.params['name'], module.params['state'] == 'present'
    before = clients(module).get(name, 'missing')
    if (before == 'valid') == present:
        module.exit_json(changed=False, status=before)
    if present and before == 'revoked':
        module.fail_json(msg="home name: the certificate of %r was revoked on this VPS and vpnoffload issues no "
                             "second one under that name; give the home box another name" % name, status=before)
    after = 'valid' if present else 'revoked'
    result = dict(changed=True, status=after)
    if module._diff:
        result['diff'] = dict(before='%s: %s\n' % (name, before), after='%s: %s\n' % (name, after))
    if not module.check_mode:
        run(module, ['pki', 'issue' if present else 'revoke', name])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
