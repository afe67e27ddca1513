#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vpnoffload contributors
# MIT License (see LICENSE in the vpnoffload repository)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vpnoffload_init
short_description: Create a VPS's vpnoffload config and PKI once
description:
  - Runs C(vpnoffload init) when the config file does not exist yet.
  - An existing config is never overwritten (that would replace the PKI and every home box's certificate);
    when its VPS address or tunnel subnet differ from the ones given the module fails and names the field.
version_added: 0.1.0
author: vpnoffload contributors
options:
  vps_address:
    description: C(--vps-address), the VPS's public IPv4 address.
    type: str
    required: true
  tunnel_subnet:
    description: C(--tunnel-subnet); vpnoffload's default (10.88.0.0/24) when not given.
    type: str
  tunnel_subnet6:
    description: C(--tunnel-subnet6), an IPv6 subnet inside the tunnel.
    type: str
  port:
    description: C(--port), OpenVPN's port.
    type: int
  proto:
    description: C(--proto), OpenVPN's transport (udp or tcp).
    type: str
  home:
    description: C(--home), the first home box's name.
    type: str
  local_address:
    description: C(--local-address), for 1:1-NAT clouds.
    type: str
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
- name: Config and PKI for a VPS
  vpnoffload.fleet.vpnoffload_init:
    vps_address: 203.0.113.10
    tunnel_subnet: 10.89.0.0/24
    home: home
'''

RETURN = r'''
stdout:
  description: What C(vpnoffload init) printed (empty when nothing was done).
  returned: always
  type: str
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vpnoffload.fleet.plugins.module_utils.vpnoffload import COMMON_ARGS, load_config, run


def mismatch(module, data):
    """The first field an existing config disagrees on, as one line, or None."""
    wanted = (('vps.address', data.get('vps', {}).get('address'), module.params['vps_address']),
              ('tunnel.subnet', data.get('tunnel', {}).get('subnet'), module.params['tunnel_subnet']))
    for field, have, want in wanted:
        if want is not None and have != want:
            return '%s: the config has %s, the inventory says %s (vpnoffload init --force replaces the PKI: do it by hand)' % (
                field, have, want)
    return None


def main():
    spec = dict(vps_address=dict(type='str', required=True), tunnel_subnet=dict(type='str'),
                tunnel_subnet6=dict(type='str'), port=dict(type='int'), proto=dict(type='str'),
                home=dict(type='str'), local_address=dict(type='str'))
    spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    data = load_config(module)
    if data:
        problem = mismatch(module, data)
        if problem:
            module.fail_json(msg=problem)
        module.exit_json(changed=False, stdout='')
    if module.check_mode:
        module.exit_json(changed=True, stdout='')
    argv = ['init', '--vps-address', module.params['vps_address']]
    for option in ('tunnel_subnet', 'tunnel_subnet6', 'port', 'proto', 'home', 'local_address'):
        if module.params[option] is not None:
            argv += ['--' + option.replace('_', '-'), str(module.params[option])]
    rc, out, err = run(module, argv)
    module.exit_json(changed=True, stdout=out)


if __name__ == '__main__':
    main()
