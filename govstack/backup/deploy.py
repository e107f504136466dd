"""pyinfra deploys of the backup service: its directories and files (before the
stack's compose project starts) and its Postgres role (after the database exists).

The service itself is part of the data tier's compose file, so `start_stack`
starts, repairs and recreates it like any other service.
"""

from __future__ import annotations

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.operations import files

from govstack.backup.plan import BACKUP_ROLE, BACKUP_UID, ROLE_SECRET, host_paths
from govstack.backup.render import backup_files
from govstack.operations import path_owned
from govstack.secrets import secret_path


@deploy("Backup directories and configuration")
def prepare_backup(plan):
    paths = host_paths(plan.settings)
    # The root only holds; the container mounts the repository and cache directly.
    path_owned(name="Backup root", path=paths.root, uid=0, gid=0, mode="750")
    path_owned(name="restic repository", path=paths.repository, uid=BACKUP_UID, gid=BACKUP_UID, mode="700")
    path_owned(name="restic cache", path=paths.cache, uid=BACKUP_UID, gid=BACKUP_UID, mode="700")
    path_owned(name="Drill evidence", path=paths.evidence, uid=0, gid=0, mode="750")
    path_owned(name="Backup config directory", path=paths.config_dir, uid=0, gid=0, mode="755")
    for path, content in backup_files(plan).items():
        files.put(name=f"Render {path}", src=StringIO(content), dest=path, mode="644")


@deploy("Backup database role")
def ensure_backup_role(plan):
    s = plan.settings
    postgres_backup_role(
        name=f"Postgres role {BACKUP_ROLE} (pg_read_all_data) can read {s.postgres.database}",
        project=s.project,
        compose_file=s.compose_file,
        role=BACKUP_ROLE,
        database=s.postgres.database,
        password_file=secret_path(s, ROLE_SECRET),
    )


class BackupRoleReady(FactBase):
    """True when ``role`` logs in to ``database`` with its secret and is a member
    of pg_read_all_data (the password goes on stdin, never in an argv)."""

    def command(self, project: str, compose_file: str, role: str, database: str, password_file: str) -> str:
        exec_ = f"docker compose -p {shlex.quote(project)} -f {shlex.quote(compose_file)} exec -T postgres"
        probe = (f"PGPASSWORD=$(cat) psql -X -h 127.0.0.1 -U {role} -d {database} -tAc "
                 "\"select pg_has_role('pg_read_all_data', 'member')\"")
        return f"{exec_} sh -c {shlex.quote(probe)} < {shlex.quote(password_file)} 2>/dev/null || true"

    def process(self, output) -> bool:
        return "".join(output).strip() == "t"


def backup_role_sql(role: str, database: str, password_shell: str) -> str:
    """Shell printing the idempotent SQL (for psql on stdin) that makes the backup
    role: login, read-only on all data, allowed to connect. ``password_shell`` is
    a shell expression for the password (e.g. ``$(cat FILE)``); printf is a
    builtin, so the value never reaches an argv. Names are validated identifiers."""
    return (
        f"printf \"SELECT 'CREATE ROLE {role} LOGIN' WHERE NOT EXISTS "  # noqa: S608
        f"(SELECT FROM pg_roles WHERE rolname = '{role}')\\\\gexec\\n\"; "
        # BYPASSRLS: pg_dump refuses tables with row security otherwise.
        f"printf \"ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS "
        f"PASSWORD '%s';\\n\" \"{password_shell}\"; "
        f"printf \"GRANT pg_read_all_data TO {role};\\n\"; "
        f"printf \"GRANT CONNECT ON DATABASE {database} TO {role};\\n\""
    )


@operation()
def postgres_backup_role(project: str, compose_file: str, role: str, database: str, password_file: str):
    """
    The backup job's login role: reads every table (pg_read_all_data), writes nothing.

    + project, compose_file: the Compose project Postgres runs in
    + role: role name
    + database: the database it may connect to
    + password_file: the role's secret on the host
    """
    if host.get_fact(BackupRoleReady, project=project, compose_file=compose_file, role=role, database=database,
                     password_file=password_file):
        host.noop(f"role {role} reads {database}")
        return
    exec_ = f"docker compose -p {shlex.quote(project)} -f {shlex.quote(compose_file)} exec -T postgres"
    sql = backup_role_sql(role, database, f"$(cat {shlex.quote(password_file)})")
    yield f"{{ {sql}; }} | {exec_} psql -X -v ON_ERROR_STOP=1 -q -U postgres -d postgres"
