"""The ``govstack.backup`` settings section (``Settings.backup``)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Literal

from pydantic import Field, field_validator, model_validator

from govstack.settings.base import Section
from govstack.settings.cron import CronError, parse


class OffsiteSettings(Section):
    """A second restic repository on any S3 endpoint. Its keys are the secrets
    ``backup_offsite_access_key`` / ``backup_offsite_secret_key``, supplied by the
    operator (``govstack.secrets`` or ``GOVSTACK__SECRETS__…``)."""

    endpoint: str = Field(description="http(s)://host[:port] of the S3 endpoint")
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = Field("govstack", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,200}$",
                        description="path of the repository inside the bucket")
    region: str = "us-east-1"

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?", value):
            raise ValueError("must be http(s)://host[:port], without a path")
        return value

    @property
    def repository(self) -> str:
        return f"s3:{self.endpoint}/{self.bucket}/{self.prefix.strip('/')}"


def _cron_expression(value: str) -> str:
    try:
        parse(value)
    except CronError as exc:
        raise ValueError(str(exc)) from None
    return value.strip()


class PitrSettings(Section):
    """Postgres continuous archiving and point-in-time recovery with pgBackRest
    (in the offline lane's Postgres image): every WAL segment is archived within
    ``archive_timeout_s`` of its first commit, full and differential base backups
    run on their schedules, all into an encrypted repository on the backup volume
    (and the offsite S3 store when ``backup.offsite`` is set)."""

    # None: on wherever it can run (backups enabled, the offline lane's Postgres
    # image); the upstream lane's official postgres image has no pgBackRest.
    enabled: bool | None = Field(
        None, description="WAL archiving and base backups with pgBackRest; null = on in the offline lane"
    )
    # Postgres switches to a new WAL segment at most this long after the first
    # write into it, so a committed row waits at most this long to be archived:
    # the recovery point objective of a lost data host, as far as Postgres goes.
    archive_timeout_s: int = Field(
        60, ge=10, le=3600, description="Postgres archive_timeout: longest a commit waits to be archived (the RPO)"
    )
    full_schedule: str = Field("30 1 * * 0", description="cron (UTC) of the full base backups")
    diff_schedule: str = Field("30 1 * * 1-6", description="cron (UTC) of the differential base backups")
    verify_schedule: str = Field(
        "30 4 * * 0", description="cron (UTC) of `pgbackrest verify` (reads and checks the whole repository)"
    )
    # Full backups kept; the WAL they need is kept with them, so the oldest point
    # that can be restored is the oldest kept full backup's start.
    retention_full: int = Field(2, ge=1, le=100, description="full base backups kept (with the WAL they need)")
    retention_diff: int = Field(7, ge=1, le=100, description="differential base backups kept")
    compress_type: Literal["zst", "lz4", "gz", "none"] = Field(
        "zst", description="compression of the repository's files (zst: smallest for its speed)"
    )
    process_max: int = Field(2, ge=1, le=16, description="parallel processes of a backup, restore or verify")

    @field_validator("full_schedule", "diff_schedule", "verify_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _cron_expression(value)


class BackupSettings(Section):
    enabled: bool = Field(True, description="the backup service (restic) in the stack")
    schedule: str = Field(
        "15 2 * * *", description="cron expression (UTC; five fields or @hourly/@daily) of the backup runs"
    )
    root: str | None = Field(
        None, description="backup root on the host (repository, evidence); null = <stack_root>/backups"
    )
    # The newest runs whatever their age: an operator's `govstack backup` before
    # a risky change is not pruned by the next scheduled run of the same hour.
    keep_last: int = Field(3, ge=0, description="retention: newest runs kept (restic forget --keep-last)")
    keep_hourly: int = Field(24, ge=0, description="retention: hourly runs kept (restic forget --keep-hourly)")
    keep_daily: int = Field(7, ge=0)
    keep_weekly: int = Field(5, ge=0)
    keep_monthly: int = Field(12, ge=0)
    keep_yearly: int = Field(0, ge=0)
    keep_pre_deploy: int = Field(
        5, ge=1, description="pre-deploy copies of Postgres kept (restic snapshots a release takes before migrating)"
    )
    # Random packs re-read and decrypted after every run; 5% covers the whole
    # repository every few weeks at a twentieth of the cost of a full read.
    check_read_data_subset: str = Field(
        "5%", pattern=r"^(\d{1,2}(\.\d+)?%|100%|\d+/\d+|\d+[KMGT])$",
        description="restic check --read-data-subset after each run (n%, n/t or a size)",
    )
    # Retention forgets after every run; the space of what it forgot comes back at the
    # first run after this fires (restic prune: the repository's exclusive lock and a
    # rewrite of its index and partly used packs, far more than an unchanged run costs).
    prune_schedule: str | None = Field(
        "30 3 * * 0",
        description="cron (UTC): the first backup run after this fires also prunes (frees the space of "
                    "forgotten runs); null = every run that forgot something prunes",
    )
    # A scheduled run that finds the database, the objects, the vectors and the ledger exactly as
    # the last complete run stored them stores nothing (jobs/backup/govstack_backup/unchanged.py):
    # its cost is a listing, not a run. `govstack backup` (an operator's) always stores a run.
    skip_unchanged: bool = Field(
        True, description="scheduled runs store nothing when nothing changed since the last complete run")
    # restic check after every run that stored something; a run that stored nothing checks when
    # this fired since the last check (the repository can rot while the data stands still).
    check_schedule: str | None = Field(
        "0 0 * * *",
        description="cron (UTC): the first run storing nothing after this fires still runs restic check; "
                    "null = every such run checks",
    )
    readback: bool = Field(
        True, description="read back what a run stored (skipping files it left unchanged) and compare its sha256")
    offsite: OffsiteSettings | None = Field(None, description="second repository on S3; null = local only")
    # Where the app names its objects: lets each run prove that every row's
    # object was captured (rows committed during the run are not in it).
    object_refs: str | None = Field(
        "public.documents.object_name", pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*){1,2}$",
        description="table.column naming object keys, for the consistency check; null = none",
    )
    drill_queries: tuple[str, ...] = Field(
        ("records retention policy", "annual budget report", "road maintenance notice", "data protection"),
        min_length=1, description="search queries whose top-k results a drill compares before and after",
    )
    drill_top_k: int = Field(5, ge=1, le=100)
    rto_target_s: int = Field(
        3600, ge=1, description="drill pass/fail: longest time from data destroyed to the API healthy on it again (s)",
    )
    rpo_target_s: int = Field(
        25 * 3600, ge=1,
        description="drill pass/fail: most recent data a loss may take (s); the schedule's longest gap plus "
                    "the drill's backup run time must fit in it",
    )
    transfers: int = Field(
        4, ge=1, le=32,
        description="parallel S3 transfers of the backup job: object downloads into the mirror, uploads and "
                    "re-reads of a restore",
    )
    mirror_min_free_mb: int = Field(
        1024, ge=0,
        description="free space (MB) the objects mirror's downloads must leave on the backup volume; a run "
                    "that would leave less fails before downloading",
    )
    vectors_incremental: bool = Field(
        True,
        description="export only the Chroma collections whose indexing watermark (the app's documents) or "
                    "vector count changed since the last run; false = every collection every run",
    )
    timeout_s: int = Field(6 * 3600, ge=60, description="longest backup or restore step the CLI waits for")
    pitr: PitrSettings = PitrSettings()

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _cron_expression(value)

    @field_validator("prune_schedule", "check_schedule")
    @classmethod
    def _optional_cron(cls, value: str | None) -> str | None:
        return None if value is None else _cron_expression(value)

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = PurePosixPath(value)
        if not path.is_absolute() or path == PurePosixPath("/"):
            raise ValueError("must be an absolute path below /")
        return str(path)

    @model_validator(mode="after")
    def _keeps_something(self) -> BackupSettings:
        if not any(self.retention.values()):
            raise ValueError("the retention keeps nothing: set a keep_* (last, hourly, daily, …) above 0")
        return self

    @property
    def retention(self) -> dict[str, int]:
        return {
            "keep_last": self.keep_last,
            "keep_hourly": self.keep_hourly,
            "keep_daily": self.keep_daily,
            "keep_weekly": self.keep_weekly,
            "keep_monthly": self.keep_monthly,
            "keep_yearly": self.keep_yearly,
        }
