"""API surface without services: OpenAPI completeness, auth before anything else, early 413."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from govstack_app import metrics
from govstack_app.api import create_app
from govstack_app.schemas import KeyCreate
from govstack_app.security import ROLES
from govstack_app.settings import Settings


@pytest.fixture
def app(env: dict[str, str], monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("GOVSTACK_MAX_UPLOAD_BYTES", "1000")
    return create_app(Settings(), run_migrations=False)


def operations(spec: dict) -> dict[tuple[str, str], dict]:
    return {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items()}


# Every route the edge proxies may also answer the edge's own 400, 413 and 429 (same JSON shape).
EXPECTED = {
    ("POST", "/api/v1/collections/{collection}/documents"): {200, 201, 400, 401, 403, 409, 413, 415, 422, 429, 503},
    ("GET", "/api/v1/collections/{collection}/documents"): {200, 400, 401, 403, 404, 413, 422, 429, 503},
    ("GET", "/api/v1/collections/{collection}/documents/{document_id}"): {200, 400, 401, 403, 404, 413, 422, 429, 503},
    ("GET", "/api/v1/collections/{collection}/documents/{document_id}/download"): {
        200, 400, 401, 403, 404, 413, 422, 429, 503},
    ("DELETE", "/api/v1/collections/{collection}/documents/{document_id}"): {
        204, 400, 401, 403, 404, 409, 413, 422, 429, 503},
    ("GET", "/api/v1/collections"): {200, 400, 401, 403, 413, 429, 503},
    ("POST", "/api/v1/collections"): {201, 400, 401, 403, 409, 413, 422, 429, 503},
    ("POST", "/api/v1/search"): {200, 400, 401, 403, 404, 409, 413, 422, 429, 503},
    ("POST", "/api/v1/keys"): {201, 400, 401, 403, 409, 413, 422, 429, 503},
    ("GET", "/api/v1/keys"): {200, 400, 401, 403, 413, 429, 503},
    ("POST", "/api/v1/keys/{name}/rotate"): {200, 400, 401, 403, 404, 413, 422, 429, 503},
    ("DELETE", "/api/v1/keys/{name}"): {204, 400, 401, 403, 404, 409, 413, 422, 429, 503},
    ("GET", "/health"): {200},
    ("GET", "/ready"): {200, 400, 429, 503},
}


# Operation ids name the generated clients' methods: the routers must keep the handler names.
OPERATIONS = {
    ("GET", "/health"): ("health_health_get", "ops"),
    ("GET", "/ready"): ("ready_ready_get", "ops"),
    ("POST", "/api/v1/collections/{collection}/documents"): (
        "upload_api_v1_collections__collection__documents_post",
        "documents",
    ),
    ("GET", "/api/v1/collections/{collection}/documents"): (
        "list_docs_api_v1_collections__collection__documents_get",
        "documents",
    ),
    ("GET", "/api/v1/collections/{collection}/documents/{document_id}"): (
        "get_doc_api_v1_collections__collection__documents__document_id__get",
        "documents",
    ),
    ("DELETE", "/api/v1/collections/{collection}/documents/{document_id}"): (
        "delete_doc_api_v1_collections__collection__documents__document_id__delete",
        "documents",
    ),
    ("GET", "/api/v1/collections/{collection}/documents/{document_id}/download"): (
        "download_api_v1_collections__collection__documents__document_id__download_get",
        "documents",
    ),
    ("GET", "/api/v1/collections"): ("collections_api_v1_collections_get", "documents"),
    ("POST", "/api/v1/collections"): ("create_api_v1_collections_post", "documents"),
    ("POST", "/api/v1/search"): ("search_api_v1_search_post", "search"),
    ("GET", "/api/v1/keys"): ("list_keys_api_v1_keys_get", "keys"),
    ("POST", "/api/v1/keys"): ("create_key_api_v1_keys_post", "keys"),
    ("POST", "/api/v1/keys/{name}/rotate"): ("rotate_key_api_v1_keys__name__rotate_post", "keys"),
    ("DELETE", "/api/v1/keys/{name}"): ("revoke_key_api_v1_keys__name__delete", "keys"),
}


def test_route_table_is_stable(app) -> None:  # noqa: ANN001
    ops = operations(app.openapi())
    assert {key: (op["operationId"], *op["tags"]) for key, op in ops.items()} == OPERATIONS
    assert list(app.openapi()["paths"]) == list(dict.fromkeys(path for _, path in OPERATIONS))


def test_key_roles_are_the_security_roles() -> None:
    assert set(KeyCreate.model_json_schema()["properties"]["role"]["enum"]) == set(ROLES)


def test_openapi_declares_every_status(app) -> None:  # noqa: ANN001
    spec = app.openapi()
    ops = operations(spec)
    assert set(EXPECTED) <= set(ops), set(EXPECTED) - set(ops)
    for key, codes in EXPECTED.items():
        declared = {int(c) for c in ops[key]["responses"]}
        assert codes <= declared, f"{key}: missing {codes - declared}"
        for code in declared - {200, 201, 204}:
            schema = ops[key]["responses"][str(code)].get("content", {}).get("application/json", {}).get("schema")
            assert schema, f"{key} {code} has no JSON schema"
    assert spec["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "API key; roles reader < writer < curator < admin, each key confined to its collections or not",
    }
    for key in EXPECTED:
        if key[1].startswith("/api/"):
            assert ops[key].get("security") == [{"APIKeyHeader": []}], key


def test_the_schema_publishes_only_what_the_edge_serves(app) -> None:  # noqa: ANN001
    # Prometheus scrapes /metrics from the app directly; the edge answers it 404.
    assert "/metrics" not in app.openapi()["paths"]
    assert TestClient(app).get("/metrics").status_code == 200


def test_a_refused_method_is_405_naming_every_method_of_the_path(app) -> None:  # noqa: ANN001
    client = TestClient(app)
    r = client.put("/api/v1/collections/forms/documents/1", headers={"X-Request-ID": "rid-405"})
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, DELETE"
    assert r.json() == {"detail": "method PUT not allowed", "request_id": "rid-405"}
    # The edge asks with OPTIONS on behalf of a method it refused itself (TRACE).
    r = client.options("/health", headers={"X-Original-Method": "TRACE"})
    assert (r.status_code, r.headers["allow"], r.json()["detail"]) == (405, "GET", "method TRACE not allowed")
    r = client.get("/no/such/path", headers={"X-Request-ID": "rid-404"})
    assert r.status_code == 404 and r.json() == {"detail": "Not Found", "request_id": "rid-404"}


def test_ready_names_the_failed_check_but_never_its_cause(app) -> None:  # noqa: ANN001
    class Broken:
        def connection(self, timeout: float):  # noqa: ANN201
            raise OSError("connection to 10.253.0.5:5432 refused (password authentication failed)")

    class Store:
        def check(self) -> None:
            raise RuntimeError("S3 AccessDenied for key AKIA-SECRET-LOOKING")

    class Chroma:
        def heartbeat(self) -> None:
            return None

    app.state.services = type("Services", (), {"pool": Broken(), "store": Store(), "chroma": Chroma()})()
    r = TestClient(app).get("/ready")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "checks": {"postgres": "error", "object_store": "error",
                                                            "chroma": "ok"}, "failed": ["postgres", "object_store"]}


def test_missing_key_is_401_without_touching_services(app) -> None:  # noqa: ANN001
    client = TestClient(app)  # no lifespan: no database, no object store
    r = client.get("/api/v1/collections/forms/documents")
    assert r.status_code == 401 and r.json()["detail"].startswith("missing API key")
    assert r.headers["www-authenticate"] == "ApiKey"
    assert len(r.headers["x-request-id"]) == 32
    r = client.post("/api/v1/search", json={"query": "x", "collection": "forms"}, headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 401 and r.json()["request_id"] == "abc-123"
    assert r.headers["x-request-id"] == "abc-123"


def test_oversized_body_is_413_before_parsing(app) -> None:  # noqa: ANN001
    client = TestClient(app)
    big = b"x" * (1000 + 1024 * 1024 + 10)
    r = client.post("/api/v1/collections/forms/documents", files={"file": ("a.txt", big)}, headers={"X-API-Key": "k"})
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]


def test_validation_errors_are_422_with_request_id(app) -> None:  # noqa: ANN001
    client = TestClient(app)
    r = client.get("/api/v1/collections/Bad Name/documents")
    assert r.status_code in (401, 422)  # auth or path validation, never 500
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "version": "1.2.3", "color": "green"}


def test_seed_metric_names_exist() -> None:
    from prometheus_client import REGISTRY, generate_latest

    metrics.ACTIVE_CONNECTIONS.set(0)
    text = generate_latest(REGISTRY).decode()
    for name in (
        "govstack_requests_total",
        "govstack_request_duration_seconds",
        "govstack_vector_search_duration_seconds",
        "govstack_document_processing_seconds",
        "govstack_active_connections",
        "govstack_unindexed_documents",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name


def test_paging_parameters_are_bounded_by_what_postgres_accepts(app) -> None:  # noqa: ANN001
    # Found by schemathesis through the edge: ?offset=32589158477190044730 reached Postgres' OFFSET
    # (a bigint) and answered 500. The schema bounds it, so FastAPI answers 422 before any query.
    from govstack_app.routers.documents import PG_BIGINT_MAX

    params = {p["name"]: p["schema"] for p in
              app.openapi()["paths"]["/api/v1/collections/{collection}/documents"]["get"]["parameters"]}
    assert params["offset"]["maximum"] == PG_BIGINT_MAX == 2**63 - 1
    assert params["offset"]["minimum"] == 0
    assert params["limit"]["maximum"] == 500


def test_free_text_that_postgres_cannot_store_is_refused_by_the_schema() -> None:
    # Found by schemathesis through the edge: a search query holding NUL reached Postgres' full-text
    # query and answered 500. Every free text that is stored or queried as it is (the search query,
    # an upload's created_by) refuses it with 422 before any service is touched.
    import typing

    from govstack_app.routers.documents import upload
    from govstack_app.schemas import SearchRequest, StorableText, storable_text
    from pydantic import ValidationError

    for query in ("a\x00b", "\x00", "x\ud800y"):
        with pytest.raises(ValidationError):
            SearchRequest.model_validate({"query": query, "collection": "forms"})
    with pytest.raises(ValueError, match="NUL"):
        storable_text("someone\x00")
    with pytest.raises(ValueError, match="lone surrogate"):
        storable_text("\udc80")
    assert SearchRequest.model_validate({"query": "é 😀 \t\n", "collection": "forms"}).query == "é 😀 \t\n"
    # upload's created_by: Annotated[StorableText | None, Form(...)]
    created_by = typing.get_type_hints(upload, include_extras=True)["created_by"]
    assert StorableText in typing.get_args(typing.get_args(created_by)[0])


@pytest.mark.parametrize(("path", "body", "unknown"), [
    ("/api/v1/search", {"query": "budget", "collection": "docs", "top_k": 3}, "top_k"),
    ("/api/v1/search", {"query": "budget", "colection": "docs", "collection": "docs"}, "colection"),
    ("/api/v1/collections", {"name": "docs", "public": True}, "public"),
    ("/api/v1/keys", {"name": "ci", "role": "reader", "expires": "never"}, "expires"),
])
def test_an_unknown_field_in_a_request_body_is_a_422_naming_it(app, path, body, unknown) -> None:  # noqa: ANN001
    schema = app.openapi()["components"]["schemas"]
    assert all(schema[name]["additionalProperties"] is False for name in ("SearchRequest", "CollectionCreate",
                                                                          "KeyCreate"))
    from govstack_app.schemas import CollectionCreate, SearchRequest

    model = {"/api/v1/search": SearchRequest, "/api/v1/collections": CollectionCreate, "/api/v1/keys": KeyCreate}[path]
    with pytest.raises(ValueError, match=f"{unknown}\\n  Extra inputs are not permitted"):
        model.model_validate(body)
    model.model_validate({k: v for k, v in body.items() if k != unknown} | ({"collection": "docs"} if path.endswith(
        "search") else {}))
