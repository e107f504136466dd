"""The privacy budget and its ledger.

Each consumer (an API key) has a budget per period (day, week or month, UTC), and all consumers
together have a total one, so that consumers who pool their answers still cannot exceed it.
Releases compose sequentially: each fresh release charges its epsilon to both. The ledger
(``analytics.privacy_ledger``, append-only) has one row per answer or refusal: who, what, the
epsilon charged, when. The same question in the same period is answered from the release cache
(``analytics.releases``) at no charge, so asking it again cannot average the noise away.

``PostgresLedger`` is the store; ``BudgetPolicy`` the pure rules, so both can be tested apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal, Protocol

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

# pg_advisory_xact_lock key: one release decision at a time, so two identical questions asked
# at once get one release (and one charge), and two different ones cannot both pass a budget
# that has room for one. 4_242_001/2 are the migrator's and the retention job's.
RELEASE_LOCK = 4_242_016
# Budgets are sums of floats (0.1 + 0.2 ...): compare with this much slack.
_SLACK = 1e-9

Period = Literal["day", "week", "month"]
Outcome = Literal["released", "cached", "refused"]


def period_bounds(period: Period, today: date) -> tuple[date, date]:
    """[start, end) of the budget period that holds ``today`` (weeks start on Monday)."""
    if period == "day":
        return today, today + timedelta(days=1)
    if period == "week":
        start = today - timedelta(days=today.weekday())
        return start, start + timedelta(days=7)
    start = today.replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class Budget:
    consumer: str
    period: Period
    period_start: date
    period_end: date
    consumer_spent: float
    consumer_limit: float
    total_spent: float
    total_limit: float

    @property
    def remaining(self) -> float:
        """What this consumer may still spend: its own rest, or the total's if that is smaller."""
        return max(0.0, min(self.consumer_limit - self.consumer_spent, self.total_limit - self.total_spent))

    def allows(self, epsilon: float) -> bool:
        return epsilon <= self.remaining + _SLACK

    def as_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "consumer_epsilon_spent": round(self.consumer_spent, 9),
            "consumer_epsilon_limit": self.consumer_limit,
            "total_epsilon_spent": round(self.total_spent, 9),
            "total_epsilon_limit": self.total_limit,
            "remaining_epsilon": round(self.remaining, 9),
        }


@dataclass(frozen=True)
class BudgetPolicy:
    consumer_limit: float
    total_limit: float
    period: Period

    def budget(self, consumer: str, today: date, consumer_spent: float, total_spent: float) -> Budget:
        start, end = period_bounds(self.period, today)
        return Budget(consumer, self.period, start, end, consumer_spent, self.consumer_limit, total_spent,
                      self.total_limit)


class OverBudget(Exception):
    def __init__(self, budget: Budget, epsilon: float) -> None:
        self.budget = budget
        self.epsilon = epsilon
        which = ("the total budget of all consumers"
                 if budget.total_limit - budget.total_spent < budget.consumer_limit - budget.consumer_spent
                 else "this consumer's budget")
        super().__init__(
            f"privacy budget exhausted: a release costs epsilon {epsilon:g} but {which} has "
            f"{budget.remaining:g} left until {budget.period_end.isoformat()} (UTC)"
        )


class ReleaseStore(Protocol):
    """What the release service needs from storage, inside one transaction."""

    def today(self) -> date: ...
    def lock(self) -> None: ...
    def cached(self, key: str, period_start: date) -> tuple[int, dict[str, Any]] | None: ...
    def spent(self, consumer: str, period_start: date) -> tuple[float, float]: ...
    def collections(self) -> list[str]: ...
    def rows(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]: ...
    def save_release(self, key: str, period_start: date, release: str, query: dict[str, Any],
                     answer: dict[str, Any], epsilon: float, consumer: str) -> int: ...
    def record(self, consumer: str, period_start: date, release: str, query: dict[str, Any], outcome: Outcome,
               epsilon: float, release_id: int | None, request_id: str | None) -> None: ...


class PostgresLedger:
    """ReleaseStore on one connection of the analytics role, in the caller's transaction."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def today(self) -> date:
        row = self.conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date AS today").fetchone()
        assert row is not None
        return row["today"]

    def lock(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (RELEASE_LOCK,))

    def cached(self, key: str, period_start: date) -> tuple[int, dict[str, Any]] | None:
        row = self.conn.execute(
            "SELECT id, answer FROM analytics.releases WHERE query_key = %s AND period_start = %s",
            (key, period_start),
        ).fetchone()
        return (row["id"], row["answer"]) if row else None

    def spent(self, consumer: str, period_start: date) -> tuple[float, float]:
        row = self.conn.execute(
            "SELECT coalesce(sum(epsilon) FILTER (WHERE consumer = %s), 0) AS mine, coalesce(sum(epsilon), 0) AS total"
            "  FROM analytics.privacy_ledger WHERE period_start = %s",
            (consumer, period_start),
        ).fetchone()
        assert row is not None
        return float(row["mine"]), float(row["total"])

    def collections(self) -> list[str]:
        return [r["name"] for r in self.conn.execute("SELECT name FROM analytics.collections ORDER BY name")]

    def rows(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self.conn.execute(sql, params).fetchall()  # type: ignore[arg-type] - fixed release SQL

    def save_release(self, key: str, period_start: date, release: str, query: dict[str, Any],
                     answer: dict[str, Any], epsilon: float, consumer: str) -> int:
        row = self.conn.execute(
            "INSERT INTO analytics.releases (query_key, period_start, release, query, answer, epsilon, consumer)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (key, period_start, release, Jsonb(query), Jsonb(answer), epsilon, consumer),
        ).fetchone()
        assert row is not None
        return int(row["id"])

    def record(self, consumer: str, period_start: date, release: str, query: dict[str, Any], outcome: Outcome,
               epsilon: float, release_id: int | None, request_id: str | None) -> None:
        self.conn.execute(
            "INSERT INTO analytics.privacy_ledger"
            " (consumer, period_start, release, query, outcome, epsilon, release_id, request_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (consumer, period_start, release, Jsonb(query), outcome, epsilon, release_id, request_id),
        )


@contextmanager
def postgres_session(pool: ConnectionPool) -> Iterator[PostgresLedger]:
    """A pooled connection in one transaction (committed when the block ends without error)."""
    with pool.connection() as conn:
        conn.row_factory = dict_row
        with conn.transaction():
            yield PostgresLedger(conn)


# == the auditors' report (govstack-app privacy-report, `govstack report privacy`) ===============
REPORT_SPENT_SQL = """
SELECT period_start, consumer,
       sum(epsilon) AS epsilon_spent,
       count(*) FILTER (WHERE outcome = 'released') AS released,
       count(*) FILTER (WHERE outcome = 'cached') AS cached,
       count(*) FILTER (WHERE outcome = 'refused') AS refused,
       min(at) AS first, max(at) AS last
  FROM analytics.privacy_ledger
 WHERE period_start >= %(since)s
 GROUP BY period_start, consumer
 ORDER BY period_start, consumer
"""
REPORT_RELEASES_SQL = """
SELECT r.id, r.created_at, r.consumer, r.period_start, r.release, r.query, r.epsilon,
       r.answer -> 'privacy' AS parameters
  FROM analytics.releases r
 WHERE r.period_start >= %(since)s
 ORDER BY r.id
"""
REPORT_REFUSED_SQL = """
SELECT at, consumer, period_start, release, query, request_id
  FROM analytics.privacy_ledger
 WHERE outcome = 'refused' AND period_start >= %(since)s
 ORDER BY id
"""


def privacy_report(conn: psycopg.Connection, since: date) -> dict[str, Any]:
    """Budget spent per consumer and period, each release with its parameters, each refusal."""
    conn.row_factory = dict_row
    params = {"since": since}
    return {
        "since": since.isoformat(),
        "spent": conn.execute(REPORT_SPENT_SQL, params).fetchall(),
        "releases": conn.execute(REPORT_RELEASES_SQL, params).fetchall(),
        "refused": conn.execute(REPORT_REFUSED_SQL, params).fetchall(),
    }
