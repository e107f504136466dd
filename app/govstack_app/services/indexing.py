"""Indexing, the worker's unit of work: claim one due document, extract, chunk, embed, write
vectors and chunks, and record the outcome; failures are retried with backoff, then given up."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from .. import metrics
from ..chroma import ChromaError
from ..chunking import chunk_document
from ..extract import ExtractionError, ExtractionLimits, extract
from .backends import Services, db

log = structlog.get_logger(__name__)

MAX_INDEX_ATTEMPTS = 5
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 600.0
EMBED_BATCH = 32


class PermanentIndexError(Exception):
    """Retrying will not help (corrupt file, unsupported content, missing object)."""


CLAIM_SQL = """
SELECT d.id, d.filename, d.object_name, d.content_type, d.size, d.sha256, d.index_attempts,
       c.id AS collection_id, c.name AS collection, c.chroma_name, c.embedding_model, c.embedding_dim
  FROM documents d JOIN collections c ON c.id = d.collection_id
 WHERE NOT d.is_indexed AND NOT d.index_failed AND d.next_attempt_at <= now()
   AND c.embedding_model = %s
 ORDER BY d.next_attempt_at, d.id
 LIMIT 1
 FOR UPDATE OF d SKIP LOCKED
"""


def index_next(
    svc: Services, conn: psycopg.Connection, heartbeat: Callable[[], None] = lambda: None
) -> dict[str, Any] | None:
    """Claim one due document (row lock, SKIP LOCKED: no two workers ever take the same one),
    index it and commit, all in one transaction. If the worker dies, the transaction and the
    lock go with it and the document is due again at once. Returns the claimed row or None."""
    conn.row_factory = dict_row
    with conn.transaction():
        row = conn.execute(CLAIM_SQL, (svc.embedder.model_name,)).fetchone()
        if row is None:
            return None
        structlog.contextvars.bind_contextvars(document_id=row["id"])
        start = time.perf_counter()
        outcome = "indexed"
        try:
            with conn.transaction():  # savepoint: a failure undoes only this document's writes
                n = _index_document(svc, conn, row, heartbeat)
            row["chunk_count"] = n
        except Exception as exc:  # noqa: BLE001 - recorded on the row, never blocks the queue
            permanent = isinstance(exc, (PermanentIndexError, ExtractionError))
            attempts = row["index_attempts"] + 1
            give_up = permanent or attempts >= MAX_INDEX_ATTEMPTS
            delay = min(RETRY_BASE_SECONDS * 2 ** (attempts - 1), RETRY_MAX_SECONDS)
            message = f"{type(exc).__name__}: {exc}"[:2000]
            conn.execute(
                "UPDATE documents SET index_attempts = %s, index_error = %s, index_failed = %s,"
                " next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s",
                (attempts, message, give_up, delay, row["id"]),
            )
            outcome = "failed" if give_up else "retry"
            row["error"] = message
            log.warning(
                "indexing failed",
                attempts=attempts,
                gave_up=give_up,
                error=message,
                retry_in_s=None if give_up else delay,
            )
            if give_up:
                try:
                    svc.chroma.delete(row["chroma_name"], where={"document_id": row["id"]})
                except ChromaError:
                    pass
        finally:
            elapsed = time.perf_counter() - start
            metrics.DOCUMENT_PROCESSING.labels(row["content_type"], outcome).observe(elapsed)
            metrics.INDEXED.labels(outcome).inc()
            row["outcome"] = outcome
            row["seconds"] = elapsed
    structlog.contextvars.unbind_contextvars("document_id")
    if outcome == "indexed":
        log.info(
            "document indexed",
            document_id=row["id"],
            chunks=row.get("chunk_count"),
            seconds=round(row["seconds"], 3),
            content_type=row["content_type"],
        )
    return row


def _index_document(svc: Services, conn: psycopg.Connection, row: dict[str, Any], heartbeat: Callable[[], None]) -> int:
    settings = svc.settings
    try:
        data = svc.store.get_bytes(row["object_name"])
    except Exception as exc:  # noqa: BLE001
        code = getattr(exc, "code", "")
        if code in ("NoSuchKey", "NoSuchObject"):
            raise PermanentIndexError(f"object {row['object_name']} is missing") from exc
        raise
    if hashlib.sha256(data).hexdigest() != row["sha256"].strip():
        raise PermanentIndexError("stored object does not match the recorded sha256")
    blocks = extract(data, row["content_type"], ExtractionLimits.from_settings(settings))
    chunks = chunk_document(blocks, row["content_type"])
    heartbeat()
    texts = [c.text for c in chunks]
    vectors: list[list[float]] = []
    for s in range(0, len(texts), EMBED_BATCH):
        vectors.extend(svc.embedder.embed(texts[s : s + EMBED_BATCH]).tolist())
        heartbeat()
    dim = len(vectors[0]) if vectors else svc.embedder.dimension
    if vectors:
        if row["embedding_dim"] is None:
            conn.execute(
                "UPDATE collections SET embedding_dim = %s WHERE id = %s AND embedding_dim IS NULL",
                (dim, row["collection_id"]),
            )
            got = conn.execute(
                "SELECT embedding_dim FROM collections WHERE id = %s", (row["collection_id"],)
            ).fetchone()
            row["embedding_dim"] = got["embedding_dim"] if got else dim
        if row["embedding_dim"] != dim:
            raise PermanentIndexError(
                f"model produced {dim}-dimensional vectors but collection {row['collection']!r} holds "
                f"{row['embedding_dim']}-dimensional ones; rebuild the collection"
            )
        meta = {
            "embedding_model": row["embedding_model"],
            "embedding_dim": dim,
            "govstack_collection": row["collection"],
        }
        coll = svc.chroma.get_or_create_collection(row["chroma_name"], meta)
        cmeta = coll.get("metadata") or {}
        if cmeta.get("embedding_model") not in (None, row["embedding_model"]):
            raise PermanentIndexError(
                f"chroma collection {row['chroma_name']} holds model {cmeta.get('embedding_model')!r} vectors; "
                "rebuild the collection"
            )
    # replace whatever an earlier, interrupted attempt may have written
    svc.chroma.delete(row["chroma_name"], where={"document_id": row["id"]})
    if vectors:
        svc.chroma.upsert(
            row["chroma_name"],
            ids=[f"{row['id']}:{c.index}" for c in chunks],
            embeddings=vectors,
            documents=texts,
            metadatas=[
                {
                    "document_id": row["id"],
                    "chunk_index": c.index,
                    "filename": row["filename"],
                    "collection": row["collection"],
                    **({"page": c.page} if c.page is not None else {}),
                }
                for c in chunks
            ],
        )
    conn.execute("DELETE FROM chunks WHERE document_id = %s", (row["id"],))
    with conn.cursor() as cur:
        with cur.copy(
            "COPY chunks (document_id, collection_id, chunk_index, content, page, section) FROM STDIN"
        ) as copy:
            for c in chunks:
                copy.write_row(
                    (row["id"], row["collection_id"], c.index, c.text.replace("\x00", ""), c.page, c.section)
                )
    conn.execute(
        "UPDATE documents SET is_indexed = true, indexed_at = now(), chunk_count = %s,"
        " index_attempts = index_attempts + 1,"
        " index_error = CASE WHEN %s = 0 THEN 'no extractable text' ELSE NULL END"
        " WHERE id = %s",
        (len(chunks), len(chunks), row["id"]),
    )
    metrics.CHUNKS.inc(len(chunks))
    return len(chunks)


def backlog(pool: ConnectionPool) -> tuple[int, int]:
    with db(pool, timeout=3.0) as conn:
        r = conn.execute(
            "SELECT count(*) FILTER (WHERE NOT is_indexed AND NOT index_failed) AS pending,"
            " count(*) FILTER (WHERE index_failed) AS failed FROM documents"
        ).fetchone()
        conn.rollback()
    assert r is not None
    return int(r["pending"]), int(r["failed"])
