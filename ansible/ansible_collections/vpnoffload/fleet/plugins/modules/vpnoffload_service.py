#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vpnoffload contributors
# MIT License (see LICENSE in the vpnoffload repository)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vpnoffload_service
short_description: Add, change or remove one offloaded service in a vpnoffload config
description:
  - Makes the service named O(name) in the VPS's vpnoffload config look exactly as given,
    with C(vpnoffload service add) and C(vpnoffload service remove).
  - A change is first made on a scratch copy of the config; the service's entry there is compared
    with the real one, so a service that is already as given is left alone (no reordering, no rewrite).
  - Check mode reports what the edit would do without writing; diff mode shows the config before and after.
  - The config is only edited; run M(vpnoffload.fleet.vpnoffload_up) with O(vpnoffload.fleet.vpnoffload_up#module:end=vps)
    afterwards to apply it.
version_added: 0.1.0
author: vpnoffload contributors
options:
  name:
    description: The service's name (C(service add)'s argument).
    type: str
    required: true
  state:
    description: V(present) adds or changes the service, V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  listen:
    description: C(--listen), [ADDRESS:]PORT on the VPS. Required with O(state=present).
    type: str
  target:
    description: C(--target), [HOME:]PORT at home. Required with O(state=present).
    type: str
  proto:
    description: C(--proto), tcp or udp.
    type: str
  check:
    description: C(--check), the health check (tcp or http:/path).
    type: str
  hostname:
    description: C(--hostname), the public host name.
    type: str
  fallback:
    description: C(--fallback), page or reset.
    type: str
  via:
    description: C(--via), dnat or proxy.
    type: str
  homes:
    description: C(--homes), home boxes in order of preference (O(target) is then a bare port).
    type: list
    elements: str
  offline_copy:
    description: C(--offline-copy), paths the VPS keeps a copy of.
    type: list
    elements: str
  allow:
    description: C(--allow), source prefixes that may reach the service.
    type: list
    elements: str
  deny:
    description: C(--deny), source prefixes that never reach the service.
    type: list
    elements: str
  allow_file:
    description: C(--allow-file), a file of allowed prefixes.
    type: str
  deny_file:
    description: C(--deny-file), a file of denied prefixes.
    type: str
  rate:
    description: C(--rate), new connections per second per source (e.g. 10/s).
    type: str
  max_conns:
    description: C(--max-conns), open connections per source.
    type: str
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
- name: Serve the blog from the home box "home", "attic" as its backup
  vpnoffload.fleet.vpnoffload_service:
    name: blog
    listen: "80"
    target: "8080"
    check: http:/
    hostname: blog.example.org
    homes: [home, attic]

- name: Stop offloading ssh
  vpnoffload.fleet.vpnoffload_service:
    name: ssh
    state: absent
'''

RETURN = r'''
service:
  description: The service's entry in the config after the run (empty when absent).
  returned: always
  type: dict
  sample: {"listen": "80", "target": "8080", "proto": "tcp", "check": "http:/", "homes": ["home", "attic"]}
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vpnoffload.fleet.plugins.module_utils.vpnoffload import (
    COMMON_ARGS, Scratch, load_config, read_text, run)

#: Module option -> service add flag, for options that take one value.
SCALARS = (('proto', '--proto'), ('check', '--check'), ('hostname', '--hostname'), ('fallback', '--fallback'),
           ('via', '--via'), ('allow_file', '--allow-file'), ('deny_file', '--deny-file'), ('rate', '--rate'),
           ('max_conns', '--max-conns'))
#: Module option -> flag repeated once per element.
LISTS = (('offline_copy', '--offline-copy'), ('allow', '--allow'), ('deny', '--deny'))


def add_argv(params):
    """``service add NAME ...`` for the module's options."""
    argv = ['service', 'add', params['name'], '--listen', params['listen'], '--target', params['target']]
    for option, flag in SCALARS:
        if params[option] is not None:
            argv += [flag, str(params[option])]
    if params['homes']:
        argv += ['--homes', ','.join(params['homes'])]
    for option, flag in LISTS:
        for value in params[option] or []:
            argv += [flag, value]
    return argv


def main():
    spec = dict(
        name=dict(type='str', required=True),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        listen=dict(type='str'), target=dict(type='str'), proto=dict(type='str'), check=dict(type='str'),
        hostname=dict(type='str'), fallback=dict(type='str'), via=dict(type='str'),
        homes=dict(type='list', elements='str'), offline_copy=dict(type='list', elements='str'),
        allow=dict(type='list', elements='str'), deny=dict(type='list', elements='str'),
        allow_file=dict(type='str'), deny_file=dict(type='str'), rate=dict(type='str'), max_conns=dict(type='str'),
    )
    spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_if=[('state', 'present', ('listen', 'target'))])
    name, present = module.params['name'], module.params['state'] == 'present'
    config = module.params['config']
    before_text = read_text(config)
    if not before_text:
        module.fail_json(msg='%s does not exist: run vpnoffload_init first' % config)
    current = load_config(module).get('services', {}).get(name)
    if not present and current is None:
        module.exit_json(changed=False, service={})

    # The edit on a scratch copy: vpnoffload validates it whole and writes exactly what the
    # real edit would write, so "would change" is vpnoffload's own answer, not a guess.
    steps = []
    if current is not None:
        steps.append(['service', 'remove', name])
    if present:
        steps.append(add_argv(module.params))
    with Scratch(module) as scratch:
        for step in steps:
            scratch.run(step)
        wanted = scratch.data().get('services', {}).get(name)
        after_text = scratch.text()
    if wanted == current:
        module.exit_json(changed=False, service=current or {})
    result = dict(changed=True, service=wanted or {})
    if module._diff:
        result['diff'] = dict(before=before_text, after=after_text, before_header=config, after_header=config)
    if not module.check_mode:
        for step in steps:
            run(module, step)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
