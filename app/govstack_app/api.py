"""The HTTP API (FastAPI)."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

import psycopg
import structlog
from fastapi import Depends, FastAPI, File, Form, Path, Query, Request, Security, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from . import __version__, metrics, service
from .extract import EmptyDocument, TooLarge, UnsupportedType, check_unpacked_size, sniff
from .security import (
    ROLES,
    generate_api_key,
    hash_api_key,
    key_prefix,
    role_allows,
    sanitize_filename,
    valid_collection_name,
)
from .service import AppError, Services, Unavailable, db
from .settings import Settings

log = structlog.get_logger(__name__)

COLLECTION_RE = r"^[a-z0-9][a-z0-9_-]{0,61}[a-z0-9]$"
CollectionPath = Annotated[str, Path(pattern=COLLECTION_RE, description="Collection name")]
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
class ErrorResponse(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="What went wrong, for humans (request validation errors: the list of problems)"
    )
    request_id: str | None = None


class ReadyResponse(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
    failed: list[str] = []


class HealthResponse(BaseModel):
    status: Literal["ok"]
    version: str
    color: str


class Document(BaseModel):
    id: int
    collection: str
    filename: str
    content_type: str
    size: int
    sha256: str
    upload_date: datetime
    created_by: str | None
    api_key_name: str | None
    is_indexed: bool
    indexed_at: datetime | None
    chunk_count: int | None
    index_status: Literal["pending", "indexed", "failed"]
    index_attempts: int
    index_error: str | None


class ListedDocument(Document):
    position: int


class DocumentStats(BaseModel):
    total_documents: int
    indexed_documents: int
    pending_documents: int
    failed_documents: int
    total_bytes: int
    total_chunks: int
    by_content_type: dict[str, int]


class DocumentList(BaseModel):
    collection: str
    items: list[ListedDocument]
    limit: int
    offset: int
    total: int
    stats: DocumentStats


class CollectionInfo(BaseModel):
    name: str
    embedding_model: str
    embedding_dim: int | None
    created_at: datetime
    documents: int
    indexed: int
    total_bytes: int


class Download(BaseModel):
    url: str = Field(description="Presigned GET URL on the public hostname, valid for expires_in seconds")
    expires_in: int
    expires_at: datetime
    filename: str
    sha256: str
    size: int


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    collection: str = Field(pattern=COLLECTION_RE)
    k: int = Field(5, ge=1, le=100)
    mode: Literal["vector", "keyword", "hybrid"] = "hybrid"


class SearchResult(BaseModel):
    document_id: int
    filename: str
    chunk_index: int
    score: float
    text: str
    page: int | None = None


class SearchResponse(BaseModel):
    collection: str
    mode: str
    k: int
    query: str
    results: list[SearchResult]


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
    role: Literal["admin", "writer", "reader"]


class KeyCreated(BaseModel):
    name: str
    role: str
    api_key: str = Field(description="The key itself. Shown once; only its hash is stored.")
    key_prefix: str
    created_at: datetime


class KeyInfo(BaseModel):
    name: str
    role: str
    key_prefix: str
    is_active: bool
    created_at: datetime
    created_by: str | None
    last_used_at: datetime | None
    revoked_at: datetime | None


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _err("Missing or unknown API key (header X-API-Key)"),
    403: _err("The API key's role does not allow this call"),
    503: _err("A backing service (postgres, object store, chroma, embeddings) is unavailable"),
}


# ---------------------------------------------------------------------------------------------
# errors, auth
# ---------------------------------------------------------------------------------------------
class HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.detail, self.headers = status, detail, headers


def _request_id() -> str | None:
    return structlog.contextvars.get_contextvars().get("request_id")


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "request_id": _request_id()}, status_code=status, headers=headers)


class Principal(BaseModel):
    name: str
    role: str


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key; roles reader < writer < admin")


def services(request: Request) -> Services:
    return request.app.state.services


def require(role: str):  # noqa: ANN201 - FastAPI dependency factory
    def dependency(
        request: Request,
        key: Annotated[str | None, Security(api_key_header)] = None,
    ) -> Principal:
        if not key:
            raise HTTPError(401, "missing API key (X-API-Key header)", {"WWW-Authenticate": "ApiKey"})
        row = service.lookup_api_key(request.app.state.services.pool, key)
        if row is None:
            raise HTTPError(401, "invalid API key", {"WWW-Authenticate": "ApiKey"})
        principal = Principal(name=row["name"], role=row["role"])
        structlog.contextvars.bind_contextvars(api_key_name=principal.name)
        if not role_allows(principal.role, role):
            raise HTTPError(403, f"role {principal.role!r} may not do this (needs {role!r})")
        return principal

    return dependency


ReaderKey = Annotated[Principal, Depends(require("reader"))]
WriterKey = Annotated[Principal, Depends(require("writer"))]
AdminKey = Annotated[Principal, Depends(require("admin"))]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


# ---------------------------------------------------------------------------------------------
# middleware: request id, metrics, access log, early 413
# ---------------------------------------------------------------------------------------------
class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(self, app: Any, max_body: int, color: str = "blue") -> None:
        self.app = app
        self.max_body = max_body
        self.color_header = (b"x-govstack-color", color.encode())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        if not _REQUEST_ID_RE.match(rid):
            rid = uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=rid)
        structlog.contextvars.unbind_contextvars("api_key_name")
        start = time.perf_counter()
        status_holder = {"status": 500, "started": False}
        method = scope["method"]

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                message.setdefault("headers", [])
                # The serving color tells operators (and the blue/green tests)
                # which release answered.
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode()), self.color_header]
            await send(message)

        limit = self.max_body if method in ("POST", "PUT", "PATCH") else None
        received = 0

        async def receive_wrapper() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if limit is not None and message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        metrics.ACTIVE_CONNECTIONS.inc()
        try:
            declared = headers.get("content-length")
            if limit is not None and declared and declared.isdigit() and int(declared) > limit:
                await error_response(413, f"request body over the {limit}-byte limit")(scope, receive, send_wrapper)
            else:
                try:
                    await self.app(scope, receive_wrapper, send_wrapper)
                except _BodyTooLarge:
                    if not status_holder["started"]:
                        await error_response(413, f"request body over the {limit}-byte limit")(
                            scope, receive, send_wrapper
                        )
        finally:
            metrics.ACTIVE_CONNECTIONS.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            status = status_holder["status"]
            metrics.REQUESTS.labels(method, endpoint, str(status)).inc()
            metrics.REQUEST_DURATION.labels(method, endpoint).observe(elapsed)
            if endpoint not in ("/health", "/ready", "/metrics") or status >= 400:
                log.info(
                    "request",
                    method=method,
                    path=scope.get("path"),
                    endpoint=endpoint,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                    client=(scope.get("client") or [None])[0],
                )
            structlog.contextvars.unbind_contextvars("request_id", "api_key_name")


# ---------------------------------------------------------------------------------------------
# app factory
# ---------------------------------------------------------------------------------------------
def build_services(settings: Settings, *, pool_max: int = 10) -> Services:
    from .chroma import ChromaClient
    from .db import make_pool
    from .embeddings import make_embedder
    from .storage import ObjectStore

    return Services(
        settings=settings,
        pool=make_pool(settings, max_size=pool_max, name="api" if pool_max > 3 else "worker"),
        store=ObjectStore(settings),
        chroma=ChromaClient(settings.chroma_host, settings.chroma_port),
        embedder=make_embedder(settings),
    )


def create_app(settings: Settings, svc: Services | None = None, *, run_migrations: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_migrations:
            from .db import migrate

            await run_in_threadpool(migrate, settings)
        s = svc or await run_in_threadpool(build_services, settings)
        app.state.services = s
        try:
            await run_in_threadpool(s.store.ensure_bucket)
        except Exception as exc:  # noqa: BLE001 - /ready reports it
            log.warning("could not ensure bucket", error=repr(exc))
        metrics.APP_INFO.info({"version": settings.app_version, "color": settings.app_color})
        log.info("api ready to serve", embedding_model=s.embedder.model_name)
        yield
        log.info("api shutting down")
        if svc is None:
            s.close()

    app = FastAPI(
        title="GovStack document service",
        version=__version__,
        description="Upload documents, index them (text extraction, chunking, embeddings) and search them.",
        lifespan=lifespan,
    )
    app.add_middleware(
        RequestContextMiddleware, max_body=settings.max_upload_bytes + 1024 * 1024, color=settings.app_color
    )

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return error_response(exc.status, exc.detail, exc.headers)

    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        if isinstance(exc, Unavailable):
            log.warning("dependency unavailable", component=exc.component, detail=exc.detail)
        return error_response(exc.status, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder(exc.errors()), "request_id": _request_id()}, status_code=422)

    @app.exception_handler(psycopg.OperationalError)
    async def _pg_down(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        log.warning("postgres error", error=str(exc), sqlstate=getattr(exc, "sqlstate", None))
        if service.is_connection_error(exc):
            return error_response(503, "postgres is unavailable")
        return error_response(
            409 if isinstance(exc, psycopg.errors.LockNotAvailable) else 503,
            "the database could not complete the request now; retry",
        )

    # -- probes -----------------------------------------------------------------------------------
    @app.get("/health", response_model=HealthResponse, tags=["ops"], summary="Liveness")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": settings.app_version, "color": settings.app_color}

    @app.get(
        "/ready",
        response_model=ReadyResponse,
        tags=["ops"],
        summary="Readiness: postgres, object store and chroma",
        responses={503: {"model": ReadyResponse, "description": "A dependency is broken; `failed` names it"}},
    )
    def ready(request: Request) -> JSONResponse:
        s: Services = request.app.state.services
        checks: dict[str, str] = {}

        def run(name: str, fn: Any) -> None:
            try:
                fn()
                checks[name] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks[name] = f"error: {type(exc).__name__}: {str(exc)[:200]}"

        def pg() -> None:
            with s.pool.connection(timeout=3.0) as conn:
                conn.execute("SELECT 1")

        run("postgres", pg)
        run("object_store", s.store.check)
        run("chroma", s.chroma.heartbeat)
        failed = [k for k, v in checks.items() if v != "ok"]
        body = {"status": "unavailable" if failed else "ready", "checks": checks, "failed": failed}
        return JSONResponse(body, status_code=503 if failed else 200)

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
    )
    def prom(request: Request) -> Response:
        try:
            pending, failed = service.backlog(request.app.state.services.pool)
            metrics.UNINDEXED_BACKLOG.set(pending)
            metrics.FAILED_DOCUMENTS.set(failed)
        except Exception as exc:  # noqa: BLE001 - metrics must still be served
            log.warning("backlog gauge not updated", error=repr(exc))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # -- documents --------------------------------------------------------------------------------
    @app.post(
        "/api/v1/collections/{collection}/documents",
        status_code=201,
        response_model=Document,
        tags=["documents"],
        summary="Upload a document (stored, then indexed asynchronously)",
        responses={
            200: {"model": Document, "description": "The same bytes were already in this collection"},
            201: {"model": Document, "description": "Stored durably (object and row); indexing is queued"},
            409: _err("The collection uses another embedding model"),
            413: _err("Upload over GOVSTACK_MAX_UPLOAD_BYTES, or DOCX unpacking over GOVSTACK_MAX_UNPACKED_BYTES"),
            415: _err("Unsupported content type (sniffed from the bytes)"),
            422: _err("Empty upload or malformed request"),
            **AUTH_ERRORS,
        },
    )
    def upload(
        request: Request,
        collection: CollectionPath,
        file: Annotated[UploadFile, File(description="The document: text, Markdown, HTML, PDF or DOCX")],
        principal: WriterKey,
        created_by: Annotated[
            str | None, Form(max_length=200, description="Person on whose behalf (defaults to the key name)")
        ] = None,
    ) -> JSONResponse:
        s: Services = request.app.state.services
        limit = settings.max_upload_bytes
        f = file.file
        f.seek(0)
        h = hashlib.sha256()
        size = 0
        while block := f.read(1 << 20):
            size += len(block)
            if size > limit:
                raise HTTPError(413, f"upload is over the {limit}-byte limit")
            h.update(block)
        filename = sanitize_filename(file.filename)
        f.seek(0)
        data_head = f.read(limit + 1)  # bounded by the size check above
        try:
            ctype = sniff(data_head, filename)
            check_unpacked_size(data_head, ctype, settings.max_unpacked_bytes)
        except UnsupportedType as exc:
            raise HTTPError(415, str(exc)) from None
        except TooLarge as exc:
            raise HTTPError(413, str(exc)) from None
        except EmptyDocument as exc:
            raise HTTPError(422, str(exc)) from None
        del data_head
        req = service.UploadRequest(
            collection=collection,
            fileobj=f,
            size=size,
            sha256=h.hexdigest(),
            content_type=ctype,
            filename=filename,
            api_key_name=principal.name,
            created_by=(created_by or principal.name)[:200],
            request_id=_request_id(),
            client_ip=client_ip(request),
        )
        doc, created = service.upload_document(s, req)
        body = Document(**service.doc_public(doc)).model_dump(mode="json")
        return JSONResponse(
            body,
            status_code=201 if created else 200,
            headers={"Location": f"/api/v1/collections/{collection}/documents/{doc['id']}"},
        )

    @app.get(
        "/api/v1/collections/{collection}/documents",
        response_model=DocumentList,
        tags=["documents"],
        summary="List documents, newest first, with collection statistics",
        responses={404: _err("No such collection"), 422: _err("Bad paging parameters"), **AUTH_ERRORS},
    )
    def list_docs(
        request: Request,
        collection: CollectionPath,
        principal: ReaderKey,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        return service.list_documents(request.app.state.services.pool, collection, limit, offset)

    @app.get(
        "/api/v1/collections/{collection}/documents/{document_id}",
        response_model=Document,
        tags=["documents"],
        summary="One document and its indexing status",
        responses={404: _err("No such document in this collection"), 422: _err("Malformed id"), **AUTH_ERRORS},
    )
    def get_doc(
        request: Request,
        collection: CollectionPath,
        document_id: int,
        principal: ReaderKey,
    ) -> dict[str, Any]:
        return service.doc_public(service.get_document(request.app.state.services.pool, collection, document_id))

    @app.get(
        "/api/v1/collections/{collection}/documents/{document_id}/download",
        response_model=Download,
        tags=["documents"],
        summary="A short-lived presigned download URL on the public hostname (audited)",
        responses={404: _err("No such document in this collection"), 422: _err("Malformed id"), **AUTH_ERRORS},
    )
    def download(
        request: Request,
        collection: CollectionPath,
        document_id: int,
        principal: ReaderKey,
    ) -> dict[str, Any]:
        return service.presign_download(
            request.app.state.services,
            collection,
            document_id,
            api_key_name=principal.name,
            request_id=_request_id(),
            client_ip=client_ip(request),
        )

    @app.delete(
        "/api/v1/collections/{collection}/documents/{document_id}",
        status_code=204,
        tags=["documents"],
        summary="Delete a document: row, chunks, vectors and object",
        responses={
            204: {"description": "Deleted"},
            404: _err("No such document in this collection"),
            409: _err("The document is being indexed right now; retry"),
            422: _err("Malformed id"),
            **AUTH_ERRORS,
        },
    )
    def delete_doc(
        request: Request,
        collection: CollectionPath,
        document_id: int,
        principal: WriterKey,
    ) -> Response:
        try:
            service.delete_document(
                request.app.state.services,
                collection,
                document_id,
                api_key_name=principal.name,
                request_id=_request_id(),
                client_ip=client_ip(request),
            )
        except psycopg.errors.LockNotAvailable:
            raise HTTPError(409, "document is being indexed right now; retry shortly") from None
        return Response(status_code=204)

    @app.get(
        "/api/v1/collections",
        response_model=list[CollectionInfo],
        tags=["documents"],
        summary="Collections with their embedding model and totals",
        responses=AUTH_ERRORS,
    )
    def collections(request: Request, principal: ReaderKey) -> list[dict[str, Any]]:
        return service.list_collections(request.app.state.services.pool)

    # -- search -----------------------------------------------------------------------------------
    @app.post(
        "/api/v1/search",
        response_model=SearchResponse,
        tags=["search"],
        summary="Vector, keyword (Postgres full-text) or hybrid (reciprocal rank fusion) search",
        responses={
            404: _err("No such collection"),
            409: _err("The collection was embedded with another model than the one configured"),
            422: _err("Malformed request"),
            **AUTH_ERRORS,
        },
    )
    def search(request: Request, body: SearchRequest, principal: ReaderKey) -> dict[str, Any]:
        return service.search(request.app.state.services, body.collection, body.query, body.k, body.mode)

    # -- keys -------------------------------------------------------------------------------------
    @app.post(
        "/api/v1/keys",
        status_code=201,
        response_model=KeyCreated,
        tags=["keys"],
        summary="Create an API key (the plaintext is returned once)",
        responses={409: _err("A key with this name exists"), 422: _err("Bad name or role"), **AUTH_ERRORS},
    )
    def create_key(request: Request, body: KeyCreate, principal: AdminKey) -> dict[str, Any]:
        key = generate_api_key()
        s: Services = request.app.state.services
        with db(s.pool) as conn:
            try:
                row = conn.execute(
                    "INSERT INTO api_keys (name, key_hash, key_prefix, role, created_by)"
                    " VALUES (%s, %s, %s, %s, %s) RETURNING name, role, key_prefix, created_at",
                    (body.name, hash_api_key(key), key_prefix(key), body.role, principal.name),
                ).fetchone()
            except psycopg.errors.UniqueViolation:
                conn.rollback()
                raise HTTPError(409, f"an API key named {body.name!r} exists") from None
            service.audit(
                conn,
                "key.create",
                "api_key",
                resource_id=body.name,
                api_key_name=principal.name,
                client_ip=client_ip(request),
                request_id=_request_id(),
                status_code=201,
                details={"role": body.role},
            )
            conn.commit()
        assert row is not None
        return {**row, "api_key": key}

    @app.get(
        "/api/v1/keys",
        response_model=list[KeyInfo],
        tags=["keys"],
        summary="List API keys (never the keys themselves)",
        responses=AUTH_ERRORS,
    )
    def list_keys(request: Request, principal: AdminKey) -> list[dict[str, Any]]:
        with db(request.app.state.services.pool) as conn:
            rows = conn.execute(
                "SELECT name, role, key_prefix, is_active, created_at, created_by, last_used_at, revoked_at"
                " FROM api_keys ORDER BY name"
            ).fetchall()
            conn.rollback()
        return rows

    @app.delete(
        "/api/v1/keys/{name}",
        status_code=204,
        tags=["keys"],
        summary="Revoke an API key",
        responses={
            204: {"description": "Revoked"},
            404: _err("No such key"),
            409: _err("The bootstrap key is managed by the deploy"),
            422: _err("Malformed name"),
            **AUTH_ERRORS,
        },
    )
    def revoke_key(request: Request, name: str, principal: AdminKey) -> Response:
        from .db import BOOTSTRAP_KEY_NAME

        if name == BOOTSTRAP_KEY_NAME:
            raise HTTPError(409, "the bootstrap admin key is managed by the deploy (rotate its secret)")
        with db(request.app.state.services.pool) as conn:
            n = conn.execute(
                "UPDATE api_keys SET is_active = false, revoked_at = now() WHERE name = %s AND is_active", (name,)
            ).rowcount
            if not n:
                conn.rollback()
                raise HTTPError(404, f"no active API key named {name!r}")
            service.audit(
                conn,
                "key.revoke",
                "api_key",
                resource_id=name,
                api_key_name=principal.name,
                client_ip=client_ip(request),
                request_id=_request_id(),
                status_code=204,
            )
            conn.commit()
        return Response(status_code=204)

    assert set(ROLES) == {"reader", "writer", "admin"}
    assert valid_collection_name("ab")
    return app
