"""Helpers and fixtures for the app's end-to-end tests (test_app_flow.py, test_app_failures.py).

No tests here. Everything goes through the real stack: HTTPS through nginx for the API, and
the `stack` fixture's clients (psql, S3, Chroma) or `docker` for looking behind it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

_APP_DIR = Path(__file__).resolve().parents[2] / "app"
if str(_APP_DIR) not in sys.path:  # the app package, for its sample documents
    sys.path.insert(0, str(_APP_DIR))

from govstack_app import samples  # noqa: E402,F401 - re-exported for the tests

# Compose service names of the app tier and the database.
APP_SERVICE = "api"
WORKER_SERVICE = "worker"
POSTGRES_SERVICE = "postgres"

INDEX_TIMEOUT_S = 300
HTTP_TIMEOUT_S = 120
RATE_LIMIT_PATIENCE_S = 90  # nginx answers 429 beyond its per-client rate; we wait and retry
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
EXPECTED_TYPES = {
    "txt": "text/plain",
    "md": "text/markdown",
    "html": "text/html",
    "pdf": "application/pdf",
    "docx": DOCX,
}


def docker(
    *args: str, timeout: float = 120, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def app_exec(
    stack: Any,
    *cmd: str,
    service: str = APP_SERVICE,
    timeout: float = 120,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    return docker("exec", "-i", stack.service_container(service), *cmd, timeout=timeout, check=check, input=input)


def app_config(stack: Any) -> dict[str, Any]:
    """The app's effective non-secret configuration, from the running container."""
    return json.loads(app_exec(stack, "govstack-app", "config").stdout)


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class Api:
    """HTTPS client for the app behind nginx, with one API key."""

    def __init__(self, stack: Any, key: str | None) -> None:
        self.base = stack.base_url.rstrip("/")
        self.verify = stack.verify
        self.key = key
        self.session = requests.Session()

    def call(self, method: str, path: str, *, key: Any = ..., retry_429: bool = True, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        k = self.key if key is ... else key
        if k is not None:
            headers["X-API-Key"] = k
        deadline = time.monotonic() + RATE_LIMIT_PATIENCE_S
        while True:
            files = kw.get("files")
            if files:  # re-sendable on retry
                kw["files"] = {n: (f[0], f[1]) for n, f in files.items()}
            r = self.session.request(
                method, self.base + path, headers=headers, verify=self.verify, timeout=HTTP_TIMEOUT_S, **kw
            )
            if r.status_code != 429 or not retry_429 or time.monotonic() > deadline:
                return r
            time.sleep(1.2)

    def upload(self, collection: str, filename: str, data: bytes, **kw: Any) -> requests.Response:
        return self.call("POST", f"/api/v1/collections/{collection}/documents", files={"file": (filename, data)}, **kw)

    def doc(self, collection: str, doc_id: int) -> dict[str, Any]:
        r = self.call("GET", f"/api/v1/collections/{collection}/documents/{doc_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def search(self, collection: str, query: str, mode: str, k: int = 3) -> list[dict[str, Any]]:
        r = self.call("POST", "/api/v1/search", json={"query": query, "collection": collection, "k": k, "mode": mode})
        assert r.status_code == 200, r.text
        return r.json()["results"]


def wait_indexed(stack: Any, doc_ids: list[int], timeout: float = INDEX_TIMEOUT_S) -> dict[int, dict[str, Any]]:
    """Poll Postgres until every document is indexed; fail at once on a failed one."""
    ids = ",".join(str(int(i)) for i in doc_ids)
    deadline = time.monotonic() + timeout
    while True:
        rows = stack.psql(
            f"SELECT id, is_indexed, index_failed, coalesce(index_error, ''), index_attempts, coalesce(chunk_count, -1)"
            f" FROM documents WHERE id IN ({ids})"
        )
        state = {
            int(r[0]): {
                "is_indexed": r[1] in (True, "t"),
                "failed": r[2] in (True, "t"),
                "error": r[3],
                "attempts": int(r[4]),
                "chunk_count": int(r[5]),
            }
            for r in rows
        }
        assert set(state) == {int(i) for i in doc_ids}, f"rows missing: {set(map(int, doc_ids)) - set(state)}"
        failed = {i: s["error"] for i, s in state.items() if s["failed"]}
        assert not failed, f"indexing failed: {failed}"
        if all(s["is_indexed"] for s in state.values()):
            return state
        if time.monotonic() > deadline:
            pending = sorted(i for i, s in state.items() if not s["is_indexed"])
            raise AssertionError(f"not indexed after {timeout}s: {pending} ({state})")
        time.sleep(1)


def chroma_ids(stack: Any, collection: str, doc_id: int) -> list[str]:
    client = stack.chroma()
    names = {c.name if hasattr(c, "name") else c for c in client.list_collections()}
    if f"govstack_{collection}" not in names:
        return []
    coll = client.get_collection(f"govstack_{collection}")
    return sorted(coll.get(where={"document_id": int(doc_id)}, include=[])["ids"])


def object_exists(stack: Any, bucket: str, name: str) -> bool:
    from minio.error import S3Error

    try:
        stack.s3().stat_object(bucket, name)
        return True
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            return False
        raise


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def admin(stack: Any) -> Api:
    return Api(stack, stack.admin_api_key)


@pytest.fixture(scope="module")
def keys(stack: Any, admin: Api) -> Iterator[dict[str, str]]:
    """One fresh key per role, revoked afterwards."""
    made: dict[str, str] = {}
    names = []
    for role in ("reader", "writer", "curator", "admin"):
        name = unique(f"e2e-{role}")
        r = admin.call("POST", "/api/v1/keys", json={"name": name, "role": role})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["name"] == name and body["role"] == role and body["api_key"]
        made[role] = body["api_key"]
        names.append(name)
    yield made
    for name in names:
        admin.call("DELETE", f"/api/v1/keys/{name}")


@pytest.fixture(scope="module")
def writer(stack: Any, keys: dict[str, str]) -> Api:
    """The key the tests upload with, into fresh collections (``collection``): the curator role,
    a writer that may also create collections."""
    return Api(stack, keys["curator"])


@pytest.fixture(scope="module")
def reader(stack: Any, keys: dict[str, str]) -> Api:
    return Api(stack, keys["reader"])


@pytest.fixture(scope="module")
def config(stack: Any) -> dict[str, Any]:
    return app_config(stack)


@pytest.fixture
def collection() -> str:
    return unique("e2e")
