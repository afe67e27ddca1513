#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vpnoffload contributors
# MIT License (see LICENSE in the vpnoffload repository)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vpnoffload_watch
short_description: Keep vpnoffload's watchdog running on a VPS without systemd
description:
  - Asks C(vpnoffload status --json) whether the watchdog runs; when it does not, starts
    C(vpnoffload watch) in a session of its own, its output appended to O(log).
  - On a VPS with systemd use C(install-service) (the C(vps) role does) instead; this is for
    containers and other hosts where systemd is not PID 1. Nothing restarts the watchdog at boot there.
version_added: 0.1.0
author: vpnoffload contributors
options:
  log:
    description: Where the watchdog's output goes (appended).
    type: path
    default: /var/log/vpnoffload-watch.log
extends_documentation_fragment:
  - vpnoffload.fleet.common
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
'''

EXAMPLES = r'''
- name: Failover on a VPS that has no systemd
  vpnoffload.fleet.vpnoffload_watch:
    log: /var/log/vpnoffload-watch.log
'''

RETURN = r'''
pid:
  description: The watchdog's pid (0 in check mode when it would be started).
  returned: always
  type: int
'''

import json
import os
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vpnoffload.fleet.plugins.module_utils.vpnoffload import COMMON_ARGS, base_argv, run


def watchdog(module):
    """(running, pid) from ``status --json`` (its exit code says health, not failure)."""
    rc, out, err = run(module, ['status', '--json'], check=False)
    try:
        report = json.loads(out)
    except ValueError:
        module.fail_json(msg='vpnoffload status --json gave no JSON (exit %d): %s' % (rc, (err or out).strip()))
    found = report.get('watchdog') or {}
    return bool(found.get('running')), int(found.get('pid') or 0)


def main():
    spec = dict(log=dict(type='path', default='/var/log/vpnoffload-watch.log'))
    spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    running, pid = watchdog(module)
    if running:
        module.exit_json(changed=False, pid=pid)
    if module.check_mode:
        module.exit_json(changed=True, pid=0)
    # Its own session and no inherited descriptors: the SSH connection that ran this module
    # must not wait for the watchdog, nor kill it when it closes.
    with open(module.params['log'], 'ab') as log, open(os.devnull, 'rb') as nothing:
        subprocess.Popen(base_argv(module) + ['watch'], stdin=nothing, stdout=log, stderr=log,
                         start_new_session=True, close_fds=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running, pid = watchdog(module)
        if running:
            module.exit_json(changed=True, pid=pid)
        time.sleep(0.5)
    module.fail_json(msg='vpnoffload watch did not come up within 20 s; see %s' % module.params['log'])


if __name__ == '__main__':
    main()
