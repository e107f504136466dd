"""/api/v1/collections/{collection}/documents: upload, list, read, download and delete."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from ..analytics.events import note_usage
from ..extract import EmptyDocument, TooLarge, UnsupportedType
from ..http_errors import HTTPError, current_request_id
from ..schemas import (
    AUTH_ERRORS,
    EDGE_ERRORS,
    CollectionPath,
    Document,
    DocumentList,
    Download,
    StorableText,
    error_doc,
)
from ..services import documents, uploads
from .deps import CollectionReaderKey, CollectionWriterKey, client_ip, services, settings

router = APIRouter(prefix="/api/v1/collections/{collection}/documents", tags=["documents"])

PG_BIGINT_MAX = 2**63 - 1


@router.post(
    "",
    status_code=201,
    response_model=Document,
    summary="Upload a document (stored, then indexed asynchronously)",
    responses={
        200: {"model": Document, "description": "The same bytes were already in this collection"},
        201: {"model": Document, "description": "Stored durably (object and row); indexing is queued"},
        409: error_doc("The collection uses another embedding model"),
        415: error_doc(
            "Unsupported content type or form (sniffed from the bytes): e.g. a zip entry compressed with"
            " bzip2 or lzma, a nested archive, a truncated PDF"
        ),
        422: error_doc("Empty upload or malformed request"),
        **AUTH_ERRORS,
        **EDGE_ERRORS,
        413: error_doc(
            "Over a size rule: the upload limit (the edge's or the app's), the text limit (text, Markdown,"
            " HTML), or what a DOCX unpacks to (entries, ratio, total) or a PDF holds (objects)"
        ),
        403: error_doc("The key's role or collections do not allow this, or the collection does not exist and "
                       "creating one needs the curator role"),
        503: error_doc(
            "A backing service is unavailable, the edge has no app to send the request to, or too many uploads"
            " are in progress (Retry-After); `detail` says which"
        ),
    },
)
def upload(
    request: Request,
    collection: CollectionPath,
    file: Annotated[UploadFile, File(description="The document: text, Markdown, HTML, PDF or DOCX")],
    principal: CollectionWriterKey,
    created_by: Annotated[
        StorableText | None, Form(max_length=200, description="Person on whose behalf (defaults to the key name)")
    ] = None,
) -> JSONResponse:
    try:
        received = uploads.receive_upload(file.file, file.filename, settings(request))
    except UnsupportedType as exc:
        raise HTTPError(415, str(exc)) from None
    except TooLarge as exc:
        raise HTTPError(413, str(exc)) from None
    except EmptyDocument as exc:
        raise HTTPError(422, str(exc)) from None
    req = uploads.UploadRequest(
        collection=collection,
        fileobj=file.file,
        size=received.size,
        sha256=received.sha256,
        content_type=received.content_type,
        filename=received.filename,
        api_key_name=principal.name,
        created_by=(created_by or principal.name)[:200],
        request_id=current_request_id(),
        client_ip=client_ip(request),
        may_create_collection=principal.may_create_collections,
    )
    doc, created = uploads.upload_document(services(request), req)
    note_usage(request.state, "upload", collection)
    body = Document(**documents.doc_public(doc)).model_dump(mode="json")
    return JSONResponse(
        body,
        status_code=201 if created else 200,
        headers={"Location": f"/api/v1/collections/{collection}/documents/{doc['id']}"},
    )


@router.get(
    "",
    response_model=DocumentList,
    summary="List documents, newest first, with collection statistics",
    responses={
        404: error_doc("No such collection"), 422: error_doc("Bad paging parameters"), **AUTH_ERRORS, **EDGE_ERRORS,
    },
)
def list_docs(
    request: Request,
    collection: CollectionPath,
    principal: CollectionReaderKey,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    # OFFSET is a Postgres bigint: a larger number is the client's error (422), not the database's (500).
    offset: Annotated[int, Query(ge=0, le=PG_BIGINT_MAX)] = 0,
) -> dict[str, Any]:
    return documents.list_documents(services(request).pool, collection, limit, offset)


@router.get(
    "/{document_id}",
    response_model=Document,
    summary="One document and its indexing status",
    responses={
        404: error_doc("No such document in this collection"), 422: error_doc("Malformed id"),
        **AUTH_ERRORS, **EDGE_ERRORS,
    },
)
def get_doc(
    request: Request,
    collection: CollectionPath,
    document_id: int,
    principal: CollectionReaderKey,
) -> dict[str, Any]:
    doc = documents.doc_public(documents.get_document(services(request).pool, collection, document_id))
    note_usage(request.state, "view", collection)
    return doc


@router.get(
    "/{document_id}/download",
    response_model=Download,
    summary="A short-lived presigned download URL on the public hostname (audited)",
    responses={
        404: error_doc("No such document in this collection"), 422: error_doc("Malformed id"),
        **AUTH_ERRORS, **EDGE_ERRORS,
    },
)
def download(
    request: Request,
    collection: CollectionPath,
    document_id: int,
    principal: CollectionReaderKey,
) -> dict[str, Any]:
    answer = documents.presign_download(
        services(request),
        collection,
        document_id,
        api_key_name=principal.name,
        request_id=current_request_id(),
        client_ip=client_ip(request),
    )
    note_usage(request.state, "download", collection)
    return answer


@router.delete(
    "/{document_id}",
    status_code=204,
    summary="Delete a document: row, chunks, vectors and object",
    responses={
        204: {"description": "Deleted"},
        404: error_doc("No such document in this collection"),
        409: error_doc("The document is being indexed right now; retry"),
        422: error_doc("Malformed id"),
        **AUTH_ERRORS,
        **EDGE_ERRORS,
    },
)
def delete_doc(
    request: Request,
    collection: CollectionPath,
    document_id: int,
    principal: CollectionWriterKey,
) -> Response:
    try:
        documents.delete_document(
            services(request),
            collection,
            document_id,
            api_key_name=principal.name,
            request_id=current_request_id(),
            client_ip=client_ip(request),
        )
    except psycopg.errors.LockNotAvailable:
        raise HTTPError(409, "document is being indexed right now; retry shortly") from None
    note_usage(request.state, "delete", collection)
    return Response(status_code=204)
