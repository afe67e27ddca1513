#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vpnoffload contributors
# MIT License (see LICENSE in the vpnoffload repository)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vpnoffload_info
short_description: Read a vpnoffload config and its home boxes' certificates
description:
  - Returns the config's services and home boxes and the status of every home box's certificate,
    so a play can remove what the inventory no longer names. Changes nothing.
version_added: 0.1.0
author: vpnoffload contributors
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
- name: What the VPS has now
  vpnoffload.fleet.vpnoffload_info:
  register: current
'''

RETURN = r'''
exists:
  description: Whether the config file exists.
  returned: always
  type: bool
services:
  description: The config's services (name -> entry).
  returned: always
  type: dict
homes:
  description: The config's home boxes (name -> entry).
  returned: always
  type: dict
certificates:
  description: Home box name -> V(valid) or V(revoked) (empty without a config).
  returned: always
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vpnoffload.fleet.plugins.module_utils.vpnoffload import COMMON_ARGS, clients, load_config


def main():
    module = AnsibleModule(argument_spec=dict(COMMON_ARGS), supports_check_mode=True)
    data = load_config(module)
    certificates = clients(module) if data else {}
    module.exit_json(changed=False, exists=bool(data), services=data.get('services', {}),
                     homes=data.get('homes', {}), certificates=certificates)


if __name__ == '__main__':
    main()
