"""Files the job writes for restic to store: whole or not at all, and untouched when unchanged."""

from __future__ import annotations

import json
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


def write_json_atomic(path: str, data: object) -> None:
    """The job's small records on the cache volume (stamps, what was read back, the last
    complete run): temp + rename, so a crash leaves the old record or the new one."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str) -> object | None:
    """A record ``write_json_atomic`` wrote; None when it is missing or not JSON (the caller
    checks its shape: a damaged record must only ever cost more work)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None
