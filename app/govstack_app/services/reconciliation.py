"""Reconciliation after a restore: what to reconcile (objects without rows, rows without objects,
the quarantine) and adoption, which registers orphaned or quarantined objects as documents again
and queues them for indexing.

Adoption is idempotent (a row per object at most: the unique object_name and (collection,
sha256)) and safe beside uploads: an object younger than the orphan age may be an upload in flight
and is left alone, as cleanup leaves it (after a restore, anything written before the restore
paused cleanup is settled: ``quarantine.settled_cutoff``); an upload that loses the race to an
adoption of its own object keeps it (``uploads.upload_document``). It holds cleanup's advisory
lock, and writes only rows (INSERT into collections, documents, audit_logs), as the app's role.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog

from .. import metrics
from ..extract import ExtractionError, sniff_file
from ..faults import fault_point
from ..quarantine import (
    CannotAdopt,
    Collection,
    QuarantineEntry,
    StoredObject,
    collection_of,
    filename_of,
    newest_entries,
    old_enough,
    settled_cutoff,
    split_listing,
    user_metadata,
)
from .audit import audit
from .backends import Services, db
from .collections import ensure_collection
from .errors import AppError
from .maintenance import (
    ORIGINAL_TIME_META,
    list_bucket,
    pause_state,
    reconcile_lock,
    registered_names,
    stat_or_none,
)

log = structlog.get_logger(__name__)

LOCK_WAIT_S = 60.0


class LockBusy(AppError):
    status = 409


def _collections(conn: psycopg.Connection) -> dict[int, Collection]:
    return {
        r["id"]: Collection(r["id"], r["name"], r["created_at"])
        for r in conn.execute("SELECT id, name, created_at FROM collections")
    }


# -- reconciliation ----------------------------------------------------------------------------
def _describe(svc: Services, obj: StoredObject, collections: dict[int, Collection], cutoff: datetime) -> dict[str, Any]:
    stat = stat_or_none(svc, obj.key)
    meta = user_metadata(stat.metadata) if stat is not None else {}
    try:
        collection, known_by = collection_of(obj.key, meta, obj.last_modified, collections)
    except CannotAdopt:
        collection, known_by = None, None
    return {
        "key": obj.key,
        "size": obj.size,
        "last_modified": obj.last_modified.isoformat() if obj.last_modified else None,
        "collection": collection,
        "collection_known_by": known_by,
        "filename": filename_of(obj.key, meta) if meta.get("original-filename") else None,
        "sha256": meta.get("sha256"),
        "young": not old_enough(obj, cutoff),
    }


def reconciliation(svc: Services, *, min_age: timedelta | None = None) -> dict[str, Any]:
    """What a restore leaves to reconcile: objects without rows (any age; the young ones flagged),
    rows without objects, and the quarantine."""
    min_age = timedelta(seconds=svc.settings.orphan_min_age_s) if min_age is None else min_age
    now = datetime.now(UTC)
    live, entries, strays = split_listing(list_bucket(svc))
    live_keys = {o.key for o in live}
    with db(svc.pool) as conn:
        registered = registered_names(conn, sorted(live_keys))
        collections = _collections(conn)
        rows = conn.execute(
            "SELECT d.id, c.name AS collection, d.filename, d.object_name, d.upload_date, d.size"
            " FROM documents d JOIN collections c ON c.id = d.collection_id ORDER BY d.id"
        ).fetchall()
        paused = pause_state(conn)
        conn.rollback()
    cutoff = settled_cutoff(now, min_age, paused)
    without_rows = [_describe(svc, o, collections, cutoff) for o in live if o.key not in registered]
    without_objects = [
        {**r, "upload_date": r["upload_date"].isoformat()} for r in rows if r["object_name"] not in live_keys
    ]
    return {
        "bucket": svc.store.bucket,
        "generated_at": now.isoformat(timespec="seconds"),
        "min_age_s": min_age.total_seconds(),
        "paused": paused,
        "objects": len(live),
        "documents": len(rows),
        "objects_without_rows": without_rows,
        "rows_without_objects": without_objects,
        "quarantine": [
            {"key": e.key, "original": e.original, "quarantined_at": e.quarantined_at.isoformat(), "size": e.size}
            for e in entries
        ],
        "unrecognised_quarantine_keys": strays,
    }


def quarantine_listing(svc: Services) -> dict[str, Any]:
    """The quarantine per collection: entries, bytes, oldest, newest and when the oldest expires."""
    retention = timedelta(days=svc.settings.quarantine_retention_days)
    _, entries, strays = split_listing(list_bucket(svc, prefix="quarantine/"))
    with db(svc.pool) as conn:
        collections = _collections(conn)
        paused = pause_state(conn)
        conn.rollback()
    groups: dict[str, list[QuarantineEntry]] = {}
    for entry in entries:
        stat = stat_or_none(svc, entry.key)
        meta = user_metadata(stat.metadata) if stat is not None else {}
        when = meta.get(ORIGINAL_TIME_META)
        try:
            name, _ = collection_of(entry.original, meta, datetime.fromisoformat(when) if when else None, collections)
        except (CannotAdopt, ValueError):
            name = f"unknown ({entry.original.split('/', 1)[0]})"
        groups.setdefault(name, []).append(entry)

    def summary(items: list[QuarantineEntry]) -> dict[str, Any]:
        oldest = min(e.quarantined_at for e in items)
        return {
            "objects": len(items),
            "bytes": sum(e.size for e in items),
            "oldest": oldest.isoformat(),
            "newest": max(e.quarantined_at for e in items).isoformat(),
            "expires": (oldest + retention).isoformat(),
        }

    return {
        "bucket": svc.store.bucket,
        "retention_days": svc.settings.quarantine_retention_days,
        "paused": paused,
        "total": summary(entries) if entries else {"objects": 0, "bytes": 0},
        "collections": [{"collection": name, **summary(items)} for name, items in sorted(groups.items())],
        "unrecognised_keys": strays,
    }


# -- adoption ----------------------------------------------------------------------------------
@dataclass
class Candidate:
    original: str
    live: StoredObject | None
    entry: QuarantineEntry | None


def _candidates(
    keys: list[str], everything: bool, live: list[StoredObject], entries: list[QuarantineEntry], registered: set[str]
) -> tuple[list[Candidate], list[dict[str, str]]]:
    live_by_key = {o.key: o for o in live}
    newest = newest_entries(entries)
    by_entry_key = {e.key: e for e in entries}
    chosen: dict[str, Candidate] = {}
    missing = []
    if everything:
        for obj in live:
            if obj.key not in registered:
                chosen[obj.key] = Candidate(obj.key, obj, newest.get(obj.key))
        for original, entry in newest.items():
            if original not in registered and original not in live_by_key:
                chosen[original] = Candidate(original, None, entry)
    for key in keys:
        if key in by_entry_key:
            entry = by_entry_key[key]
            chosen[entry.original] = Candidate(entry.original, live_by_key.get(entry.original), entry)
        elif key in live_by_key:
            chosen[key] = Candidate(key, live_by_key[key], newest.get(key))
        elif key in newest:
            chosen[key] = Candidate(key, None, newest[key])
        else:
            missing.append({"key": key, "reason": "no such object in the bucket or its quarantine"})
    return list(chosen.values()), missing


def adopt(
    svc: Services,
    keys: list[str],
    *,
    everything: bool = False,
    collection: str | None = None,
    min_age: timedelta | None = None,
    dry_run: bool = False,
    actor: str = "cli",
) -> dict[str, Any]:
    min_age = timedelta(seconds=svc.settings.orphan_min_age_s) if min_age is None else min_age
    with reconcile_lock(svc, wait_s=LOCK_WAIT_S) as lock:
        if lock is None:
            raise LockBusy("another cleanup or adoption holds the reconcile lock; try again in a minute")
        live, entries, _ = split_listing(list_bucket(svc))
        with db(svc.pool) as conn:
            registered = registered_names(conn, sorted({o.key for o in live} | {e.original for e in entries}))
            cutoff = settled_cutoff(datetime.now(UTC), min_age, pause_state(conn))
            conn.rollback()
        candidates, skipped = _candidates(keys, everything, live, entries, registered)
        adopted: list[dict[str, Any]] = []
        for cand in candidates:
            try:
                outcome = _adopt_one(svc, cand, registered, collection, cutoff, dry_run, actor)
            except (CannotAdopt, ExtractionError, AppError) as exc:
                skipped.append({"key": cand.original, "reason": str(getattr(exc, "detail", exc))})
                continue
            (adopted if outcome.get("id") or outcome.get("would_adopt") else skipped).append(outcome)
    return {"dry_run": dry_run, "min_age_s": min_age.total_seconds(), "adopted": adopted, "skipped": skipped}


def _adopt_one(
    svc: Services, cand: Candidate, registered: set[str], override: str | None, cutoff: datetime, dry_run: bool,
    actor: str,
) -> dict[str, Any]:
    original = cand.original
    if original in registered:
        if cand.entry is not None and cand.live is not None and not dry_run:
            svc.store.remove(cand.entry.key)  # a copy of a registered, present object: the move back is done
        return {"key": original, "reason": "already a document"}
    # A quarantine entry of the same bytes vouches for the object (an adoption that crashed after
    # copying it back): no upload is in flight for it, however young the copy is.
    vouched = cand.entry is not None and cand.live is not None and cand.entry.size == cand.live.size
    if cand.live is not None and not vouched and not old_enough(cand.live, cutoff):
        return {"key": original, "reason": f"younger than the orphan age ({cand.live.last_modified}): "
                                         "it may be an upload in flight; try later or pass --min-age"}
    source = cand.live.key if cand.live is not None else cand.entry.key  # type: ignore[union-attr]
    stat = stat_or_none(svc, source)
    if stat is None:
        return {"key": original, "reason": f"{source} vanished meanwhile"}
    meta = user_metadata(stat.metadata)
    written = meta.get(ORIGINAL_TIME_META)
    when = datetime.fromisoformat(written) if written else (stat.last_modified if cand.live is not None else None)
    with db(svc.pool) as conn:
        collections = _collections(conn)
        conn.rollback()
    name, known_by = collection_of(original, meta, when, collections, override)
    filename = filename_of(original, meta)
    # Streamed to a spool file, as the worker reads documents: an object is never held whole.
    with tempfile.TemporaryFile(prefix="govstack-adopt-") as spool:
        try:
            size, digest = svc.store.download(source, spool, svc.settings.max_upload_bytes)
        except ValueError as exc:
            raise CannotAdopt(f"{exc}: larger than any upload; left as it is") from None
        if meta.get("sha256") and meta["sha256"] != digest:
            raise CannotAdopt(f"{source}: its bytes do not match the sha256 the upload recorded; left as it is")
        content_type = sniff_file(spool, filename)
    plan = {"key": original, "source": source, "collection": name, "collection_known_by": known_by,
            "filename": filename, "content_type": content_type, "size": size, "sha256": digest}
    if dry_run:
        return {**plan, "would_adopt": True}
    copied_back = False
    if cand.live is None:
        svc.store.copy(source, original)  # back to its own key first: a row never names a missing object
        copied_back = True
        fault_point("adopt.after-copy-back", original)
    with db(svc.pool) as conn:
        coll = ensure_collection(conn, name, svc.embedder.model_name, f"reconcile:{actor}")
        row = conn.execute(
            "INSERT INTO documents (filename, object_name, content_type, size, sha256, collection_id, created_by)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
            (filename, original, content_type, size, digest, coll["id"], f"reconcile:{actor}"),
        ).fetchone()
        if row is None:
            conn.rollback()
            same = conn.execute(
                "SELECT id, object_name FROM documents WHERE object_name = %s OR (collection_id = %s AND sha256 = %s)",
                (original, coll["id"], digest),
            ).fetchone()
            conn.rollback()
            if same is not None and same["object_name"] != original and copied_back:
                svc.store.remove(original)  # our own copy of bytes the collection already holds
            return {**plan, "reason": f"already a document (id {same['id'] if same else '?'}, "
                                      f"{same['object_name'] if same else '?'}): not registered twice"}
        audit(conn, "document.adopt", "document", resource_id=row["id"], collection=name, api_key_name=actor,
              details={**plan, "from_quarantine": cand.live is None})
        conn.commit()
    metrics.ADOPTED.inc()
    registered.add(original)
    if cand.entry is not None:
        svc.store.remove(cand.entry.key)  # the bytes are back under a row: the move back is done
    log.info("object adopted as a document", document_id=row["id"], object_name=original, collection=name,
             from_quarantine=cand.live is None)
    return {**plan, "id": row["id"], "object_name": original}
