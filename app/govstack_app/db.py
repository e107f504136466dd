"""Postgres: connection pool (psycopg_pool), migrations (ordered SQL files), audit partitions."""

from __future__ import annotations

import time
from importlib import resources

import psycopg
import structlog
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


def make_pool(settings: Settings, *, min_size: int = 1, max_size: int = 10, name: str = "app") -> ConnectionPool:
    pool = ConnectionPool(
        settings.conninfo(),
        min_size=min_size,
        max_size=max_size,
        timeout=POOL_WAIT_S,  # then PoolTimeout (-> 503)
        check=ConnectionPool.check_connection,  # drop connections broken by a Postgres restart
        reconnect_timeout=30.0,
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


def migrate(settings: Settings, *, wait_s: float = 60.0) -> list[str]:
    """Apply pending migrations; idempotent and safe to run concurrently (advisory lock).

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
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
            for version, sql in migration_files():
                if version in done:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(sql)  # type: ignore[arg-type]  # trusted, packaged SQL
                        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                except psycopg.Error as exc:
                    raise _migration_failure(version, exc, settings) from exc
                applied.append(version)
                log.info("migration applied", version=version)
            ensure_audit_partitions(conn)
            if settings.admin_api_key_file is not None:
                if seed_bootstrap_key(conn, settings.admin_api_key()):
                    log.info("bootstrap admin key set from the secret file")
            else:
                log.warning("GOVSTACK_ADMIN_API_KEY_FILE not set: no bootstrap admin key")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied
