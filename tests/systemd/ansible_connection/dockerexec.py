# An Ansible connection plugin for the systemd lab's containers, which run no sshd: commands go
# through ``docker exec`` and files through its stdin/stdout. Loaded by ansible-playbook from
# ANSIBLE_CONNECTION_PLUGINS in tests/systemd/test_fleet_systemd.py; never imported by a test.
from __future__ import annotations

import subprocess

from ansible.errors import AnsibleError
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
name: dockerexec
short_description: Run commands in a local Docker container with docker exec
description:
  - The systemd lab's containers, reached with the docker CLI.
author: vpnoffload tests
options:
  remote_addr:
    description: The container's name.
    type: str
    vars:
      - name: inventory_hostname
      - name: ansible_host
"""


class Connection(ConnectionBase):
    transport = "dockerexec"
    has_pipelining = True

    def _container(self) -> str:
        return str(self.get_option("remote_addr"))

    def _connect(self) -> "Connection":
        self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=False):  # type: ignore[no-untyped-def]
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        proc = subprocess.run(["docker", "exec", "-i", self._container(), "/bin/sh", "-c", cmd],
                              input=in_data or b"", capture_output=True, timeout=600, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def put_file(self, in_path, out_path):  # type: ignore[no-untyped-def]
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as source:
            proc = subprocess.run(["docker", "exec", "-i", self._container(), "/bin/sh", "-c", 'cat > "$0"', out_path],
                                  stdin=source, capture_output=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise AnsibleError(f"put_file {out_path}: {proc.stderr.decode(errors='replace')}")

    def fetch_file(self, in_path, out_path):  # type: ignore[no-untyped-def]
        super().fetch_file(in_path, out_path)
        with open(out_path, "wb") as target:
            proc = subprocess.run(["docker", "exec", self._container(), "cat", in_path], stdout=target,
                                  stderr=subprocess.PIPE, timeout=120, check=False)
        if proc.returncode != 0:
            raise AnsibleError(f"fetch_file {in_path}: {proc.stderr.decode(errors='replace')}")

    def close(self) -> None:
        self._connected = False
