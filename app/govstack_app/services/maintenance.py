"""Maintenance: cleanup that quarantines (hourly in the worker, ``govstack-app cleanup``) and
collection rebuilds after a model change (``govstack-app rebuild-collection``).

Cleanup: objects that no document row names and that are older than ``orphan_min_age_s`` are
*moved* to the quarantine (``quarantine/<time>/<original key>`` in the same bucket: a server-side
copy, then the delete of the original; a crash in between leaves both, and the next run reuses the
copy). Quarantine entries older than ``quarantine_retention_days`` are deleted: the only deletion,
each one logged and counted (``govstack_quarantine_expired_objects_total``). Vectors of unknown
documents are never deleted (search ignores them; they can be rebuilt from the objects); a dry run
reports them.

The pause flag (app_state ``cleanup_paused``): a restore sets it before it touches data; while it
is set nothing is moved or expired, until `govstack cleanup resume`. Cleanup and adoption
(``services/reconciliation.py``) take one advisory lock, so an object is never moved while it is
being registered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog
from minio.error import S3Error
from prometheus_client import REGISTRY

from .. import metrics
from ..faults import fault_point
from ..quarantine import (
    PAUSE_KEY,
    StoredObject,
    parse_pause,
    plan_moves,
    select_expired,
    select_orphans,
    split_listing,
    user_metadata,
)
from .audit import audit
from .backends import Services, db
from .collections import require_collection

log = structlog.get_logger(__name__)

RECONCILE_LOCK = 4_242_003  # pg advisory lock; 4_242_001 is the migrator's, 4_242_002 the audit retention's
_MISSING = ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound")
# Kept on a quarantined copy: when the original was last written (uploads write it once), so an
# adoption can still tell an old collection id from a reused one.
ORIGINAL_TIME_META = "original-last-modified"


def list_bucket(svc: Services, prefix: str | None = None) -> list[StoredObject]:
    return [
        StoredObject(o.object_name, int(o.size or 0), o.last_modified, (o.etag or "").strip('"') or None)
        for o in svc.store.iter_objects(prefix)
        if not o.is_dir
    ]


def registered_names(conn: psycopg.Connection, names: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(names), 1000):
        batch = names[start : start + 1000]
        found |= {
            r["object_name"]
            for r in conn.execute("SELECT object_name FROM documents WHERE object_name = ANY(%s)", (batch,))
        }
    return found


def stat_or_none(svc: Services, key: str) -> Any | None:
    try:
        return svc.store.stat(key)
    except S3Error as exc:
        if exc.code in _MISSING:
            return None
        raise


@contextmanager
def reconcile_lock(svc: Services, wait_s: float) -> Iterator[psycopg.Connection | None]:
    """The advisory lock on its own pooled connection (held for the whole run); None when another
    cleanup or adoption keeps it longer than ``wait_s``."""
    with db(svc.pool) as conn:
        conn.autocommit = True
        deadline = time.monotonic() + wait_s
        while not conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (RECONCILE_LOCK,)).fetchone()["ok"]:
            if time.monotonic() >= deadline:
                conn.autocommit = False
                yield None
                return
            time.sleep(0.5)
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (RECONCILE_LOCK,))
            conn.autocommit = False


# -- the pause flag ----------------------------------------------------------------------------
def pause_state(conn: psycopg.Connection) -> dict[str, Any] | None:
    row = conn.execute("SELECT value, updated_at FROM app_state WHERE key = %s", (PAUSE_KEY,)).fetchone()
    if row is None:
        return None
    state = parse_pause(row["value"]) or {}
    state.setdefault("since", row["updated_at"].isoformat())
    return state


def set_pause(svc: Services, reason: str, actor: str) -> dict[str, Any]:
    info = {"since": datetime.now(UTC).isoformat(timespec="seconds"), "by": actor, "reason": reason}
    with db(svc.pool) as conn:
        conn.execute(
            "INSERT INTO app_state (key, value, updated_at) VALUES (%s, %s, now())"
            " ON CONFLICT (key) DO NOTHING",
            (PAUSE_KEY, json.dumps(info, sort_keys=True)),
        )
        state = pause_state(conn)
        audit(conn, "cleanup.pause", "cleanup", api_key_name=actor, details=state or {})
        conn.commit()
    metrics.CLEANUP_PAUSED.set(1)
    return state or info


def resume(svc: Services, actor: str) -> dict[str, Any] | None:
    """Clear the flag; what it said (None: it was not set)."""
    with db(svc.pool) as conn:
        previous = pause_state(conn)
        if previous is not None:
            conn.execute("DELETE FROM app_state WHERE key = %s", (PAUSE_KEY,))
            audit(conn, "cleanup.resume", "cleanup", api_key_name=actor, details={"was": previous})
        conn.commit()
    metrics.CLEANUP_PAUSED.set(0)
    return previous


# -- cleanup -----------------------------------------------------------------------------------
def _metric_values() -> dict[str, float]:
    return {
        name: REGISTRY.get_sample_value(name) or 0.0
        for name in (
            "govstack_objects_quarantined_total",
            "govstack_quarantine_expired_objects_total",
            "govstack_cleanup_paused",
        )
    }


def move_to_quarantine(svc: Services, orphan: StoredObject, move: Any) -> None:
    """Copy, check the copy, then delete the original: a crash leaves both, never neither.
    Fault points (crash tests): before the copy, after it, after the delete."""
    fault_point("quarantine.before-copy", move.original)
    if move.copy_needed:
        source = stat_or_none(svc, move.original)
        original_time = user_metadata(source.metadata).get(ORIGINAL_TIME_META) if source else None
        when = original_time or (orphan.last_modified.isoformat() if orphan.last_modified else "")
        svc.store.copy(move.original, move.target, extra_metadata={ORIGINAL_TIME_META: when} if when else None)
    copied = stat_or_none(svc, move.target)
    if copied is None or int(copied.size) != move.size:
        raise RuntimeError(f"quarantine copy {move.target} is not readable as {move.size} bytes; original kept")
    fault_point("quarantine.after-copy", move.original)
    svc.store.remove(move.original)
    fault_point("quarantine.after-delete", move.original)


def run_cleanup(
    svc: Services,
    *,
    min_age: timedelta | None = None,
    dry_run: bool = False,
    with_vectors: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    settings = svc.settings
    min_age = timedelta(seconds=settings.orphan_min_age_s) if min_age is None else min_age
    retention = timedelta(days=settings.quarantine_retention_days)
    now = now or datetime.now(UTC)
    report: dict[str, Any] = {
        "dry_run": dry_run, "min_age_s": min_age.total_seconds(), "retention_days": settings.quarantine_retention_days,
        "moved": [], "expired": [], "failed": [],
    }
    with db(svc.pool) as conn:
        paused = pause_state(conn)
        conn.rollback()
    report["paused"] = paused
    metrics.CLEANUP_PAUSED.set(1 if paused else 0)
    if paused and not dry_run:
        log.info("cleanup paused: nothing moved or expired", **{f"pause_{k}": v for k, v in paused.items()})
        report["metrics"] = _metric_values()
        return report
    with reconcile_lock(svc, wait_s=0) if not dry_run else nullcontext("dry run") as lock:
        if lock is None:
            report["skipped"] = "another cleanup or adoption holds the reconcile lock"
            return report
        live, entries, strays = split_listing(list_bucket(svc))
        with db(svc.pool) as conn:
            registered = registered_names(conn, [o.key for o in live])
            # A restore may have paused cleanup since the check above (moving would still lose
            # nothing, but the operator's reconciliation should see the bucket as it was).
            paused = pause_state(conn)
            conn.rollback()
        if paused and not dry_run:
            report["paused"] = paused
            report["metrics"] = _metric_values()
            return report
        orphans = select_orphans(live, registered, now - min_age)
        moves = plan_moves(orphans, entries, now)
        expired = select_expired(entries, now, retention)
        report["orphan_objects"] = [o.key for o in orphans]
        report["to_quarantine"] = [m.target for m in moves]
        report["unrecognised_quarantine_keys"] = strays
        if not dry_run:
            by_key = {o.key: o for o in orphans}
            for move in moves:
                try:
                    move_to_quarantine(svc, by_key[move.original], move)
                except Exception as exc:  # noqa: BLE001 - the next run tries again; the original stays
                    report["failed"].append({"key": move.original, "error": repr(exc)[:300]})
                    log.warning("quarantine move failed; original kept", object_name=move.original, error=repr(exc))
                    continue
                metrics.QUARANTINED.inc()
                report["moved"].append({"key": move.original, "to": move.target, "size": move.size})
                log.info("orphan quarantined", object_name=move.original, quarantine_key=move.target,
                         size=move.size, reused_copy=not move.copy_needed)
            for entry in expired:
                fault_point("quarantine.before-expire", entry.key)
                svc.store.remove(entry.key)
                metrics.QUARANTINE_EXPIRED.inc()
                report["expired"].append(entry.key)
                log.info("quarantine entry expired and deleted", quarantine_key=entry.key,
                         object_name=entry.original, quarantined_at=entry.quarantined_at.isoformat(),
                         size=entry.size, retention_days=settings.quarantine_retention_days)
        else:
            report["would_expire"] = [e.key for e in expired]
    if with_vectors:
        report["orphan_vector_documents"] = orphan_vectors(svc)
    report["metrics"] = _metric_values()
    return report


def orphan_vectors(svc: Services) -> dict[str, list[int]]:
    """Per collection, the document ids that have vectors but no row. Reported, never deleted:
    a restore to an older snapshot makes them, and adopting the objects makes them useful again."""
    with db(svc.pool) as conn:
        colls = conn.execute("SELECT id, name, chroma_name FROM collections").fetchall()
        conn.rollback()
    out: dict[str, list[int]] = {}
    for coll in colls:
        doc_ids: set[int] = set()
        offset = 0
        while True:
            page = svc.chroma.get(coll["chroma_name"], include=["metadatas"], limit=1000, offset=offset)
            for md in page.get("metadatas") or []:
                if md and "document_id" in md:
                    doc_ids.add(int(md["document_id"]))
            if len(page.get("ids") or []) < 1000:
                break
            offset += 1000
        if not doc_ids:
            continue
        with db(svc.pool) as conn:
            existing = {
                r["id"] for r in conn.execute("SELECT id FROM documents WHERE id = ANY(%s)", (sorted(doc_ids),))
            }
            conn.rollback()
        missing = sorted(doc_ids - existing)
        if missing:
            out[coll["name"]] = missing
    return out



def rebuild_collection(svc: Services, name: str) -> dict[str, Any]:
    """Switch a collection to the configured model: drop its vectors and chunks, queue every
    document for indexing again. Search on it is empty until the worker catches up."""
    model = svc.embedder.model_name
    with db(svc.pool) as conn:
        coll = require_collection(conn, name)
        conn.execute(
            "UPDATE collections SET embedding_model = %s, embedding_dim = NULL WHERE id = %s", (model, coll["id"])
        )
        conn.execute("DELETE FROM chunks WHERE collection_id = %s", (coll["id"],))
        n = conn.execute(
            "UPDATE documents SET is_indexed = false, indexed_at = NULL, chunk_count = NULL,"
            " index_attempts = 0, index_error = NULL, index_failed = false, next_attempt_at = now()"
            " WHERE collection_id = %s",
            (coll["id"],),
        ).rowcount
        audit(
            conn,
            "collection.rebuild",
            "collection",
            resource_id=coll["id"],
            collection=name,
            api_key_name="cli",
            details={"from_model": coll["embedding_model"], "to_model": model},
        )
        conn.commit()
    svc.chroma.delete_collection(coll["chroma_name"])
    return {"collection": name, "from_model": coll["embedding_model"], "to_model": model, "documents_queued": n}
