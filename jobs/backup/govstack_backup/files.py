"""Files the job writes for restic to store: whole or not at all, and untouched when unchanged."""

from __future__ import annotations

import os
from collections.abc import Callable


def write_if_changed(path: str, data: bytes, same: Callable[[bytes], bytes] | None = None) -> tuple[bool, bytes]:
    """Write ``data`` (temp + fsync + rename) unless the file already holds it (compared through
    ``same``, when given): an untouched file is one restic skips. Returns (written, the bytes the
    file now holds)."""
    try:
        with open(path, "rb") as fh:
            old = fh.read()
        if old == data or (same is not None and same(old) == same(data)):
            return False, old
    except FileNotFoundError:
        pass
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return True, data
