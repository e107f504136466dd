"""Documents: listing, reading, presigned downloads and deletes. Postgres rows are the truth;
a failure after a commit leaves only orphans: an object that ``maintenance.run_cleanup`` moves to
the quarantine, or vectors that search ignores (listed by ``govstack report storage``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from psycopg_pool import ConnectionPool

from ..chroma import ChromaError
from .audit import audit
from .backends import Services, db
from .collections import require_collection
from .errors import NotFound

log = structlog.get_logger(__name__)


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


def remove_object_quietly(svc: Services, object_name: str) -> None:
    try:
        svc.store.remove(object_name)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not remove object; cleanup will quarantine it", object_name=object_name, error=repr(exc))


def delete_document(
    svc: Services, collection: str, doc_id: int, *, api_key_name: str, request_id: str | None, client_ip: str | None
) -> None:
    """Row first (one transaction, with the audit row), then vectors and object. A failure after
    the commit leaves only orphans (see the module's note); never a row without its object."""
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
        log.warning("vector delete failed; search ignores them (govstack report storage lists them)",
                    document_id=doc_id, error=str(exc))
    remove_object_quietly(svc, row["object_name"])


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
