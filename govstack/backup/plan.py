"""What the backup service gets on a host: paths, image and secrets (the
files rendered for it are govstack/backup/render.py). One place per path.

``BackupPlan(settings)`` is what templates read (``plan.backup`` in the
compose template); the functions below are pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from govstack import images
from govstack.settings import SERVICE_UID, Settings
from govstack.settings.backup import BackupSettings

SERVICE = "backup"
BACKUP_UID = SERVICE_UID  # reads the S3 keys, which the app's uid owns
BACKUP_ROLE = "govstack_backup"
# Reads every table, writes nothing. BYPASSRLS: pg_dump refuses tables with row security otherwise.
BACKUP_ROLE_ATTRIBUTES = ("NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "BYPASSRLS")
BACKUP_ROLE_GROUPS = ("pg_read_all_data",)
PASSWORD_SECRET = "restic_password"  # noqa: S105 - a secret's name
ROLE_SECRET = "postgres_backup_password"  # noqa: S105
OFFSITE_SECRETS = ("backup_offsite_access_key", "backup_offsite_secret_key")
# The job is a package of its own (jobs/backup, beside app/); its image is built from there.
IMAGE_CONTEXT = images.REPO_ROOT / "jobs" / "backup"


@dataclass(frozen=True)
class HostPaths:
    root: str
    repository: str
    cache: str
    evidence: str
    config_dir: str
    config_file: str
    crontab: str
    metrics_dir: str
    metrics_file: str
    drill_aside: str


@dataclass(frozen=True)
class ContainerPaths:
    repository: str = "/backups/restic"
    cache: str = "/backups/cache"
    config_dir: str = "/etc/govstack-backup"
    config_file: str = "/etc/govstack-backup/backup.json"
    crontab: str = "/etc/govstack-backup/crontab"
    metrics_dir: str = "/metrics"
    metrics_file: str = "/metrics/backup.prom"


def backup_settings(settings: Settings) -> BackupSettings:
    return settings.backup


def host_paths(settings: Settings) -> HostPaths:
    stack = settings.paths
    root = stack.backups_dir
    metrics = stack.metrics_dir
    return HostPaths(
        root=root,
        repository=f"{root}/restic",
        cache=f"{root}/cache",
        evidence=f"{root}/evidence",
        config_dir=f"{settings.config_dir}/backup",
        config_file=f"{settings.config_dir}/backup/backup.json",
        crontab=f"{settings.config_dir}/backup/crontab",
        metrics_dir=metrics,
        metrics_file=f"{metrics}/backup.prom",
        drill_aside=stack.drill_aside,
    )


def backup_image(settings: Settings) -> images.OfflineImage:
    """The job's image: built on the host in both lanes (there is no official one)."""
    lane = settings.images.lane
    # pg_dump comes from the very image the server runs: its major is the server's.
    parent = images.service_image(settings, "postgres")
    build_args = {"POSTGRES_IMAGE": parent}
    if lane == "offline":
        # The parent is our own image: its inputs are this image's inputs too.
        postgres = next(i for i in images.offline_images(settings) if i.service == "postgres")
        build_args["POSTGRES_CONTEXT_HASH"] = images.context_hash(
            postgres.context, postgres.build_args, images.base_context_hash(settings))
    return images.versioned(
        SERVICE,
        "backup",
        images.postgres_major(parent),
        IMAGE_CONTEXT,
        "POSTGRES_VERSION",
        dockerfile="Dockerfile" if lane == "offline" else "Dockerfile.upstream",
        build_args=build_args,
        needs_ca_certs=True,
        from_base=lane == "offline",
    )


def secrets(settings: Settings) -> list[str]:
    names = [PASSWORD_SECRET, ROLE_SECRET, "s3_access_key", "s3_secret_key"]
    if backup_settings(settings).offsite is not None:
        names += list(OFFSITE_SECRETS)
    return names


class BackupPlan:
    """What the compose template reads as ``plan.backup``."""

    def __init__(self, settings: Settings) -> None:
        self.stack_settings = settings
        self.settings = settings.backup

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @cached_property
    def image(self) -> str:
        return backup_image(self.stack_settings).tag

    @property
    def uid(self) -> int:
        return BACKUP_UID

    @cached_property
    def paths(self) -> HostPaths:
        return host_paths(self.stack_settings)

    @property
    def container(self) -> ContainerPaths:
        return ContainerPaths()

    @property
    def secrets(self) -> list[str]:
        return secrets(self.stack_settings)

    @property
    def offsite(self) -> bool:
        return self.settings.offsite is not None
