"""Who runs a command: the name the operator goes by, and who the controller's
OS says it is. The ledger (govstack/ledger.py) and the lock holder record
them; this module needs nothing else of govstack."""

from __future__ import annotations

import os
import socket


def operator() -> str:
    """The name the operator goes by (``GOVSTACK_OPERATOR``, e.g. a CI job's); anyone can set
    it, so the ledger records :func:`identity` beside it."""
    import getpass

    return os.environ.get("GOVSTACK_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def identity() -> dict[str, str]:
    """Who runs this command as the controller's OS knows it, which no variable of ours
    sets: the OS user (by uid), the controller, and for an SSH login its client address and,
    where sshd exposes it (``ExposeAuthInfo yes``), the SHA256 fingerprint of the key that
    logged in."""
    import pwd

    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid {os.getuid()}"
    found = {"os_user": user, "controller": socket.gethostname()}
    if client := os.environ.get("SSH_CLIENT", "").split():
        found["ssh_from"] = client[0]
    if key := ssh_key_fingerprint(os.environ.get("SSH_USER_AUTH")):
        found["ssh_key"] = key
    return found


def ssh_key_fingerprint(auth_info_file: str | None) -> str | None:
    """``SHA256:…`` (as ssh-keygen -l prints it) of the public key in sshd's
    ExposeAuthInfo file (lines ``publickey TYPE BASE64``); None when there is none."""
    import base64
    import hashlib

    if not auth_info_file:
        return None
    try:
        with open(auth_info_file) as info:
            lines = info.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "publickey":
            try:
                blob = base64.b64decode(parts[2], validate=True)
            except ValueError:
                continue
            return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return None
