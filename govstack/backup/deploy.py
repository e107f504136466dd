"""pyinfra deploys of the backup service: its directories and files (before the
stack's compose project starts) and its Postgres role (after the database exists).

The service itself is part of the data tier's compose file, so `start_stack`
starts, repairs and recreates it like any other service.
"""

from __future__ import annotations

from io import StringIO

from pyinfra.api import deploy
from pyinfra.operations import files

from govstack.backup.plan import (
    BACKUP_ROLE,
    BACKUP_ROLE_ATTRIBUTES,
    BACKUP_ROLE_GROUPS,
    BACKUP_UID,
    PITR_SERVICE,
    PITR_UID,
    ROLE_SECRET,
    host_paths,
    pitr_paths,
)
from govstack.backup.render import backup_files
from govstack.operations import path_owned, pgbackrest_stanza_ready, postgres_login_role
from govstack.plan import StackPlan
from govstack.secrets import secret_path


@deploy("Backup directories and configuration")
def prepare_backup(plan: StackPlan):
    paths = host_paths(plan.settings)
    # The root only holds; the container mounts the repository and cache directly.
    path_owned(name="Backup root", path=paths.root, uid=0, gid=0, mode="750")
    path_owned(name="restic repository", path=paths.repository, uid=BACKUP_UID, gid=BACKUP_UID, mode="700")
    path_owned(name="restic cache", path=paths.cache, uid=BACKUP_UID, gid=BACKUP_UID, mode="700")
    path_owned(name="Objects mirror", path=paths.mirror, uid=BACKUP_UID, gid=BACKUP_UID, mode="700")
    path_owned(name="Drill evidence", path=paths.evidence, uid=0, gid=0, mode="750")
    path_owned(name="Backup config directory", path=paths.config_dir, uid=0, gid=0, mode="755")
    if plan.settings.pitr_enabled:
        pitr = pitr_paths(plan.settings)
        path_owned(name="pgBackRest repository", path=pitr.repository, uid=PITR_UID, gid=PITR_UID, mode="700")
        path_owned(name="pgBackRest config directory", path=pitr.config_dir, uid=0, gid=0, mode="755")
    for path, content in backup_files(plan).items():
        files.put(name=f"Render {path}", src=StringIO(content), dest=path, mode="644")


@deploy("Backup database role")
def ensure_backup_role(plan: StackPlan):
    s = plan.settings
    postgres_login_role(
        name=f"Postgres role {BACKUP_ROLE} (pg_read_all_data) can read {s.postgres.database}",
        project=s.project,
        compose_file=s.compose_file,
        role=BACKUP_ROLE,
        database=s.postgres.database,
        password_file=secret_path(s, ROLE_SECRET),
        attributes=BACKUP_ROLE_ATTRIBUTES,
        member_of=BACKUP_ROLE_GROUPS,
        connect=True,
    )


@deploy("Point-in-time recovery")
def ensure_pitr(plan: StackPlan):
    """pgBackRest's stanza describes the running cluster, archiving works and a
    full backup exists (after the first deploy, and after a restore into a new
    cluster). Runs in the pgbackrest sidecar; a second deploy changes nothing."""
    s = plan.settings
    pgbackrest_stanza_ready(
        name=f"pgBackRest stanza {plan.backup.stanza}: archiving checked, a full backup present",
        project=s.project,
        compose_file=s.compose_file,
        service=PITR_SERVICE,
    )
