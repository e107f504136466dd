"""What the backup service gets on a host: paths, image, secrets, and the two
files rendered for it (the job's config and its crontab). One place per path.

``BackupPlan(stack_plan)`` is what templates read (``plan.backup`` in the
compose template); the functions below are pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from govstack import images
from govstack.settings import SERVICE_UID, Settings
from govstack.settings.backup import BackupSettings

if TYPE_CHECKING:  # pragma: no cover
    from govstack.plan import StackPlan

SERVICE = "backup"
BACKUP_UID = SERVICE_UID  # reads the S3 keys, which the app's uid owns
BACKUP_ROLE = "govstack_backup"
PASSWORD_SECRET = "restic_password"  # noqa: S105 - a secret's name
ROLE_SECRET = "postgres_backup_password"  # noqa: S105
OFFSITE_SECRETS = ("backup_offsite_access_key", "backup_offsite_secret_key")
IMAGE_CONTEXT = images.IMAGE_TEMPLATES / "backup"
# The Postgres image the job's pg_dump comes from, per lane (same major as the server).
POSTGRES_PARENT = {"offline": ("govstack/postgres:15", "15"), "upstream": ("postgres:17.6-bookworm", "17")}


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
    return settings.backup  # type: ignore[attr-defined]


def host_paths(settings: Settings) -> HostPaths:
    root = backup_settings(settings).root or f"{settings.stack_root}/backups"
    metrics = f"{settings.data_dir}/metrics"
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
        # Data directories a drill moves aside: same filesystem as the data (a rename).
        drill_aside=f"{settings.data_dir}/.drill-aside",
    )


def backup_image(settings: Settings) -> images.OfflineImage:
    """The job's image: built on the host in both lanes (there is no official one)."""
    lane = settings.images.lane
    parent, major = POSTGRES_PARENT[lane]
    build_args = {"POSTGRES_IMAGE": parent}
    if lane == "offline":
        # The parent is our own image: its inputs are this image's inputs too.
        postgres = next(i for i in images.offline_images(settings) if i.service == "postgres")
        build_args["POSTGRES_CONTEXT_HASH"] = images.context_hash(
            postgres.context, postgres.build_args, images.base_context_hash(settings))
    return images.OfflineImage(
        SERVICE,
        f"govstack/backup:{major}",
        IMAGE_CONTEXT,
        dockerfile="Dockerfile" if lane == "offline" else "Dockerfile.upstream",
        build_args=build_args,
        needs_ca_certs=True,
    )


def secrets(settings: Settings) -> list[str]:
    names = [PASSWORD_SECRET, ROLE_SECRET, "s3_access_key", "s3_secret_key"]
    if backup_settings(settings).offsite is not None:
        names += list(OFFSITE_SECRETS)
    return names


def job_config(plan: StackPlan) -> dict[str, Any]:
    """The job's backup.json: everything it needs, secrets as paths only."""
    s = plan.settings
    b = backup_settings(s)
    c = ContainerPaths()
    config: dict[str, Any] = {
        "project": s.project,
        "repository": c.repository,
        "cache_dir": c.cache,
        "password_file": f"/run/secrets/{PASSWORD_SECRET}",
        "pg": {
            "host": plan.data_tier_host("postgres", on_data_network=True),
            "port": plan.ports["postgres"],
            "database": s.postgres.database,
            "user": BACKUP_ROLE,
            "password_file": f"/run/secrets/{ROLE_SECRET}",
        },
        "s3": {
            "endpoint": plan.s3_endpoint_from(on_data_network=True),
            "secure": s.object_store.secure,
            "region": s.object_store.region,
            "access_key_file": "/run/secrets/s3_access_key",
            "secret_key_file": "/run/secrets/s3_secret_key",
            "buckets": None,  # every bucket
        },
        "chroma": {
            "url": f"http://{plan.data_tier_host('chroma', on_data_network=True)}:{plan.ports['chroma']}",
            "tenant": "default_tenant",
        },
        "retention": b.retention,
        "check_read_data_subset": b.check_read_data_subset,
        "readback": b.readback,
        "metrics_file": c.metrics_file,
        "schedule_file": c.crontab,
        "object_refs": b.object_refs,
        "offsite": None,
    }
    if b.offsite is not None:
        config["offsite"] = {
            "repository": b.offsite.repository,
            "access_key_file": f"/run/secrets/{OFFSITE_SECRETS[0]}",
            "secret_key_file": f"/run/secrets/{OFFSITE_SECRETS[1]}",
            "region": b.offsite.region,
        }
    return config


def render_job_config(plan: StackPlan) -> str:
    return json.dumps(job_config(plan), indent=2, sort_keys=True) + "\n"


def render_crontab(plan: StackPlan) -> str:
    from govstack.render import render

    return render("backup/crontab.j2", plan, schedule=backup_settings(plan.settings).schedule)


def backup_files(plan: StackPlan) -> dict[str, str]:
    """Host path -> content of the files the backup service reads."""
    paths = host_paths(plan.settings)
    return {paths.config_file: render_job_config(plan), paths.crontab: render_crontab(plan)}


class BackupPlan:
    """What the compose template reads as ``plan.backup``."""

    def __init__(self, plan: StackPlan) -> None:
        self.plan = plan
        self.settings = backup_settings(plan.settings)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @cached_property
    def image(self) -> str:
        return backup_image(self.plan.settings).tag

    @property
    def uid(self) -> int:
        return BACKUP_UID

    @cached_property
    def paths(self) -> HostPaths:
        return host_paths(self.plan.settings)

    @property
    def container(self) -> ContainerPaths:
        return ContainerPaths()

    @property
    def secrets(self) -> list[str]:
        return secrets(self.plan.settings)

    @property
    def offsite(self) -> bool:
        return self.settings.offsite is not None
