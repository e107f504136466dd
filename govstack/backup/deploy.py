"""pyinfra deploys of the backup service: its directories and files (before the
stack's compose project starts) and its Postgres role (made with the others, after the database exists).

The service itself is part of the data tier's compose file, so `start_stack`
starts, repairs and recreates it like any other service.
"""

from __future__ import annotations

from pyinfra.api import deploy

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
from govstack.commands import pitr_stanza_key
from govstack.operations import LoginRole, files_rendered, paths_owned, pgbackrest_stanza_ready
from govstack.plan import StackPlan
from govstack.secrets import secret_path


@deploy("Backup directories and configuration")
def prepare_backup(plan: StackPlan):
    paths = host_paths(plan.settings)
    # The root only holds; the container mounts the repository and cache directly.
    wanted = [(paths.root, 0, 0, "750"), (paths.repository, BACKUP_UID, BACKUP_UID, "700"),
              (paths.cache, BACKUP_UID, BACKUP_UID, "700"), (paths.mirror, BACKUP_UID, BACKUP_UID, "700"),
              (paths.evidence, 0, 0, "750"), (paths.config_dir, 0, 0, "755")]
    if plan.settings.pitr_enabled:
        pitr = pitr_paths(plan.settings)
        wanted += [(pitr.repository, PITR_UID, PITR_UID, "700"), (pitr.config_dir, 0, 0, "755")]
    paths_owned(name=f"Backup directories ({len(wanted)})", paths=wanted)
    rendered = backup_files(plan)
    files_rendered(name=f"Rendered backup files ({len(rendered)})", files=rendered, mode="644")


def backup_role(plan: StackPlan) -> LoginRole:
    """The backup job's Postgres role (pg_read_all_data), made with the others (deploys/app.py)."""
    return LoginRole(BACKUP_ROLE, secret_path(plan.settings, ROLE_SECRET), BACKUP_ROLE_ATTRIBUTES,
                     BACKUP_ROLE_GROUPS, connect=True)


@deploy("Point-in-time recovery")
def ensure_pitr(plan: StackPlan):
    """pgBackRest's stanza describes the running cluster, archiving works and a
    full backup exists (after the first deploy, and after a restore into a new
    cluster). Runs in the pgbackrest sidecar; a second deploy changes nothing."""
    s = plan.settings
    pitr = pitr_paths(s)
    # The offsite repository is not on this host: the sidecar is asked every time.
    key = "" if plan.backup.offsite else pitr_stanza_key(
        s.project, PITR_SERVICE, plan.data_path("postgres"), pitr.config_file, pitr.repository, plan.backup.stanza)
    pgbackrest_stanza_ready(
        name=f"pgBackRest stanza {plan.backup.stanza}: archiving checked, a full backup present",
        project=s.project,
        compose_file=s.compose_file,
        service=PITR_SERVICE,
        key=key,
        stamp=s.paths.pitr_stanza_stamp_file,
    )
