"""The drill's point-in-time stage: prove that a restore to a moment brings back
exactly what was committed by then, and measure the recovery point achieved.

With the app's writers stopped (their writes after T would be lost by design):

1. A marker table in the app's database (schema ``govstack_drill``); one psql
   session inserts a row every ``MARKER_INTERVAL_S`` (each its own transaction),
   notes the server's clock as T halfway through, and writes as much again.
2. The failure: at that moment, the newest archived WAL segment against the
   markers' commit times is the recovery point a lost data host would have
   achieved (``rpo_s``: the failure's time minus the newest archived marker's
   commit, or minus the newest segment's archive time when no marker's
   segment was archived yet: an upper bound).
3. ``restore --to-time T`` (govstack/backup/pitr.py).
4. The restored markers must be exactly those whose commit timestamp
   (track_commit_timestamp) is at or before T: none missing, none extra.
5. The marker schema and the database the restore kept are dropped (both are
   the drill's own).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from govstack.backup.pitr import PitrHost, restore_to, target_text
from govstack.backup.remote import BackupError, BackupHost
from govstack.commands import SUPERUSER, docker_exec, psql, q

SCHEMA = "govstack_drill"
MARKERS = f"{SCHEMA}.markers"
MARKER_INTERVAL_S = 0.2
MARKERS_EACH_SIDE = 40

_SETUP = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}; DROP TABLE IF EXISTS {MARKERS}; "
    f"CREATE TABLE {MARKERS} (id bigserial PRIMARY KEY, drill text NOT NULL, "
    "lsn pg_lsn NOT NULL DEFAULT pg_current_wal_insert_lsn(), "
    "written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


def _writer(stack: BackupHost, drill_id: str) -> str:
    """Shell: one psql session fed a marker insert every interval, and the server's clock
    (``T=…``) printed once halfway; each insert commits on its own (autocommit)."""
    insert = f"INSERT INTO {MARKERS} (drill) VALUES ('{drill_id}');"  # noqa: S608 - the drill's own id
    clock = "SELECT 'T=' || to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US');"
    feed = (f"for i in $(seq {MARKERS_EACH_SIDE}); do echo {q(insert)}; sleep {MARKER_INTERVAL_S}; done; "
            f"echo {q(clock)}; sleep {MARKER_INTERVAL_S}; "
            f"for i in $(seq {MARKERS_EACH_SIDE}); do echo {q(insert)}; sleep {MARKER_INTERVAL_S}; done")
    pg = stack.require_service("postgres")
    return f"{{ {feed}; }} | {docker_exec(pg, *psql(stack.settings.postgres.database, rows=True))}"


def _commits(stack: BackupHost, database: str | None = None) -> dict[int, str]:
    rows = stack.psql(f"SELECT id, to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', "  # noqa: S608
                      f"'YYYY-MM-DD HH24:MI:SS.US') FROM {MARKERS} ORDER BY id",
                      database or stack.settings.postgres.database)
    return {int(line.split("\t")[0]): line.split("\t")[1] for line in rows.splitlines() if line.strip()}


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def pitr_stage(stack: BackupHost, drill_id: str, timeline: list[tuple[str, str]]) -> dict[str, Any]:
    db = stack.settings.postgres.database
    pitr = PitrHost(stack)

    def now() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    # A restore into a new cluster (the disaster) moved the stanza on: upgrade it and
    # take the new cluster's first full backup, the base of this stage's restore.
    ensured = pitr.job("ensure", timeout=stack.settings.backup.timeout_s)
    timeline.append((f"pgBackRest stanza ready ({', '.join(ensured['changed']) or 'unchanged'})", now()))
    writers = stack.app_containers()
    stack.stop(writers)
    try:
        stack.psql(_SETUP, db)
        out = stack.sh(_writer(stack, drill_id), timeout=600, check=True).stdout
        marked = [line[2:] for line in out.splitlines() if line.startswith("T=")]
        if not marked:
            raise BackupError("the marker writer printed no T", "drill-failed")
        target = _utc(marked[0])
        failure = datetime.now(UTC)
        archived = stack.psql("SELECT coalesce(last_archived_wal, ''), coalesce(to_char(last_archived_time AT TIME "
                              "ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), '') FROM pg_stat_archiver").strip().split("\t")
        newest = stack.psql(f"SELECT coalesce(to_char(max(pg_xact_commit_timestamp(xmin)) AT TIME ZONE 'UTC', "  # noqa: S608
                            f"'YYYY-MM-DD HH24:MI:SS.US'), '') FROM {MARKERS} "
                            f"WHERE pg_walfile_name(lsn) < '{archived[0]}'", db).strip() if archived[0] else ""
        commits = _commits(stack)
        expected = {i for i, at in commits.items() if _utc(at) <= target}
        after = set(commits) - expected
        if not expected or not after:
            raise BackupError(f"the markers do not straddle T ({len(expected)} before, {len(after)} after): "
                              "the proof would be empty", "drill-failed")
        timeline.append((f"{len(commits)} markers written, T = {target_text(target)} ({len(expected)} committed by "
                         f"then); failure declared", now()))

        report = restore_to(stack, target, restart_app=False, stamp=f"{drill_id}pitr")
        timeline.append((f"restored to T ({report['restore_s']:.1f}s, writers down {report['outage_s']:.1f}s)", now()))
        restored = set(_commits(stack))
        kept = report["components"]["postgres"]["kept_previous_as"]
        result = {
            "ok": restored == expected,
            "target": target_text(target),
            "base_backup": report["base_backup"],
            "markers_written": len(commits),
            "markers_committed_by_target": len(expected),
            "markers_restored": len(restored),
            "missing": sorted(expected - restored)[:20],
            "extra": sorted(restored - expected)[:20],
            "last_replayed_commit": report["recovery"].get("last_replayed_commit"),
            "stopped_before_commit_at": report["recovery"].get("stopped_before_commit_at"),
            "timings": {"recovery_s": report["recovery_s"], "restore_s": report["restore_s"],
                        "outage_s": report["outage_s"]},
            "rpo": {
                "failure_at": failure.isoformat(),
                "newest_archived_wal": archived[0] or None,
                "newest_archived_at": archived[1] or None,
                "newest_archived_commit": newest or None,
                # What a host lost at the failure would have lost: the commits after the newest archived
                # marker, or (no marker's segment archived yet) everything since the newest archived segment.
                "rpo_s": round((failure - _utc(newest or archived[1])).total_seconds(), 3)
                if (newest or archived[1]) else None,
                "archive_timeout_s": stack.settings.backup.pitr.archive_timeout_s,
            },
        }
        stack.psql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", db)
        if kept:
            stack.psql(f'DROP DATABASE IF EXISTS "{kept}" WITH (FORCE)', SUPERUSER)
        return result
    finally:
        stack.start(writers)
        stack.wait_healthy(writers)
        # Whatever happened, the markers go (the stack's database is the app's).
        stack.psql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", db, check=False)


def failed_stage(error: str, archive_timeout_s: int) -> dict[str, Any]:
    """The stage's result when a step failed before it could compare anything."""
    return {"ok": False, "error": error, "target": None, "base_backup": None, "markers_written": 0,
            "markers_committed_by_target": 0, "markers_restored": 0, "missing": [], "extra": [],
            "last_replayed_commit": None, "stopped_before_commit_at": None,
            "timings": {"recovery_s": None, "restore_s": None, "outage_s": None},
            "rpo": {"failure_at": None, "newest_archived_wal": None, "newest_archived_at": None,
                    "newest_archived_commit": None, "rpo_s": None, "archive_timeout_s": archive_timeout_s}}
