"""Drill evidence filed beside the backups (`govstack-backup file-evidence NAME`).

The drill writes its evidence on the host it protects; an auditor also needs a copy that
outlives that host. The evidence file comes on stdin (no mount: the host's evidence directory
stays root's) and goes as one snapshot, tagged ``evidence``, into the local repository and,
when ``backup.offsite`` is set, straight into the offsite one. Retention never touches it: it
forgets run snapshots only (job.apply_retention selects them by tag).
"""

from __future__ import annotations

import hashlib
import re
from typing import IO, Any

from govstack_backup.config import Config
from govstack_backup.job import BackupFailed, RunLock, local_repo, offsite_repo, probe_s3
from govstack_backup.restic import Restic, ResticError

TAG = "evidence"
# What the drill writes: drill-<UTC time>.json and .md (govstack/backup/drill.py).
NAME = re.compile(r"drill-\d{8}T\d{6}Z\.(json|md)")
MAX_BYTES = 16 << 20
LOCK_WAIT_S = 600


def read_bounded(stream: IO[bytes]) -> bytes:
    data = stream.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise BackupFailed("evidence", f"the evidence on stdin is over {MAX_BYTES >> 20} MiB: not a drill's")
    if not data:
        raise BackupFailed("evidence", "no evidence on stdin")
    return data


def file_evidence(cfg: Config, name: str, stream: IO[bytes]) -> dict[str, Any]:
    if not NAME.fullmatch(name):
        raise BackupFailed("evidence", f"{name!r} is not a drill evidence file name (drill-YYYYMMDDTHHMMSSZ.json|md)")
    data = read_bounded(stream)
    tags = [TAG, f"{TAG}:{name.rsplit('.', 1)[0]}"]
    filename = f"evidence/{name}"
    filed: dict[str, Any] = {"ok": True, "name": name, "bytes": len(data),
                             "sha256": hashlib.sha256(data).hexdigest(), "offsite": None}
    # The scheduler's runs hold this lock while they prune: restic refuses a backup meanwhile.
    with RunLock(wait_s=LOCK_WAIT_S):
        local = local_repo(cfg)
        try:
            filed["local"] = _store(local, filename, tags, data)
        except ResticError as exc:
            raise BackupFailed("evidence", f"local repository: {exc}") from None
        offsite = offsite_repo(cfg)
        if offsite is not None:
            if offsite.repository.startswith("s3:"):
                probe_s3(offsite.repository)
            try:
                offsite.ensure(copy_chunker_from=local)
                filed["offsite"] = _store(offsite, filename, tags, data)
            except ResticError as exc:
                raise BackupFailed("offsite", f"{offsite.repository}: {exc}") from None
            filed["offsite_repository"] = offsite.repository
    return filed


def _store(repo: Restic, filename: str, tags: list[str], data: bytes) -> str:
    """One snapshot holding ``data`` as ``/<filename>``, read back and compared before it counts."""
    snapshot = repo.backup_stream(filename, tags, lambda w: w.write(data))["snapshot"]
    if repo.read_bytes(snapshot, filename) != data:
        raise BackupFailed("evidence", f"{repo.repository}: snapshot {snapshot} does not read back as written")
    return snapshot
