"""Maintenance: orphan cleanup (hourly in the worker, ``govstack-app cleanup``) and collection
rebuilds after a model change (``govstack-app rebuild-collection``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from .audit import audit
from .backends import Services, db
from .collections import require_collection
from .documents import remove_object_quietly

log = structlog.get_logger(__name__)


def cleanup_orphans(svc: Services, *, min_age: timedelta = timedelta(hours=1), dry_run: bool = False) -> dict[str, Any]:
    """Objects without a row (older than min_age, so in-flight uploads are safe) and vectors of
    documents that no longer exist."""
    cutoff = datetime.now(UTC) - min_age
    candidates = [o.object_name for o in svc.store.iter_objects() if o.last_modified and o.last_modified < cutoff]
    orphans: list[str] = []
    with db(svc.pool) as conn:
        for s in range(0, len(candidates), 500):
            batch = candidates[s : s + 500]
            known = {
                r["object_name"]
                for r in conn.execute(
                    "SELECT object_name FROM documents WHERE object_name = ANY(%s)", (batch,)
                ).fetchall()
            }
            orphans.extend(n for n in batch if n not in known)
        colls = conn.execute("SELECT id, name, chroma_name FROM collections").fetchall()
        conn.rollback()
    if not dry_run:
        for name in orphans:
            remove_object_quietly(svc, name)
    orphan_vectors: dict[str, list[int]] = {}
    for coll in colls:
        doc_ids: set[int] = set()
        offset = 0
        while True:
            page = svc.chroma.get(coll["chroma_name"], include=["metadatas"], limit=1000, offset=offset)
            metas = page.get("metadatas") or []
            for md in metas:
                if md and "document_id" in md:
                    doc_ids.add(int(md["document_id"]))
            if len(page.get("ids") or []) < 1000:
                break
            offset += 1000
        if not doc_ids:
            continue
        with db(svc.pool) as conn:
            existing = {
                r["id"]
                for r in conn.execute("SELECT id FROM documents WHERE id = ANY(%s)", (sorted(doc_ids),)).fetchall()
            }
            conn.rollback()
        missing = sorted(doc_ids - existing)
        if missing:
            orphan_vectors[coll["name"]] = missing
            if not dry_run:
                svc.chroma.delete(coll["chroma_name"], where={"document_id": {"$in": missing}})
    report = {"orphan_objects": orphans, "orphan_vector_documents": orphan_vectors, "dry_run": dry_run}
    if orphans or orphan_vectors:
        log.info("cleanup", **{k: (len(v) if isinstance(v, (list, dict)) else v) for k, v in report.items()})
    return report


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
