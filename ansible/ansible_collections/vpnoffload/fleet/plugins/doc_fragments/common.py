# -*- coding: utf-8 -*-
# Copyright: vpnoffload contributors
# MIT License (see LICENSE in the vpnoffload repository)

from __future__ import annotations


class ModuleDocFragment:
    """The options every module of the collection takes (module_utils.vpnoffload.COMMON_ARGS)."""

    DOCUMENTATION = r'''
options:
  bin:
    description: The vpnoffload executable on the managed host.
    type: path
    default: vpnoffload
  config:
    description: The config file (C(-c)).
    type: path
    default: /etc/vpnoffload/vpnoffload.toml
  state_dir:
    description: C(--state-dir), when not the default state/ beside the config.
    type: path
'''
