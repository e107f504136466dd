"""Postgres: connection pool (psycopg_pool), migrations (ordered SQL files), audit partitions, and
the app role's privileges.

Two roles (issue 12): the *owner* owns the schema and is the only one migrations run as (the
one-off ``migrate`` container, the only holder of its password); the *app* role that the API
and worker connect as owns nothing. After every migration run the owner grants the app DML on
its tables, only SELECT and INSERT on the append-only ones (the audit trail) and only SELECT on
the read-only ones: the app can neither drop, truncate nor change what the audit trail holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from .security import hash_api_key
from .settings import Settings

log = structlog.get_logger(__name__)

MIGRATION_LOCK = 4_242_001  # pg_advisory_lock key: one migrator at a time
BOOTSTRAP_KEY_NAME = "bootstrap-admin"
AUDIT_MONTHS_AHEAD = 2
# How long a request waits for a Postgres connection before it is answered 503: long enough to
# ride out a Postgres restart, short enough that nginx (proxy_read_timeout) never gives up first.
POOL_WAIT_S = 10.0
# How long the pool keeps retrying a connection in the background before it gives up; the next
# request that needs one starts a new attempt at once. Short, because psycopg_pool's retry delay
# doubles up to this bound: with its default (300 s) a pool retried only every minute or so, and
# analytics answered /ready 503 for ~50 s after a rebuilt data host was back (multi-host lane,
# lost-data-host), long enough for `govstack up` to find the app host unhealthy.
RECONNECT_GIVE_UP_S = 10.0
# Tables the app may read and append to, never change: SELECT and INSERT only, nothing on their
# partitions (rows reach them through the parent, where privileges are checked). The bootstrap
# key's seeds too: an app that could delete one could make an old secret file's key live again.
APPEND_ONLY_TABLES = ("audit_logs", "bootstrap_key_seeds")
# Tables the app may only read: the migrations' own record, and the retention floor the
# partition-drop function enforces (an app that could lower it could shorten the audit trail).
READ_ONLY_TABLES = ("schema_migrations", "audit_retention_floor", "schema_stamp")
DML = ("SELECT", "INSERT", "UPDATE", "DELETE")
NEVER = ("TRUNCATE", "REFERENCES", "TRIGGER")


def make_pool(conninfo: Callable[[], str] | str, *, min_size: int = 1, max_size: int = 10, name: str = "app",
              kwargs: dict[str, Any] | None = None) -> ConnectionPool:
    """The pool every service of the app uses (api, worker, analytics), opened without waiting:
    the service starts while Postgres is away, and its /ready says so until Postgres is back."""
    pool = ConnectionPool(
        # A callable: the password file is read for each new connection, so a rotated password
        # (`govstack secret rotate`) is used without a restart; pooled connections stay open.
        conninfo,
        kwargs=kwargs,
        min_size=min_size,
        max_size=max_size,
        timeout=POOL_WAIT_S,  # then PoolTimeout (-> 503)
        check=ConnectionPool.check_connection,  # drop connections broken by a Postgres restart
        reconnect_timeout=RECONNECT_GIVE_UP_S,
        name=name,
        open=False,
    )
    pool.open(wait=False)
    return pool


def connect_with_retry(settings: Settings, deadline_s: float = 60.0) -> psycopg.Connection:
    end = time.monotonic() + deadline_s
    delay = 0.5
    while True:
        try:
            return psycopg.connect(settings.conninfo(), autocommit=True)
        except psycopg.OperationalError as exc:
            if time.monotonic() >= end:
                raise
            log.warning("postgres not reachable yet, retrying", error=str(exc).strip())
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def migration_files() -> list[tuple[str, str]]:
    pkg = resources.files("govstack_app") / "migrations"
    files = sorted(p for p in pkg.iterdir() if p.name.endswith(".sql"))
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


def ensure_audit_partitions(conn: psycopg.Connection, months_ahead: int = AUDIT_MONTHS_AHEAD) -> None:
    with conn.transaction():
        for m in range(months_ahead + 1):
            conn.execute("SELECT govstack_ensure_audit_partition(now() + make_interval(months => %s))", (m,))


# Privileges in schema analytics (migration 0006), as (kind, object, privilege). The app role
# writes usage events and its retention job deletes old ones; the analytics service's role reads
# events only through the day-level view, appends to its release cache and ledger, and asks which
# key a hash belongs to. Neither gets anything else there.
APP_ANALYTICS_PRIVILEGES = (
    ("SCHEMA", "analytics", "USAGE"),
    *(("TABLE", "analytics.events", p) for p in ("SELECT", "INSERT", "DELETE")),
)
ANALYTICS_ROLE_PRIVILEGES = (
    ("SCHEMA", "analytics", "USAGE"),
    ("TABLE", "analytics.actor_day_events", "SELECT"),
    ("TABLE", "analytics.collections", "SELECT"),
    *(("TABLE", table, p) for table in ("analytics.releases", "analytics.privacy_ledger")
      for p in ("SELECT", "INSERT")),
    ("FUNCTION", "analytics.consumer_of_key(text)", "EXECUTE"),
)
_HAS_PRIVILEGE = {"SCHEMA": "has_schema_privilege", "TABLE": "has_table_privilege",
                  "FUNCTION": "has_function_privilege"}


def analytics_grants_missing(conn: psycopg.Connection, settings: Settings) -> list[sql.Composed]:
    """The GRANTs of schema analytics that the app role and the analytics role (each when it
    exists and is not the owner) still lack; none when the schema is not there yet."""
    if conn.execute("SELECT to_regnamespace('analytics')").fetchone()[0] is None:
        return []
    wanted = []
    for role, privileges in ((settings.app_database_user, APP_ANALYTICS_PRIVILEGES),
                             (settings.analytics_role, ANALYTICS_ROLE_PRIVILEGES)):
        if not role or role == settings.database_user:
            continue
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            continue
        wanted += [(role, *p) for p in privileges]
    missing = []
    for role, kind, name, privilege in wanted:
        has = conn.execute(sql.SQL("SELECT {}(%s, %s, %s)").format(sql.SQL(_HAS_PRIVILEGE[kind])),
                           (role, name, privilege)).fetchone()[0]
        if not has:
            target = sql.SQL(name) if kind == "FUNCTION" else sql.Identifier(*name.split("."))
            missing.append(sql.SQL("GRANT {} ON {} {} TO {}").format(
                sql.SQL(privilege), sql.SQL(kind), target, sql.Identifier(role)))
    return missing


def grant_analytics_privileges(conn: psycopg.Connection, settings: Settings) -> list[str]:
    """Grant what analytics_grants_missing lists, as the owner; the statements it ran (none on a
    second run). A role the deploy has not created yet gets its grants from a later run."""
    ran = []
    with conn.transaction():
        for statement in analytics_grants_missing(conn, settings):
            conn.execute(statement)
            ran.append(statement.as_string(conn))
    return ran


def seed_bootstrap_key(conn: psycopg.Connection, key: str) -> bool:
    """The deploy's secret file (app_admin_api_key) seeds the bootstrap admin key. After that the
    database is the truth: a rotation or revocation through the API sticks across restarts, and a
    secret file value is applied once, the first time the app sees it (the operator replaced the
    file: `govstack admin-key rotate`, an inventory-supplied value, the rotate-secrets runbook).
    True if applied."""
    from .services.keys import set_admin_key

    with conn.transaction():
        if conn.execute("SELECT 1 FROM bootstrap_key_seeds WHERE key_hash = %s", (hash_api_key(key),)).fetchone():
            return False
        set_admin_key(conn, BOOTSTRAP_KEY_NAME, key, actor="deploy secret")
        record_bootstrap_seed(conn, key)
    return True


def record_bootstrap_seed(conn: psycopg.Connection, key: str) -> None:
    conn.execute("INSERT INTO bootstrap_key_seeds (key_hash) VALUES (%s) ON CONFLICT DO NOTHING", (hash_api_key(key),))


class MigrationFailed(RuntimeError):
    """A migration failed and was rolled back whole (its version row with it)."""


def _migration_failure(version: str, exc: psycopg.Error, settings: Settings) -> MigrationFailed:
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        why = f"could not get its lock within {settings.migration_lock_timeout_s:g} s (lock_timeout)"
    elif isinstance(exc, psycopg.errors.QueryCanceled):
        why = f"ran longer than {settings.migration_statement_timeout_s:g} s (statement_timeout)"
    else:
        why = f"failed: {(exc.diag.message_primary or str(exc)).strip().splitlines()[0]}"
    return MigrationFailed(f"migration {version} {why}; nothing of it was applied")


# What the app role must and must not be allowed to do, per table of the schema (not partitions).
_PRIVILEGES_SQL = """
SELECT c.relname, c.relkind, priv, has_table_privilege(%(role)s, c.oid, priv) AS has
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       CROSS JOIN unnest(%(privileges)s::text[]) AS priv
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
UNION ALL
SELECT c.relname, c.relkind, priv, has_table_privilege(%(role)s, c.oid, priv)
  FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid
       CROSS JOIN unnest(%(privileges)s::text[]) AS priv
 WHERE i.inhparent::regclass::text = ANY(%(append_only)s)
UNION ALL
SELECT c.relname, c.relkind, 'USAGE', has_sequence_privilege(%(role)s, c.oid, 'USAGE')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind = 'S'
"""


def wanted_privileges(table: str, kind: str, partition_of_append_only: bool) -> set[str]:
    """The app role's privileges on one relation of the schema."""
    if kind == "S":
        return {"USAGE"}
    if partition_of_append_only:
        return set()
    if table in APPEND_ONLY_TABLES:
        return {"SELECT", "INSERT"}
    if table in READ_ONLY_TABLES:
        return {"SELECT"}
    return set(DML)


def privilege_changes(conn: psycopg.Connection, role: str) -> list[tuple[str, str, str, bool]]:
    """(relation, kind, privilege, grant?) for each privilege of ``role`` that differs from the wish."""
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(_PRIVILEGES_SQL, {"role": role, "privileges": list(DML + NEVER),
                                             "append_only": list(APPEND_ONLY_TABLES)}).fetchall()
        partitions = {r[0] for r in cur.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid"
            " WHERE i.inhparent::regclass::text = ANY(%s)", (list(APPEND_ONLY_TABLES),)).fetchall()}
    changes = []
    for name, kind, privilege, has in rows:
        want = privilege in wanted_privileges(name, kind, name in partitions)
        if want != has:
            changes.append((name, kind, privilege, want))
    return changes


def grant_app_privileges(conn: psycopg.Connection, role: str) -> list[str]:
    """Make ``role``'s privileges what the app needs, and no more; run as the owner. Returns the
    statements it ran (none when nothing differed: a second run changes nothing)."""
    ran = []
    with conn.transaction():
        for name, kind, privilege, grant in privilege_changes(conn, role):
            statement = sql.SQL("GRANT {} ON {} {} TO {}" if grant else "REVOKE {} ON {} {} FROM {}").format(
                sql.SQL(privilege), sql.SQL("SEQUENCE" if kind == "S" else "TABLE"), sql.Identifier(name),
                sql.Identifier(role))
            conn.execute(statement)
            ran.append(statement.as_string(conn))
    return ran


def retention_floor_months() -> int:
    from .retention import RetentionPolicy

    return RetentionPolicy().floor_months


def set_retention_floor(conn: psycopg.Connection, months: int) -> bool:
    """The floor the database enforces on audit retention (migration 0005); True when it changed."""
    with conn.transaction():
        cur = conn.execute(
            "INSERT INTO audit_retention_floor (months) VALUES (%s) ON CONFLICT (singleton) DO UPDATE"
            " SET months = EXCLUDED.months, updated_at = now() WHERE audit_retention_floor.months <> EXCLUDED.months",
            (months,))
        return cur.rowcount > 0


def record_schema_stamp(conn: psycopg.Connection, stamp: str) -> None:
    """What this run was made from (Settings.schema_stamp), written last: a run that failed
    earlier leaves the previous stamp, which then differs from the next deploy's.

    The trade-off, taken for a fast no-op deploy: a deploy whose stamp matches runs neither
    ``migrate`` nor ``migrate --check``, so privileges changed by hand since (a REVOKE, a role
    dropped and made again) are found only by the next real migrate run. The deploy clears the
    stamp whenever it changes a database role itself (govstack.commands.schema_stamp_cleared_sql)."""
    conn.execute("INSERT INTO schema_stamp (stamp) VALUES (%s) ON CONFLICT (singleton)"
                 " DO UPDATE SET stamp = EXCLUDED.stamp, recorded_at = now()", (stamp,))


def pending(settings: Settings, *, wait_s: float = 60.0) -> list[str]:
    """What a migrate run would change: migrations not yet applied, the app role's privileges
    that differ, a retention floor that differs. Empty: the schema is current."""
    with connect_with_retry(settings, wait_s) as conn:
        conn.row_factory = tuple_row
        table = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        done = set()
        if table and table[0]:
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        todo = [f"migration {version}" for version, _ in migration_files() if version not in done]
        if todo:
            return todo
        role = settings.app_database_user
        if role and role != settings.database_user:
            todo += [f"{'grant' if grant else 'revoke'} {privilege} on {name}"
                     for name, _, privilege, grant in privilege_changes(conn, role)]
        todo += [statement.as_string(conn) for statement in analytics_grants_missing(conn, settings)]
        floor = conn.execute("SELECT months FROM audit_retention_floor").fetchone()
        if floor is None or floor[0] != retention_floor_months():
            todo.append("audit retention floor")
        if settings.admin_api_key_file is not None:
            seeded = conn.execute("SELECT 1 FROM bootstrap_key_seeds WHERE key_hash = %s",
                                  (hash_api_key(settings.admin_api_key()),)).fetchone()
            if seeded is None:
                todo.append("bootstrap admin key")
    return todo


def migrate(settings: Settings, *, wait_s: float = 60.0) -> list[str]:
    """Apply pending migrations, then the app role's privileges; idempotent and safe to run
    concurrently (advisory lock). Connects as the owner (GOVSTACK_DATABASE_USER).

    Each migration runs in one transaction with its version row, under
    ``lock_timeout`` and ``statement_timeout`` (settings): one that cannot get
    a lock in time fails, rolled back whole, rather than queueing every
    request behind its lock request."""
    applied: list[str] = []
    with connect_with_retry(settings, wait_s) as conn:
        # Waiting here for another migrator is fine (it is bounded by its own
        # statement_timeout): the timeouts are set once this lock is held.
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                         (f"{int(settings.migration_lock_timeout_s * 1000)}ms",
                          f"{int(settings.migration_statement_timeout_s * 1000)}ms"))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            # Made before the grants below, so the app's role reads it like schema_migrations.
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_stamp ("
                " singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
                " stamp text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
            for version, script in migration_files():
                if version in done:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(script)  # type: ignore[arg-type]  # trusted, packaged SQL
                        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                except psycopg.Error as exc:
                    raise _migration_failure(version, exc, settings) from exc
                applied.append(version)
                log.info("migration applied", version=version)
            ensure_audit_partitions(conn)
            if set_retention_floor(conn, retention_floor_months()):
                log.info("audit retention floor set", months=retention_floor_months())
            role = settings.app_database_user
            if role and role != settings.database_user:
                for statement in grant_app_privileges(conn, role):
                    log.info("app role privilege", statement=statement)
            for statement in grant_analytics_privileges(conn, settings):
                log.info("analytics privilege", statement=statement)
            if settings.admin_api_key_file is not None:
                if seed_bootstrap_key(conn, settings.admin_api_key()):
                    log.info("bootstrap admin key set from the secret file")
            else:
                log.warning("GOVSTACK_ADMIN_API_KEY_FILE not set: no bootstrap admin key")
            if settings.schema_stamp:
                record_schema_stamp(conn, settings.schema_stamp)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied
