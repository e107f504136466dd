"""The job's configuration: one JSON file rendered on the host from settings
(``<config_dir>/backup/backup.json``, mounted read-only). Secrets are only
ever *paths* here (``/run/secrets/...``); their values are read when needed
and never put in an environment variable or an argv."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CONFIG = "/etc/govstack-backup/backup.json"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Offsite:
    repository: str  # restic URL, e.g. s3:https://s3.example.org/bucket/prefix
    access_key_file: str
    secret_key_file: str
    region: str = "us-east-1"


@dataclass(frozen=True)
class Config:
    project: str
    repository: str
    cache_dir: str
    password_file: str
    pg: dict[str, Any]
    s3: dict[str, Any]
    chroma: dict[str, Any]
    retention: dict[str, int]
    check_read_data_subset: str
    readback: bool
    metrics_file: str
    schedule_file: str
    object_refs: str | None = None  # "table.column" naming object keys, for the consistency check
    keep_pre_deploy: int = 5  # pre-deploy copies of Postgres kept by the scheduled runs' retention
    offsite: Offsite | None = None
    # pgBackRest (the sidecar's commands): {"stanza": …, "metrics_file": …}; None = off.
    pitr: dict[str, Any] | None = None
    # The objects mirror (govstack_backup/mirror.py); None = objects streamed as one tar, every run.
    mirror_dir: str | None = None
    transfers: int = 4  # parallel S3 downloads (backup) and uploads (restore)
    mirror_min_free_bytes: int = 0  # free space the mirror's downloads must leave on its volume
    # The app's indexing watermark per Chroma collection: {"database": ..., "sql": ...}; None = every
    # collection is exported every run.
    vector_watermark: dict[str, str] | None = None
    # The host's deploy ledger (read-only), kept in each run beside the database.
    ledger_file: str | None = None
    # cron (UTC): a run prunes when this fired since the last prune; None = whenever it forgot something.
    prune_schedule: str | None = None
    # cron (UTC): a run that stored nothing (``run --if-changed``, nothing changed) runs restic check
    # when this fired since the repository's last check; None = every such run checks.
    check_schedule: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def host_tag(self) -> str:
        """restic's --host for every snapshot: the project, stable across
        containers, so runs group together. (The container's own hostname stays
        unique: restic judges a lock stale by hostname + pid, and pids repeat
        across containers.)"""
        return self.project


def load(path: str | None = None) -> Config:
    path = path or os.environ.get("GOVSTACK_BACKUP_CONFIG", DEFAULT_CONFIG)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read the backup config {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"the backup config {path} is not JSON: {exc}") from None
    offsite = data.pop("offsite", None)
    fields = {f.name: f for f in dataclasses.fields(Config)}
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"the backup config {path} lacks {', '.join(missing)}")
    extra = {k: data.pop(k) for k in list(data) if k not in fields}
    return Config(**data, offsite=Offsite(**offsite) if offsite else None, extra=extra)


def read_secret(path: str) -> str:
    """A secret file's value without trailing newlines (the ``*_FILE`` convention)."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"cannot read the secret {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"the secret {path} is empty")
    return value
