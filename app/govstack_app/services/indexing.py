"""Indexing, the worker's unit of work: claim one due document, extract and chunk it in the
sandbox, embed, write vectors and chunks, and record the outcome.

Each attempt is counted before it starts, in a transaction of its own, so a worker that dies
mid-document leaves a trace; after GOVSTACK_INDEX_MAX_ATTEMPTS the document is failed. Failures
back off (5 s, 10 s, ... 10 min) and retries queue behind documents never tried, so no document
can hold up the others.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from .. import metrics
from ..chroma import ChromaError
from ..extract import ExtractionError, ExtractionLimits
from ..sandbox import ExtractionInterrupted, Sandbox, SandboxFailure, SandboxLimits
from .backends import Services, db

log = structlog.get_logger(__name__)

RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 600.0
EMBED_BATCH = 32
SPOOL_DIR = "/tmp"  # the worker's tmpfs, sized for one document (compose)


class PermanentIndexError(Exception):
    """Retrying will not help (missing object, checksum or model mismatch)."""


# Fresh documents first, then retries whose backoff has passed; oldest due first on each side
# (documents_queue_idx). SKIP LOCKED: a document being indexed is invisible to other workers.
CLAIM_SQL = """
SELECT d.id, d.filename, d.object_name, d.content_type, d.size, d.sha256, d.index_attempts,
       d.index_error, d.request_id, c.id AS collection_id, c.name AS collection, c.chroma_name, c.embedding_model,
       c.embedding_dim
  FROM documents d JOIN collections c ON c.id = d.collection_id
 WHERE NOT d.is_indexed AND NOT d.index_failed AND d.next_attempt_at <= now()
   AND c.embedding_model = %s
 ORDER BY d.index_attempts > 0, d.next_attempt_at, d.id
 LIMIT 1
 FOR UPDATE OF d SKIP LOCKED
"""


def retry_delay(attempt: int) -> float:
    return min(RETRY_BASE_SECONDS * 2 ** (attempt - 1), RETRY_MAX_SECONDS)


def sandbox_for(svc: Services) -> Sandbox:
    """The extraction sandbox of these services (one per process, made on first use)."""
    box = svc.extras.get("sandbox")
    if box is None:
        box = Sandbox(SandboxLimits.from_settings(svc.settings), ExtractionLimits.from_settings(svc.settings))
        svc.extras["sandbox"] = box
    return box


def _failure(exc: BaseException) -> tuple[str, bool]:
    """(cause, permanent) of an indexing failure."""
    if isinstance(exc, SandboxFailure):
        return exc.cause, exc.permanent
    if isinstance(exc, ExtractionError):
        return "rules", True
    return "error", isinstance(exc, PermanentIndexError)


def _give_up(svc: Services, conn: psycopg.Connection, row: dict[str, Any], cause: str, message: str) -> None:
    conn.execute(
        "UPDATE documents SET index_failed = true, index_error = %s WHERE id = %s", (message[:2000], row["id"])
    )
    metrics.DOCUMENTS_FAILED.labels(cause).inc()
    try:
        svc.chroma.delete(row["chroma_name"], where={"document_id": row["id"]})
    except ChromaError:
        pass


def claim_next(svc: Services, conn: psycopg.Connection) -> dict[str, Any] | None:
    """Take the next due document and count the attempt, committed before any work starts.
    A document whose attempts ran out without an outcome (the worker died during each) is
    failed here instead. Returns the row (``outcome`` 'failed' for the latter) or None."""
    conn.row_factory = dict_row
    max_attempts = svc.settings.index_max_attempts
    with conn.transaction():
        row = conn.execute(CLAIM_SQL, (svc.embedder.model_name,)).fetchone()
        if row is None:
            return None
        if row["index_attempts"] >= max_attempts:
            last = row["index_error"] or "none recorded"
            message = (
                f"attempts: {row['index_attempts']} attempts started and none finished (the worker stopped"
                f" or died during each); last error: {last}"
            )
            _give_up(svc, conn, row, "attempts", message)
            log.warning("indexing gave up", document_id=row["id"], cause="attempts", error=message)
            return row | {"outcome": "failed", "error": message}
        row["index_attempts"] += 1
        conn.execute(
            "UPDATE documents SET index_attempts = %s, next_attempt_at = now() + make_interval(secs => %s)"
            " WHERE id = %s",
            (row["index_attempts"], retry_delay(row["index_attempts"]), row["id"]),
        )
    return row


def index_next(
    svc: Services,
    conn: psycopg.Connection,
    heartbeat: Callable[[], None] = lambda: None,
    stop: threading.Event | None = None,
) -> dict[str, Any] | None:
    """Claim one due document (attempt counted and committed), then index it in a second
    transaction that holds its row lock: no other worker takes it and a delete waits. If the
    worker dies, that transaction dies with it and the document is due again after its backoff.
    Returns the claimed row with ``outcome`` (indexed | retry | failed | gone | interrupted), or
    None when nothing is due."""
    row = claim_next(svc, conn)
    if row is None or row.get("outcome") == "failed":
        return row
    # The upload's request id: the worker's lines of this document join the
    # edge's and the API's (`govstack report logs --request-id`).
    structlog.contextvars.bind_contextvars(document_id=row["id"], request_id=row.get("request_id"))
    start = time.perf_counter()
    outcome = "indexed"
    try:
        with conn.transaction():
            if conn.execute(
                "SELECT 1 FROM documents WHERE id = %s AND NOT is_indexed AND NOT index_failed FOR UPDATE SKIP LOCKED",
                (row["id"],),
            ).fetchone() is None:
                outcome = "gone"  # deleted (or finished) since the claim
                return row | {"outcome": outcome}
            try:
                with conn.transaction():  # savepoint: a failure undoes only this document's writes
                    row["chunk_count"] = _index_document(svc, conn, row, heartbeat, stop)
            except ExtractionInterrupted:
                # Stopping is not the document's fault: the attempt is given back.
                conn.execute(
                    "UPDATE documents SET index_attempts = index_attempts - 1, next_attempt_at = now() WHERE id = %s",
                    (row["id"],),
                )
                outcome = "interrupted"
            except Exception as exc:  # noqa: BLE001 - recorded on the row, never blocks the queue
                outcome = _record_failure(svc, conn, row, exc)
    finally:
        elapsed = time.perf_counter() - start
        if outcome != "gone":
            metrics.DOCUMENT_PROCESSING.labels(row["content_type"], outcome).observe(elapsed)
            metrics.INDEXED.labels(outcome).inc()
        structlog.contextvars.unbind_contextvars("document_id", "request_id")
    row["outcome"] = outcome
    row["seconds"] = elapsed
    if outcome == "indexed":
        log.info(
            "document indexed",
            document_id=row["id"],
            request_id=row.get("request_id"),
            chunks=row.get("chunk_count"),
            seconds=round(elapsed, 3),
            content_type=row["content_type"],
        )
    return row


def _record_failure(svc: Services, conn: psycopg.Connection, row: dict[str, Any], exc: Exception) -> str:
    cause, permanent = _failure(exc)
    message = f"{cause}: {exc}" if cause != "error" else f"error: {type(exc).__name__}: {exc}"
    attempts = row["index_attempts"]
    give_up = permanent or attempts >= svc.settings.index_max_attempts
    row["error"] = message
    if give_up:
        if not permanent:
            message = f"gave up after {attempts} attempts; last: {message}"
        _give_up(svc, conn, row, cause, message)
    else:
        conn.execute(
            "UPDATE documents SET index_error = %s, next_attempt_at = now() + make_interval(secs => %s)"
            " WHERE id = %s",
            (message[:2000], retry_delay(attempts), row["id"]),
        )
    log.warning(
        "indexing failed",
        attempts=attempts,
        cause=cause,
        gave_up=give_up,
        error=message,
        retry_in_s=None if give_up else retry_delay(attempts),
    )
    return "failed" if give_up else "retry"


def _index_document(
    svc: Services,
    conn: psycopg.Connection,
    row: dict[str, Any],
    heartbeat: Callable[[], None],
    stop: threading.Event | None,
) -> int:
    settings = svc.settings
    with tempfile.NamedTemporaryFile(dir=SPOOL_DIR, prefix="govstack-index-") as spool:
        try:
            size, sha256 = svc.store.download(row["object_name"], spool, settings.max_upload_bytes)
        except ValueError as exc:
            raise PermanentIndexError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            code = getattr(exc, "code", "")
            if code in ("NoSuchKey", "NoSuchObject"):
                raise PermanentIndexError(f"object {row['object_name']} is missing") from exc
            raise
        if sha256 != row["sha256"].strip() or size != row["size"]:
            raise PermanentIndexError("stored object does not match the recorded sha256")
        try:
            chunks = sandbox_for(svc).extract_chunks(spool.name, row["content_type"], stop)
        except (ExtractionError, SandboxFailure) as exc:
            metrics.EXTRACTION_FAILURES.labels(_failure(exc)[0]).inc()
            raise
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
