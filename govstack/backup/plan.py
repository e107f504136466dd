"""The backup job's fixed facts on the controller side: its database role and
secrets, and where its files are on the host and in its container (the image
and the compose block's values are the service catalog's, govstack/catalog.py,
read as ``plan.backup``; the files rendered for it are govstack/backup/render.py).
"""

from __future__ import annotations

from govstack.catalog import BACKUP_IMAGE_CONTEXT as IMAGE_CONTEXT
from govstack.catalog import BACKUP_OFFSITE_SECRETS as OFFSITE_SECRETS
from govstack.catalog import BACKUP_PASSWORD_SECRET as PASSWORD_SECRET
from govstack.catalog import BACKUP_ROLE_SECRET as ROLE_SECRET
from govstack.catalog import SERVICES, backup_image, backup_secrets
from govstack.catalog import BackupContainerPaths as ContainerPaths
from govstack.settings import Settings
from govstack.settings.backup import BackupSettings
from govstack.settings.paths import BackupPaths as HostPaths

SERVICE = "backup"
BACKUP_UID = SERVICES[SERVICE].uid
BACKUP_ROLE = "govstack_backup"
# Reads every table, writes nothing. BYPASSRLS: pg_dump refuses tables with row security otherwise.
BACKUP_ROLE_ATTRIBUTES = ("NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "BYPASSRLS")
BACKUP_ROLE_GROUPS = ("pg_read_all_data",)

__all__ = ["IMAGE_CONTEXT", "OFFSITE_SECRETS", "PASSWORD_SECRET", "ROLE_SECRET", "ContainerPaths", "HostPaths",
           "backup_image", "backup_settings", "host_paths", "secrets"]


def backup_settings(settings: Settings) -> BackupSettings:
    return settings.backup


def host_paths(settings: Settings) -> HostPaths:
    return settings.paths.backup


def secrets(settings: Settings) -> list[str]:
    return backup_secrets(settings)
