"""Uploads: the object is written first and the row committed second, so a crash in between
leaves at most an orphan object (which ``maintenance.run_cleanup`` moves to the quarantine),
never a row without its object."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import psycopg
import structlog

from .. import metrics
from ..extract import ExtractionLimits, TooLarge, check_upload, sniff_file
from ..security import sanitize_filename
from ..settings import Settings
from ..storage import new_object_name
from .audit import audit
from .backends import Services, db
from .collections import ensure_collection
from .documents import DOC_COLUMNS, remove_object_quietly
from .errors import Conflict, Unavailable

log = structlog.get_logger(__name__)


@dataclass
class ReceivedFile:
    size: int
    sha256: str
    content_type: str  # sniffed from the bytes, never taken from the client
    filename: str  # sanitized for display; never a storage key


def receive_upload(fileobj: BinaryIO, filename: str | None, settings: Settings) -> ReceivedFile:
    """Measure and hash the spooled upload, sniff its type from the bytes and hold it to the
    upload rules (extract.check_upload), never reading it whole. Raises TooLarge (413),
    UnsupportedType (415) or EmptyDocument (422)."""
    limit = settings.max_upload_bytes
    fileobj.seek(0)
    h = hashlib.sha256()
    size = 0
    while block := fileobj.read(1 << 20):
        size += len(block)
        if size > limit:
            raise TooLarge(f"upload is over the {limit}-byte limit")
        h.update(block)
    safe_name = sanitize_filename(filename)
    # Both read the spool file in chunks (head, tail, zip directory, one streaming pass).
    limits = ExtractionLimits.from_settings(settings)
    ctype = sniff_file(fileobj, safe_name, limits.zip)
    check_upload(fileobj, ctype, limits)
    return ReceivedFile(size=size, sha256=h.hexdigest(), content_type=ctype, filename=safe_name)


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
    # The key's role may create the collection when it does not exist yet.
    may_create_collection: bool = False


def upload_document(svc: Services, req: UploadRequest) -> tuple[dict[str, Any], bool]:
    """Store the bytes, then commit the row. Returns (document, created).

    Order matters: the object is written first and the row committed second, so a crash in
    between leaves at most an orphan object (found by `cleanup`), never a row without object.
    """
    model = svc.embedder.model_name
    with db(svc.pool) as conn:
        coll = ensure_collection(conn, req.collection, model, req.api_key_name,
                                 may_create=req.may_create_collection)
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
            collection=req.collection,
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
                                       collection_id, created_by, api_key_name, request_id)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
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
                    req.request_id,
                ),
            ).fetchone()
            if row is None:  # a concurrent upload of the same bytes won
                conn.rollback()
                existing = _find_by_sha(conn, coll["id"], req.sha256)
                conn.rollback()
                # `govstack reconcile adopt` may have registered this very object meanwhile: keep it then.
                if existing is None or existing["object_name"] != object_name:
                    remove_object_quietly(svc, object_name)
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
        # the outcome is unknown, so the object stays; `cleanup` quarantines it only if no row has it.
        if not committed_phase:
            remove_object_quietly(svc, object_name)
        raise
    except BaseException:
        if not committed_phase:
            remove_object_quietly(svc, object_name)
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
