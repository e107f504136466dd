"""Audit log retention: detach and drop whole monthly partitions of ``audit_logs``.

``audit_logs`` is range-partitioned by month (migration 0001). A partition
is dropped only when every row it can hold is older than the retention: its
upper bound lies at or before ``now() - <months> months``. Nothing else is
ever deleted, so a retention of N months keeps at least N months of audit.

- A retention below the floor is refused (RetentionRefused) before anything
  is read: the floor is a policy set in the deploy's settings
  (``compliance.audit_retention_floor_months``).
- The app's role owns nothing (issue 12): a partition is detached and
  dropped by ``govstack_drop_audit_partition`` (migration 0005), which runs
  as the schema's owner and refuses any partition that may hold rows younger
  than the floor the database keeps (written by ``migrate`` from the
  deploy's settings). So even the app's own credentials cannot shorten the
  audit trail below the floor. The detach is a plain one (a function runs in
  a transaction): it holds the parent's lock while an old partition is
  unlinked, bounded by the function's lock_timeout. A detach left pending by
  an older version is finished (``FINALIZE``).
- Every run that drops something writes one ``audit_logs`` row
  (action ``audit.partitions_dropped``) naming each partition, its bounds and
  its row count, the retention, the floor and who ran it.
- One run at a time (an advisory lock): the worker's schedule and an
  operator's `govstack audit-retention` never race.

Run by `govstack-app purge-audit-partitions --months N --floor F [--dry-run]`
(what `govstack audit-retention` execs in the serving API container), and on
a schedule by the worker (``scheduled_purge``) when
``GOVSTACK_AUDIT_RETENTION_MONTHS`` is set.

The same job keeps the analytics usage events (``analytics.events``) to their
own retention in days (``purge_events``; `govstack-app purge-events --days N`,
and hourly by the worker when ``GOVSTACK_ANALYTICS_EVENTS_RETENTION_DAYS`` is
set): whole UTC days older than it are deleted in batches, and each run that
deletes something writes one ``audit_logs`` row (``analytics.events_purged``).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PARENT = "audit_logs"
RETENTION_LOCK = 4_242_002  # pg_advisory_lock key; 4_242_001 is the migrator's
AUDIT_ACTION = "audit.partitions_dropped"
EVENTS_RETENTION_LOCK = 4_242_003
EVENTS_ACTION = "analytics.events_purged"
# Rows per DELETE: short transactions, so the API's event writer never waits long.
EVENTS_BATCH = 20_000


class RetentionRefused(ValueError):
    """The requested retention is below the floor (or not a retention at all)."""


class RetentionPolicy(BaseSettings):
    """The worker's schedule, from the environment the deploy renders.

    ``GOVSTACK_AUDIT_RETENTION_MONTHS`` unset: the worker purges nothing.
    """

    model_config = SettingsConfigDict(env_prefix="GOVSTACK_AUDIT_RETENTION_", extra="ignore", frozen=True)

    months: int | None = Field(None, ge=1)
    floor_months: int = Field(12, ge=1)


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime | None  # None: MINVALUE or a DEFAULT partition
    upper: datetime | None  # None: MAXVALUE or a DEFAULT partition
    detach_pending: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "from": self.lower.isoformat() if self.lower else None,
            "to": self.upper.isoformat() if self.upper else None,
        }


def check_policy(months: int, floor: int) -> None:
    if floor < 1:
        raise RetentionRefused(f"the retention floor must be at least 1 month, not {floor}")
    if months < floor:
        raise RetentionRefused(
            f"refusing a retention of {months} months: the floor is {floor} months "
            "(compliance.audit_retention_floor_months)"
        )


def months_before(moment: datetime, months: int) -> datetime:
    """``moment`` minus whole calendar months (the day clamped to the target month's length),
    as Postgres computes ``moment - interval 'N months'``."""
    index = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def due_partitions(partitions: list[Partition], now: datetime, months: int) -> list[Partition]:
    """Partitions every row of which is older than ``months`` months at ``now``."""
    cutoff = months_before(now, months)
    return [p for p in partitions if p.upper is not None and p.upper <= cutoff]


# The bounds are read back as timestamptz from the partition's own bound
# expression: no parsing of a text format that depends on the session.
_PARTITIONS_SQL = """
SELECT c.relname,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz,
       i.inhdetachpending
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = %s::regclass
 ORDER BY 2 NULLS FIRST, 1
"""


def list_partitions(conn: psycopg.Connection) -> list[Partition]:
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(_PARTITIONS_SQL, (PARENT,)).fetchall()
    return [Partition(name, lower, upper, bool(pending)) for name, lower, upper, pending in rows]


def _count(conn: psycopg.Connection, part: Partition) -> int:
    """Rows of one partition, counted through the parent (the app may read only the parent)."""
    bounds = [(sql.SQL("created_at >= %s"), part.lower), (sql.SQL("created_at < %s"), part.upper)]
    where = [clause for clause, value in bounds if value is not None] or [sql.SQL("true")]
    query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(sql.Identifier(PARENT), sql.SQL(" AND ").join(where))
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query, [value for _, value in bounds if value is not None]).fetchone()
    return int(row[0]) if row else 0


def _write_audit(conn: psycopg.Connection, report: dict[str, Any]) -> None:
    conn.execute("SELECT govstack_ensure_audit_partition(now())")
    conn.execute(
        "INSERT INTO audit_logs (action, resource_type, resource_id, api_key_name, details)"
        " VALUES (%s, 'audit_logs', %s, %s, %s)",
        (AUDIT_ACTION, ",".join(d["name"] for d in report["dropped"]), f"retention:{report['actor']}",
         Jsonb(report)),
    )


def purge_audit_partitions(
    conninfo: str, months: int, floor: int, *, dry_run: bool = False, actor: str = "cli"
) -> dict[str, Any]:
    """Drop the partitions older than the retention; a JSON-able report of what was (or would be) dropped."""
    check_policy(months, floor)
    # Autocommit: each drop commits on its own, as govstack_drop_audit_partition returns.
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.cursor(row_factory=tuple_row) as cur:
            locked = cur.execute("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK,)).fetchone()
            now = cur.execute("SELECT now()").fetchone()
        assert locked is not None and now is not None
        if not locked[0]:
            return {"ok": True, "skipped": "another retention run holds the lock", "dropped": [], "dry_run": dry_run}
        report: dict[str, Any] = {
            "ok": True,
            "actor": actor,
            "retention_months": months,
            "floor_months": floor,
            "now": now[0].isoformat(),
            "cutoff": months_before(now[0], months).isoformat(),
            "dry_run": dry_run,
            "dropped": [],
            "kept": [],
        }
        try:
            partitions = list_partitions(conn)
            due = due_partitions(partitions, now[0], months)
            report["kept"] = [p.name for p in partitions if p not in due]
            for part in due:
                entry = {**part.as_dict(), "rows": _count(conn, part)}
                if not dry_run:
                    with conn.cursor(row_factory=tuple_row) as cur:
                        dropped = cur.execute("SELECT govstack_drop_audit_partition(%s)", (part.name,)).fetchone()
                    entry["rows"] = int(dropped[0]) if dropped else entry["rows"]
                report["dropped"].append(entry)
        except psycopg.Error as exc:
            report["ok"] = False
            report["error"] = f"{type(exc).__name__}: {exc}".strip()
        finally:
            if report["dropped"] and not dry_run:
                _write_audit(conn, report)
            conn.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK,))
    return report


def purge_events(conninfo: str, days: int, *, dry_run: bool = False, actor: str = "cli") -> dict[str, Any]:
    """Delete usage events of UTC days older than ``days`` days; a JSON-able report."""
    if days < 1:
        raise RetentionRefused(f"an events retention must be at least 1 day, not {days}")
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.cursor(row_factory=tuple_row) as cur:
        locked = cur.execute("SELECT pg_try_advisory_lock(%s)", (EVENTS_RETENTION_LOCK,)).fetchone()
        cutoff = cur.execute("SELECT (now() AT TIME ZONE 'UTC')::date - %s", (days,)).fetchone()
        assert locked is not None and cutoff is not None
        report: dict[str, Any] = {"ok": True, "actor": actor, "retention_days": days,
                                  "deleted_before": cutoff[0].isoformat(), "dry_run": dry_run, "deleted": 0}
        if not locked[0]:
            return {**report, "skipped": "another events retention run holds the lock"}
        try:
            if dry_run:
                row = cur.execute("SELECT count(*) FROM analytics.events WHERE day < %s", (cutoff[0],)).fetchone()
                report["deleted"] = int(row[0]) if row else 0
                return report
            while True:
                cur.execute(
                    "DELETE FROM analytics.events WHERE ctid = ANY(ARRAY("
                    "SELECT ctid FROM analytics.events WHERE day < %s LIMIT %s))",
                    (cutoff[0], EVENTS_BATCH),
                )
                report["deleted"] += cur.rowcount
                if cur.rowcount < EVENTS_BATCH:
                    break
        except psycopg.Error as exc:
            report["ok"] = False
            report["error"] = f"{type(exc).__name__}: {exc}".strip()
        finally:
            if report["deleted"] and not dry_run:
                cur.execute("SELECT govstack_ensure_audit_partition(now())")
                cur.execute(
                    "INSERT INTO audit_logs (action, resource_type, resource_id, api_key_name, details)"
                    " VALUES (%s, 'analytics.events', %s, %s, %s)",
                    (EVENTS_ACTION, report["deleted_before"], f"retention:{actor}", Jsonb(report)),
                )
            cur.execute("SELECT pg_advisory_unlock(%s)", (EVENTS_RETENTION_LOCK,))
    return report


def scheduled_purge(settings: Any) -> dict[str, Any] | None:
    """The worker's maintenance step: purge audit partitions and usage events per the
    environment's policies; None when it sets neither."""
    policy = RetentionPolicy()
    report: dict[str, Any] = {}
    if policy.months is not None:
        report["audit"] = purge_audit_partitions(settings.conninfo(), policy.months, policy.floor_months,
                                                 actor="worker")
    days = getattr(settings, "analytics_events_retention_days", None)
    if days is not None:
        report["events"] = purge_events(settings.conninfo(), days, actor="worker")
    return report or None
