"""Postgres: one exported snapshot feeds both pg_dump and the manifest.

The job connects as the backup role (member of ``pg_read_all_data``, never the
superuser). Inside one REPEATABLE READ transaction it exports its snapshot;
``pg_dump --snapshot`` dumps exactly that state while the same transaction
counts and checksums every table, so the manifest describes the dump and not
a moment later. The transaction stays open while the objects are copied,
which lets the job prove that every object a row names was captured.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from govstack_backup.config import read_secret
from govstack_backup.manifest import SEQUENCES_SQL, TABLE_CHECKSUM_SQL, TABLES_SQL, table_checksum

PGPASS = "/tmp/govstack-backup.pgpass"


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def write_pgpass(pg: dict[str, Any]) -> str:
    """libpq's password file (on the container's private tmpfs): pg_dump then
    needs no PGPASSWORD in its environment."""
    password = read_secret(pg["password_file"])
    fd = os.open(PGPASS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{_pgpass_escape(pg['host'])}:{pg['port']}:*:{_pgpass_escape(pg['user'])}:"
                 f"{_pgpass_escape(password)}\n")
    return PGPASS


def client_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSFILE": PGPASS, "TZ": "UTC",
            "PGAPPNAME": "govstack-backup", "PGCONNECT_TIMEOUT": "10"}


def connect(pg: dict[str, Any], database: str | None = None) -> psycopg.Connection:
    write_pgpass(pg)
    return psycopg.connect(host=pg["host"], port=pg["port"], dbname=database or pg["database"], user=pg["user"],
                           passfile=PGPASS, application_name="govstack-backup", connect_timeout=10)


def table_stats(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    tables = {}
    for schema, name in conn.execute(TABLES_SQL).fetchall():
        query = sql.SQL(TABLE_CHECKSUM_SQL).format(table=sql.Identifier(schema, name))
        rows, raw = conn.execute(query).fetchone()
        tables[f"{schema}.{name}"] = {"rows": int(rows), "checksum": table_checksum(raw)}
    return tables


def sequence_values(conn: psycopg.Connection) -> dict[str, str]:
    return {f"{schema}.{name}": value for schema, name, value in conn.execute(SEQUENCES_SQL).fetchall()}


class Snapshot:
    """An open REPEATABLE READ transaction whose snapshot pg_dump imports."""

    def __init__(self, pg: dict[str, Any]) -> None:
        self.pg = pg
        self.conn = connect(pg)
        self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self.conn.read_only = True
        row = self.conn.execute(
            "SELECT pg_export_snapshot(), to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
            "current_setting('server_version')"
        ).fetchone()
        self.snapshot_id, self.time, self.server_version = row

    def close(self) -> None:
        try:
            self.conn.rollback()
        finally:
            self.conn.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        return {"tables": table_stats(self.conn), "sequences": sequence_values(self.conn)}

    def schema_version(self) -> str | None:
        """The newest app migration applied in the snapshot (the app's ``schema_migrations``):
        which app versions can serve this backup once restored (docs/upgrading.md)."""
        if self.conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
            return None
        row = self.conn.execute("SELECT max(version)::text FROM schema_migrations").fetchone()
        return row[0] if row else None

    def dump_argv(self) -> list[str]:
        # -Z0: restic compresses (zstd) and deduplicates; a pre-compressed dump
        # would defeat deduplication between runs.
        pg = self.pg
        return ["pg_dump", "-Fc", "-Z0", f"--snapshot={self.snapshot_id}", "--no-password",
                "-h", pg["host"], "-p", str(pg["port"]), "-U", pg["user"], "-d", pg["database"]]

    def watermarks(self, query: str) -> dict[str, list[str]]:
        """``watermarks`` in the snapshot."""
        return watermarks(self.conn, query)

    def references(self, spec: str) -> Iterator[str]:
        """Values of ``table.column`` (e.g. documents.object_name) in the snapshot."""
        table, column = spec.rsplit(".", 1)
        parts = table.split(".")
        query = sql.SQL("SELECT {col} FROM {table} WHERE {col} IS NOT NULL").format(
            col=sql.Identifier(column), table=sql.Identifier(*parts))
        with self.conn.cursor(name="govstack_backup_refs") as cur:
            cur.itersize = 5000
            cur.execute(query)
            for (value,) in cur:
                yield str(value)


def watermarks(conn: psycopg.Connection, query: str) -> dict[str, list[str]]:
    """Rows of ``query`` (name, then any columns), as name -> [columns as text]."""
    return {str(row[0]): [str(v) for v in row[1:]] for row in conn.execute(query).fetchall()}


def dump_globals(pg: dict[str, Any]) -> bytes:
    """Roles and memberships, without passwords (they come from the host's
    secrets on restore), so a restore into a fresh cluster recreates them."""
    proc = subprocess.run(
        ["pg_dumpall", "--globals-only", "--no-role-passwords", "--no-password", "-h", pg["host"],
         "-p", str(pg["port"]), "-U", pg["user"], "-l", pg["database"]],
        env=client_env(), capture_output=True, timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pg_dumpall --globals-only failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def tool_version(binary: str) -> str:
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return proc.stdout.strip()
