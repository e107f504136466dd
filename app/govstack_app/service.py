"""Business logic shared by the API and the worker: collections, uploads, deletes, search,
indexing, audit and cleanup. Postgres is the source of truth; the object store keeps the bytes
and Chroma keeps the vectors."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from . import metrics
from .chroma import ChromaClient, ChromaError
from .chunking import chunk_document
from .db import POOL_WAIT_S
from .embeddings import Embedder, EmbeddingError
from .extract import ExtractionError, extract
from .ranking import rrf
from .security import hash_api_key
from .settings import Settings
from .storage import ObjectStore, new_object_name

log = structlog.get_logger(__name__)

MAX_INDEX_ATTEMPTS = 5
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 600.0
EMBED_BATCH = 32


# ---------------------------------------------------------------------------------------------
# errors the API maps to status codes
# ---------------------------------------------------------------------------------------------
class AppError(Exception):
    status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(AppError):
    status = 404


class Conflict(AppError):
    status = 409


class Unavailable(AppError):
    status = 503

    def __init__(self, component: str, detail: str | None = None) -> None:
        super().__init__(detail or f"{component} is unavailable")
        self.component = component


class ModelMismatch(Conflict):
    pass


@dataclass
class Services:
    settings: Settings
    pool: ConnectionPool
    store: ObjectStore
    chroma: ChromaClient
    embedder: Embedder
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.pool.close()
        self.chroma.close()


# ---------------------------------------------------------------------------------------------
# audit
# ---------------------------------------------------------------------------------------------
def audit(
    conn: psycopg.Connection,
    action: str,
    resource_type: str,
    *,
    resource_id: object = None,
    collection: str | None = None,
    api_key_name: str | None = None,
    client_ip: str | None = None,
    request_id: str | None = None,
    status_code: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Insert one audit row (inside the caller's transaction, as a savepoint). A missing month
    partition is created on the fly."""
    params = (
        action,
        resource_type,
        None if resource_id is None else str(resource_id),
        collection,
        api_key_name,
        client_ip,
        request_id,
        status_code,
        Jsonb(details or {}),
    )
    sql = (
        "INSERT INTO audit_logs (action, resource_type, resource_id, collection, api_key_name,"
        " client_ip, request_id, status_code, details) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    )
    try:
        with conn.transaction():
            conn.execute(sql, params)
    except psycopg.errors.CheckViolation:  # "no partition of relation audit_logs found for row"
        with conn.transaction():
            conn.execute("SELECT govstack_ensure_audit_partition(now())")
            conn.execute(sql, params)


# ---------------------------------------------------------------------------------------------
# api keys
# ---------------------------------------------------------------------------------------------
def lookup_api_key(pool: ConnectionPool, key: str) -> dict[str, Any] | None:
    with _conn(pool) as conn:
        row = conn.execute(
            "UPDATE api_keys SET last_used_at = now()"
            " WHERE key_hash = %s AND is_active"
            "   AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')"
            " RETURNING name, role",
            (hash_api_key(key),),
        ).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT name, role FROM api_keys WHERE key_hash = %s AND is_active", (hash_api_key(key),)
            ).fetchone()
        conn.commit()
        return row


def is_connection_error(exc: BaseException) -> bool:
    """Postgres unreachable or going away, as opposed to an error of the statement itself."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


class _conn:
    """pool.connection() with dict rows, mapping pool/connection failures to 503."""

    def __init__(self, pool: ConnectionPool, timeout: float = POOL_WAIT_S) -> None:
        self.pool = pool
        self.timeout = timeout
        self._cm: Any = None

    def __enter__(self) -> psycopg.Connection:
        try:
            self._cm = self.pool.connection(timeout=self.timeout)
            conn = self._cm.__enter__()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise Unavailable("postgres", f"postgres is unavailable: {exc}") from exc
        conn.row_factory = dict_row
        return conn

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        try:
            self._cm.__exit__(et, ev, tb)
        except psycopg.OperationalError as exc:
            if et is None and is_connection_error(exc):
                raise Unavailable("postgres", f"postgres is unavailable: {exc}") from exc
            if et is None:
                raise
        if ev is not None and is_connection_error(ev):
            raise Unavailable("postgres", f"postgres is unavailable: {ev}") from ev
        return False


def db(pool: ConnectionPool, timeout: float = POOL_WAIT_S) -> _conn:
    return _conn(pool, timeout)


# ---------------------------------------------------------------------------------------------
# collections
# ---------------------------------------------------------------------------------------------
def chroma_name_for(collection: str) -> str:
    return f"govstack_{collection}"


def get_collection(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM collections WHERE name = %s", (name,)).fetchone()


def require_collection(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    coll = get_collection(conn, name)
    if coll is None:
        raise NotFound(f"collection {name!r} does not exist")
    return coll


def check_model(coll: dict[str, Any], model: str) -> None:
    if coll["embedding_model"] != model:
        dim = f", {coll['embedding_dim']} dimensions" if coll.get("embedding_dim") else ""
        raise ModelMismatch(
            f"collection {coll['name']!r} was embedded with model {coll['embedding_model']!r}{dim}, "
            f"but this deployment embeds with {model!r}. Mixing models in one collection is refused; "
            f"rebuild the collection with the new model (runbook: rebuild embeddings, "
            f"`govstack-app rebuild-collection {coll['name']} --yes`)."
        )


def ensure_collection(conn: psycopg.Connection, name: str, model: str, created_by: str | None) -> dict[str, Any]:
    coll = get_collection(conn, name)
    if coll is None:
        conn.execute(
            "INSERT INTO collections (name, chroma_name, embedding_model, created_by)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
            (name, chroma_name_for(name), model, created_by),
        )
        coll = get_collection(conn, name)
        assert coll is not None
    check_model(coll, model)
    return coll


def list_collections(pool: ConnectionPool) -> list[dict[str, Any]]:
    with db(pool) as conn:
        return conn.execute(
            """
            SELECT c.name, c.embedding_model, c.embedding_dim, c.created_at,
                   count(d.id) AS documents,
                   count(d.id) FILTER (WHERE d.is_indexed) AS indexed,
                   coalesce(sum(d.size), 0) AS total_bytes,
                   count(*) OVER () AS total_collections
              FROM collections c LEFT JOIN documents d ON d.collection_id = c.id
             GROUP BY c.id ORDER BY c.name
            """
        ).fetchall()


# ---------------------------------------------------------------------------------------------
# documents
# ---------------------------------------------------------------------------------------------
DOC_COLUMNS = (
    "d.id, d.filename, d.object_name, d.content_type, d.size, d.sha256, d.upload_date,"
    " d.created_by, d.api_key_name, d.is_indexed, d.indexed_at, d.chunk_count,"
    " d.index_attempts, d.index_error, d.index_failed, c.name AS collection"
)


def doc_public(row: dict[str, Any]) -> dict[str, Any]:
    status = "indexed" if row["is_indexed"] else ("failed" if row["index_failed"] else "pending")
    return {
        "id": row["id"],
        "collection": row["collection"],
        "filename": row["filename"],
        "content_type": row["content_type"],
        "size": row["size"],
        "sha256": row["sha256"].strip(),
        "upload_date": row["upload_date"],
        "created_by": row["created_by"],
        "api_key_name": row["api_key_name"],
        "is_indexed": row["is_indexed"],
        "indexed_at": row["indexed_at"],
        "chunk_count": row["chunk_count"],
        "index_status": status,
        "index_attempts": row["index_attempts"],
        "index_error": row["index_error"],
    }


def get_document(pool: ConnectionPool, collection: str, doc_id: int) -> dict[str, Any]:
    with db(pool) as conn:
        row = conn.execute(
            f"SELECT {DOC_COLUMNS} FROM documents d JOIN collections c ON c.id = d.collection_id"  # noqa: S608
            " WHERE c.name = %s AND d.id = %s",
            (collection, doc_id),
        ).fetchone()
    if row is None:
        raise NotFound(f"document {doc_id} not found in collection {collection!r}")
    return row


def list_documents(pool: ConnectionPool, collection: str, limit: int, offset: int) -> dict[str, Any]:
    with db(pool) as conn:
        coll = require_collection(conn, collection)
        rows = conn.execute(  # DOC_COLUMNS is a constant; values are parameters
            f"""
            SELECT {DOC_COLUMNS},
                   count(*) OVER () AS total,
                   sum(d.size) OVER () AS total_bytes,
                   count(*) FILTER (WHERE d.is_indexed) OVER () AS indexed_total,
                   count(*) FILTER (WHERE d.index_failed) OVER () AS failed_total,
                   sum(coalesce(d.chunk_count, 0)) OVER () AS chunks_total,
                   count(*) OVER (PARTITION BY d.content_type) AS same_type_total,
                   row_number() OVER (ORDER BY d.upload_date DESC, d.id DESC) AS position
              FROM documents d JOIN collections c ON c.id = d.collection_id
             WHERE d.collection_id = %s
             ORDER BY d.upload_date DESC, d.id DESC
             LIMIT %s OFFSET %s
            """,  # noqa: S608
            (coll["id"], limit, offset),
        ).fetchall()
        by_type = {
            r["content_type"]: r["n"]
            for r in conn.execute(
                "SELECT content_type, count(*) AS n FROM documents WHERE collection_id = %s GROUP BY 1",
                (coll["id"],),
            ).fetchall()
        }
        if rows:
            first = rows[0]
            stats = {
                "total_documents": first["total"],
                "indexed_documents": first["indexed_total"],
                "failed_documents": first["failed_total"],
                "pending_documents": first["total"] - first["indexed_total"] - first["failed_total"],
                "total_bytes": int(first["total_bytes"] or 0),
                "total_chunks": int(first["chunks_total"] or 0),
            }
        else:
            agg = conn.execute(
                "SELECT count(*) AS total, count(*) FILTER (WHERE is_indexed) AS indexed,"
                " count(*) FILTER (WHERE index_failed) AS failed, coalesce(sum(size), 0) AS bytes,"
                " coalesce(sum(chunk_count), 0) AS chunks FROM documents WHERE collection_id = %s",
                (coll["id"],),
            ).fetchone()
            assert agg is not None
            stats = {
                "total_documents": agg["total"],
                "indexed_documents": agg["indexed"],
                "failed_documents": agg["failed"],
                "pending_documents": agg["total"] - agg["indexed"] - agg["failed"],
                "total_bytes": int(agg["bytes"]),
                "total_chunks": int(agg["chunks"]),
            }
        stats["by_content_type"] = by_type
        conn.rollback()
    return {
        "collection": collection,
        "items": [doc_public(r) | {"position": r["position"]} for r in rows],
        "limit": limit,
        "offset": offset,
        "total": stats["total_documents"],
        "stats": stats,
    }


@dataclass
class UploadRequest:
    collection: str
    fileobj: BinaryIO  # seekable, positioned anywhere
    size: int
    sha256: str
    content_type: str
    filename: str
    api_key_name: str
    created_by: str
    request_id: str | None = None
    client_ip: str | None = None


def upload_document(svc: Services, req: UploadRequest) -> tuple[dict[str, Any], bool]:
    """Store the bytes, then commit the row. Returns (document, created).

    Order matters: the object is written first and the row committed second, so a crash in
    between leaves at most an orphan object (found by `cleanup`), never a row without object.
    """
    model = svc.embedder.model_name
    with db(svc.pool) as conn:
        coll = ensure_collection(conn, req.collection, model, req.api_key_name)
        conn.commit()
        existing = _find_by_sha(conn, coll["id"], req.sha256)
        conn.rollback()
    if existing is not None:
        _audit_duplicate(svc, req, existing)
        return existing, False

    object_name = new_object_name(coll["id"])
    req.fileobj.seek(0)
    try:
        svc.store.put(
            object_name,
            req.fileobj,
            req.size,
            content_type=req.content_type,
            sha256=req.sha256,
            filename=req.filename,
        )
    except Exception as exc:  # noqa: BLE001 - minio raises S3Error, urllib3 errors, ...
        log.error("object store write failed", error=repr(exc))
        raise Unavailable("object store", f"object store write failed: {exc}") from exc

    committed_phase = False
    try:
        with db(svc.pool) as conn:
            row = conn.execute(
                """
                INSERT INTO documents (filename, object_name, content_type, size, sha256,
                                       collection_id, created_by, api_key_name)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (collection_id, sha256) DO NOTHING
                RETURNING id
                """,
                (
                    req.filename,
                    object_name,
                    req.content_type,
                    req.size,
                    req.sha256,
                    coll["id"],
                    req.created_by,
                    req.api_key_name,
                ),
            ).fetchone()
            if row is None:  # a concurrent upload of the same bytes won
                conn.rollback()
                _safe_remove(svc, object_name)
                existing = _find_by_sha(conn, coll["id"], req.sha256)
                conn.rollback()
                if existing is None:
                    raise Conflict("concurrent upload of the same document; retry")
                _audit_duplicate(svc, req, existing)
                return existing, False
            audit(
                conn,
                "document.upload",
                "document",
                resource_id=row["id"],
                collection=req.collection,
                api_key_name=req.api_key_name,
                client_ip=req.client_ip,
                request_id=req.request_id,
                status_code=201,
                details={
                    "filename": req.filename,
                    "size": req.size,
                    "sha256": req.sha256,
                    "content_type": req.content_type,
                    "object_name": object_name,
                },
            )
            committed_phase = True
            conn.commit()
            doc = conn.execute(
                f"SELECT {DOC_COLUMNS} FROM documents d JOIN collections c ON c.id = d.collection_id"  # noqa: S608
                " WHERE d.id = %s",
                (row["id"],),
            ).fetchone()
            conn.rollback()
    except Unavailable:
        # Before COMMIT was sent nothing was written: drop the object now. If COMMIT itself failed
        # the outcome is unknown, so the object stays; `cleanup` removes it only if no row has it.
        if not committed_phase:
            _safe_remove(svc, object_name)
        raise
    except BaseException:
        if not committed_phase:
            _safe_remove(svc, object_name)
        raise
    metrics.UPLOADS.labels("created").inc()
    assert doc is not None
    return doc, True


def _find_by_sha(conn: psycopg.Connection, collection_id: int, sha256: str) -> dict[str, Any] | None:
    return conn.execute(
        f"SELECT {DOC_COLUMNS} FROM documents d JOIN collections c ON c.id = d.collection_id"  # noqa: S608
        " WHERE d.collection_id = %s AND d.sha256 = %s",
        (collection_id, sha256),
    ).fetchone()


def _audit_duplicate(svc: Services, req: UploadRequest, existing: dict[str, Any]) -> None:
    metrics.UPLOADS.labels("duplicate").inc()
    with db(svc.pool) as conn:
        audit(
            conn,
            "document.upload_duplicate",
            "document",
            resource_id=existing["id"],
            collection=req.collection,
            api_key_name=req.api_key_name,
            client_ip=req.client_ip,
            request_id=req.request_id,
            status_code=200,
            details={"filename": req.filename, "sha256": req.sha256},
        )
        conn.commit()


def _safe_remove(svc: Services, object_name: str) -> None:
    try:
        svc.store.remove(object_name)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not remove object; cleanup will", object_name=object_name, error=repr(exc))


def delete_document(
    svc: Services, collection: str, doc_id: int, *, api_key_name: str, request_id: str | None, client_ip: str | None
) -> None:
    """Row first (one transaction, with the audit row), then vectors and object. A failure after
    the commit leaves only orphans that `cleanup` removes; never a row without its object."""
    with db(svc.pool) as conn:
        conn.execute("SET LOCAL lock_timeout = '5s'")  # the worker holds the row while indexing it
        row = conn.execute(
            "SELECT d.id, d.object_name, d.filename, d.sha256, c.chroma_name FROM documents d"
            " JOIN collections c ON c.id = d.collection_id"
            " WHERE c.name = %s AND d.id = %s FOR UPDATE OF d",
            (collection, doc_id),
        ).fetchone()
        if row is None:
            conn.rollback()
            raise NotFound(f"document {doc_id} not found in collection {collection!r}")
        conn.execute("DELETE FROM documents WHERE id = %s", (doc_id,))
        audit(
            conn,
            "document.delete",
            "document",
            resource_id=doc_id,
            collection=collection,
            api_key_name=api_key_name,
            client_ip=client_ip,
            request_id=request_id,
            status_code=204,
            details={"filename": row["filename"], "object_name": row["object_name"], "sha256": row["sha256"].strip()},
        )
        conn.commit()
    try:
        svc.chroma.delete(row["chroma_name"], where={"document_id": doc_id})
    except ChromaError as exc:
        log.warning("vector delete failed; cleanup will retry", document_id=doc_id, error=str(exc))
    _safe_remove(svc, row["object_name"])


def presign_download(
    svc: Services, collection: str, doc_id: int, *, api_key_name: str, request_id: str | None, client_ip: str | None
) -> dict[str, Any]:
    row = get_document(svc.pool, collection, doc_id)
    ttl = timedelta(minutes=5)
    url = svc.store.presigned_download_url(
        row["object_name"], filename=row["filename"], content_type=row["content_type"], ttl=ttl
    )
    with db(svc.pool) as conn:
        audit(
            conn,
            "document.download",
            "document",
            resource_id=doc_id,
            collection=collection,
            api_key_name=api_key_name,
            client_ip=client_ip,
            request_id=request_id,
            status_code=200,
            details={"filename": row["filename"], "expires_in": int(ttl.total_seconds())},
        )
        conn.commit()
    return {
        "url": url,
        "expires_in": int(ttl.total_seconds()),
        "expires_at": datetime.now(UTC) + ttl,
        "filename": row["filename"],
        "sha256": row["sha256"].strip(),
        "size": row["size"],
    }


# ---------------------------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------------------------
def _vector_hits(svc: Services, coll: dict[str, Any], query: str, n: int) -> list[dict[str, Any]]:
    start = time.perf_counter()
    try:
        vec = svc.embedder.embed([query])[0]
    except EmbeddingError as exc:
        raise Unavailable("embeddings", str(exc)) from exc
    if coll.get("embedding_dim") and len(vec) != coll["embedding_dim"]:
        raise ModelMismatch(
            f"query embedding has {len(vec)} dimensions but collection {coll['name']!r} holds "
            f"{coll['embedding_dim']}-dimensional vectors; rebuild the collection"
        )
    try:
        hits = svc.chroma.query(coll["chroma_name"], vec.tolist(), n)
    except ChromaError as exc:
        raise Unavailable("chroma", str(exc)) from exc
    finally:
        metrics.VECTOR_SEARCH_DURATION.observe(time.perf_counter() - start)
    out = []
    for h in hits:
        md = h.metadata
        if "document_id" not in md:
            continue
        out.append(
            {
                "document_id": int(md["document_id"]),
                "chunk_index": int(md.get("chunk_index", 0)),
                "text": h.document or "",
                "page": md.get("page"),
                "score": 1.0 - h.distance,
            }
        )
    return out


def _keyword_hits(conn: psycopg.Connection, coll: dict[str, Any], query: str, n: int) -> list[dict[str, Any]]:
    return conn.execute(
        """
        SELECT ch.document_id, ch.chunk_index, ch.content AS text, ch.page,
               ts_rank_cd(ch.tsv, q) AS score
          FROM chunks ch, websearch_to_tsquery('english', %s) AS q
         WHERE ch.collection_id = %s AND ch.tsv @@ q
         ORDER BY score DESC, ch.document_id, ch.chunk_index
         LIMIT %s
        """,
        (query, coll["id"], n),
    ).fetchall()


def search(svc: Services, collection: str, query: str, k: int, mode: str) -> dict[str, Any]:
    with db(svc.pool) as conn:
        coll = require_collection(conn, collection)
        conn.rollback()
    if mode in ("vector", "hybrid"):
        check_model(coll, svc.embedder.model_name)
    n_candidates = k if mode != "hybrid" else min(max(3 * k, 20), 200)
    vector: list[dict[str, Any]] = []
    keyword: list[dict[str, Any]] = []
    if mode in ("vector", "hybrid"):
        vector = _vector_hits(svc, coll, query, min(n_candidates + 10, 300))
    with db(svc.pool) as conn:
        if mode in ("keyword", "hybrid"):
            keyword = _keyword_hits(conn, coll, query, n_candidates)
        ids = sorted({h["document_id"] for h in vector} | {h["document_id"] for h in keyword})
        docs = (
            {
                r["id"]: r
                for r in conn.execute(
                    "SELECT id, filename FROM documents WHERE id = ANY(%s) AND collection_id = %s AND is_indexed",
                    (ids, coll["id"]),
                ).fetchall()
            }
            if ids
            else {}
        )
        conn.rollback()
    # vectors of deleted or not-yet-committed documents are ignored
    vector = [h for h in vector if h["document_id"] in docs][:n_candidates]
    keyword = [h for h in keyword if h["document_id"] in docs]

    def key(h: dict[str, Any]) -> tuple[int, int]:
        return (h["document_id"], h["chunk_index"])

    if mode == "vector":
        ranked = [(h, float(h["score"])) for h in vector[:k]]
    elif mode == "keyword":
        ranked = [(h, float(h["score"])) for h in keyword[:k]]
    else:
        by_key = {key(h): h for h in keyword}
        by_key.update({key(h): h for h in vector})
        fused = rrf([[key(h) for h in vector], [key(h) for h in keyword]])
        ranked = [(by_key[kk], score) for kk, score in fused[:k]]
    results = [
        {
            "document_id": h["document_id"],
            "filename": docs[h["document_id"]]["filename"],
            "chunk_index": h["chunk_index"],
            "score": score,
            "text": h["text"],
            "page": h.get("page"),
        }
        for h, score in ranked
    ]
    return {"collection": collection, "mode": mode, "k": k, "query": query, "results": results}


# ---------------------------------------------------------------------------------------------
# indexing (worker)
# ---------------------------------------------------------------------------------------------
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
    blocks = extract(data, row["content_type"], settings.max_unpacked_bytes)
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


# ---------------------------------------------------------------------------------------------
# maintenance
# ---------------------------------------------------------------------------------------------
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
            _safe_remove(svc, name)
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


def to_json(obj: Any) -> str:
    return json.dumps(obj, default=str, sort_keys=True)
