"""Request and response models of the API (their class names are the OpenAPI schema names),
and the documented error responses every route shares."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

COLLECTION_RE = r"^[a-z0-9][a-z0-9_-]{0,61}[a-z0-9]$"
CollectionPath = Annotated[str, Path(pattern=COLLECTION_RE, description="Collection name")]
CollectionName = Annotated[str, Field(pattern=COLLECTION_RE)]
KEY_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"
Role = Literal["admin", "curator", "writer", "reader"]


def storable_text(value: str) -> str:
    """Free text that reaches Postgres as it is: a text value cannot hold NUL (psycopg refuses
    it), and a lone surrogate (JSON may carry one) cannot be encoded as UTF-8. Refused here,
    so the client gets 422 naming the field, never a 500 from the driver."""
    if "\x00" in value:
        raise ValueError("must not contain the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
    return value


StorableText = Annotated[str, AfterValidator(storable_text)]


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="What went wrong, for humans (request validation errors: the list of problems)"
    )
    request_id: str | None = None


class ReadyResponse(BaseModel):
    status: Literal["ready", "unavailable"]
    # Which check failed, never why (that is in the app's log, with the request id).
    checks: dict[str, Literal["ok", "error"]]
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


# A request body's unknown field is an error (422 naming it), not silently ignored: a client that
# sends `top_k` or a misspelt `colection` learns so instead of getting defaults it did not ask for.
_REQUEST = ConfigDict(extra="forbid")


class SearchRequest(BaseModel):
    model_config = _REQUEST

    query: StorableText = Field(min_length=1, max_length=2000)
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


class CollectionCreate(BaseModel):
    model_config = _REQUEST

    name: CollectionName


_SCOPE = "The collections the key may touch (existing or not yet); null: every collection"


class KeyCreate(BaseModel):
    model_config = _REQUEST

    name: str = Field(min_length=1, max_length=100, pattern=KEY_NAME_RE)
    role: Role = Field(description="reader: read, download, search; writer: + upload and delete; "
                       "curator: + create collections; admin: + API keys")
    collections: list[CollectionName] | None = Field(None, min_length=1, max_length=1000, description=_SCOPE)


class KeyCreated(BaseModel):
    name: str
    role: str
    collections: list[str] | None = Field(description=_SCOPE)
    api_key: str = Field(description="The key itself. Shown once; only its hash is stored.")
    key_prefix: str
    created_at: datetime


class KeyInfo(BaseModel):
    name: str
    role: str
    collections: list[str] | None = Field(description=_SCOPE)
    key_prefix: str
    is_active: bool
    created_at: datetime
    created_by: str | None
    last_used_at: datetime | None
    revoked_at: datetime | None


def error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: error_doc("Missing or unknown API key (header X-API-Key)"),
    403: error_doc("The API key's role, or its collections, do not allow this call"),
    503: error_doc("A backing service (postgres, object store, chroma, embeddings) is unavailable, "
                   "or the edge has no app to send the request to"),
}

# What the edge (nginx) answers itself, in the same JSON shape, on the routes it proxies.
EDGE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_doc("Malformed request: a body that cannot be parsed (the app), or a request line or header "
                   "the edge refuses"),
    413: error_doc("Request body over the upload limit (the edge's client_max_body_size, the app's own)"),
    429: error_doc("Rate limit exceeded, per client address or per API key (the edge; Retry-After: 1)"),
}
