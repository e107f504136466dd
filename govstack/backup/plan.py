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

# The app's indexing watermark of each Chroma collection (app/govstack_app/migrations): its rows,
# newest indexed_at, and an order-independent hash over every row's id, indexed_at, failure and
# chunk count. The app writes a document's vectors before it commits indexed_at, and commits a
# deletion before it deletes the vectors (which the collection's count then shows), so a run
# whose watermark and count equal the last export's has nothing new to export.
VECTOR_WATERMARK_SQL = (
    "SELECT c.chroma_name, count(d.id), coalesce(max(d.indexed_at)::text, ''), "
    "coalesce(sum(hashtextextended(d.id::text || '/' || coalesce(d.indexed_at::text, '') || '/' "
    "|| d.index_failed::text || '/' || coalesce(d.chunk_count, -1)::text, 0)), 0) "
    "FROM collections c LEFT JOIN documents d ON d.collection_id = c.id GROUP BY c.chroma_name"
)
VECTOR_DATABASE = "default_database"  # the app's Chroma database (app/govstack_app/chroma.py)

__all__ = ["IMAGE_CONTEXT", "OFFSITE_SECRETS", "PASSWORD_SECRET", "PITR_SECRET", "PITR_SERVICE",
           "PITR_SOCKET_VOLUME", "PITR_UID", "ROLE_SECRET", "VECTOR_DATABASE", "VECTOR_WATERMARK_SQL",
           "ContainerPaths", "HostPaths", "PitrContainerPaths", "PitrPaths", "backup_image", "backup_settings",
           "host_paths", "pitr_paths", "pitr_secrets", "secrets", "stanza"]


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
