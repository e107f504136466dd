"""The backup job's fixed facts on the controller side: its database role and
secrets, and where its files are on the host and in its container (the image
and the compose block's values are the service catalog's, govstack/catalog.py,
read as ``plan.backup``; the files rendered for it are govstack/backup/render.py).
The same for pgBackRest's sidecar (the catalog's ``pgbackrest`` record).
"""

from __future__ import annotations

from govstack.catalog import BACKUP_IMAGE_CONTEXT as IMAGE_CONTEXT
from govstack.catalog import BACKUP_OFFSITE_SECRETS as OFFSITE_SECRETS
from govstack.catalog import BACKUP_PASSWORD_SECRET as PASSWORD_SECRET
from govstack.catalog import BACKUP_ROLE_SECRET as ROLE_SECRET
from govstack.catalog import (
    PITR_SECRET,
    PITR_SERVICE,
    PITR_SOCKET_VOLUME,
    SERVICES,
    PitrContainerPaths,
    backup_image,
    backup_secrets,
    pitr_secrets,
)
from govstack.catalog import BackupContainerPaths as ContainerPaths
from govstack.settings import Settings
from govstack.settings.backup import BackupSettings
from govstack.settings.paths import BackupPaths as HostPaths
from govstack.settings.paths import PitrPaths

SERVICE = "backup"
BACKUP_UID = SERVICES[SERVICE].uid
BACKUP_ROLE = "govstack_backup"
# Reads every table, writes nothing. BYPASSRLS: pg_dump refuses tables with row security otherwise.
BACKUP_ROLE_ATTRIBUTES = ("NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "BYPASSRLS")
BACKUP_ROLE_GROUPS = ("pg_read_all_data",)
# Postgres' own uid: the sidecar reads the data directory.
PITR_UID = SERVICES[PITR_SERVICE].uid

__all__ = ["IMAGE_CONTEXT", "OFFSITE_SECRETS", "PASSWORD_SECRET", "PITR_SECRET", "PITR_SERVICE",
           "PITR_SOCKET_VOLUME", "PITR_UID", "ROLE_SECRET", "ContainerPaths", "HostPaths", "PitrContainerPaths",
           "PitrPaths", "backup_image", "backup_settings", "host_paths", "pitr_paths", "pitr_secrets", "secrets",
           "stanza"]


def backup_settings(settings: Settings) -> BackupSettings:
    return settings.backup


def host_paths(settings: Settings) -> HostPaths:
    return settings.paths.backup


def pitr_paths(settings: Settings) -> PitrPaths:
    return settings.paths.pitr


def stanza(settings: Settings) -> str:
    """pgBackRest's name for this stack's cluster: the Compose project."""
    return settings.project


def secrets(settings: Settings) -> list[str]:
    return backup_secrets(settings)
