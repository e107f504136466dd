"""Reach an inventory host the way testinfra does, for checks and operator reads."""

from __future__ import annotations

from typing import Any

from govstack.inventory import load_inventory


def testinfra_spec(name: str, data: dict[str, Any]) -> str:
    """testinfra backend URL for a pyinfra host: local, or paramiko over SSH.

    paramiko rather than the ssh backend: testinfra ignores --ssh-extra-args
    (pytest-testinfra#618), and paramiko takes the key and port from the URL.
    """
    if name == "@local":
        return "local://"
    hostname = data.get("ssh_hostname", name)
    user = data.get("ssh_user", "root")
    port = data.get("ssh_port", 22)
    spec = f"paramiko://{user}@{hostname}:{port}"
    if data.get("ssh_key"):
        spec += f"?ssh_identity_file={data['ssh_key']}"
    return spec


def testinfra_host(name: str, data: dict[str, Any]):
    import testinfra

    return testinfra.get_host(testinfra_spec(name, data))


def read_host_file(inventory: str, host_name: str, path: str) -> str:
    for entry in load_inventory(inventory):
        if entry.name == host_name:
            target = testinfra_host(entry.name, entry.data)
            file = target.file(path)
            if not file.exists:
                raise FileNotFoundError(path)
            return file.content_string.rstrip("\n")
    raise KeyError(host_name)
