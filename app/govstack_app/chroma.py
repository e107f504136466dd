"""A small client for Chroma's HTTP API (v2), the few calls the app makes.

The official `chromadb-client` package would add ~40 MB (grpcio, opentelemetry exporters,
jsonschema, ...) to the image for the same handful of JSON requests.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

TENANT = "default_tenant"
DATABASE = "default_database"

# Chroma 1.5.9 answers a query that overlaps a collection's *first* write with HTTP 500 "Error
# creating hnsw segment reader: Nothing found on disk": the vector segment has no files until
# that write lands. Measured against the offline image: 40 of 60 queries racing a fresh
# collection's first upsert failed, none racing a later write, and every failed query succeeded
# when asked again 50 ms later. A search that met this was answered 503 (CI, 2026-12-05).
FIRST_WRITE_RACE = "Nothing found on disk"
# Waits before each retry: 0.35 s in all, then the error stands (a segment that stays missing
# is a real fault and is answered 503 like any other Chroma error).
FIRST_WRITE_RETRY_DELAYS_S = (0.05, 0.1, 0.2)


class ChromaError(RuntimeError):
    pass


@dataclass
class Hit:
    id: str
    distance: float
    document: str | None
    metadata: dict[str, Any]


class ChromaClient:
    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.base = f"http://{host}:{port}/api/v2"
        self.coll_base = f"{self.base}/tenants/{TENANT}/databases/{DATABASE}/collections"
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0))
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def _req(self, method: str, url: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise ChromaError(f"chroma unreachable: {exc!r}") from exc
        if r.status_code == 404:
            return None
        if r.status_code >= 400:
            raise ChromaError(f"chroma {method} {url.removeprefix(self.base)} -> {r.status_code}: {r.text[:300]}")
        return r.json() if r.content else None

    def heartbeat(self, timeout: float = 3.0) -> None:
        try:
            r = self._http.get(f"{self.base}/heartbeat", timeout=timeout)
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise ChromaError(f"chroma heartbeat failed: {exc!r}") from exc

    # -- collections ------------------------------------------------------------------------------
    def get_collection(self, name: str) -> dict[str, Any] | None:
        return self._req("GET", f"{self.coll_base}/{name}")

    def get_or_create_collection(self, name: str, metadata: dict[str, Any]) -> dict[str, Any]:
        body = {
            "name": name,
            "metadata": metadata,
            "configuration": {"hnsw": {"space": "cosine"}},
            "get_or_create": True,
        }
        coll = self._req("POST", self.coll_base, json=body)
        if coll is None:
            raise ChromaError(f"chroma could not create collection {name}")
        with self._lock:
            self._ids[name] = coll["id"]
        return coll

    def collection_id(self, name: str) -> str | None:
        with self._lock:
            cid = self._ids.get(name)
        if cid:
            return cid
        coll = self.get_collection(name)
        if coll is None:
            return None
        with self._lock:
            self._ids[name] = coll["id"]
        return coll["id"]

    def delete_collection(self, name: str) -> None:
        self._req("DELETE", f"{self.coll_base}/{name}")
        with self._lock:
            self._ids.pop(name, None)

    def _cid(self, name: str) -> str:
        cid = self.collection_id(name)
        if cid is None:
            raise ChromaError(f"chroma collection {name} does not exist")
        return cid

    def _call(self, name: str, op: str, body: dict[str, Any]) -> Any:
        cid = self._cid(name)
        try:
            return self._req("POST", f"{self.coll_base}/{cid}/{op}", json=body)
        except ChromaError:
            # the collection may have been dropped and re-created (new id): refresh once
            with self._lock:
                self._ids.pop(name, None)
            cid2 = self._cid(name)
            if cid2 == cid:
                raise
            return self._req("POST", f"{self.coll_base}/{cid2}/{op}", json=body)

    # -- records ----------------------------------------------------------------------------------
    def upsert(
        self,
        name: str,
        ids: list[str],
        embeddings: list[list[float]],
        documents: list[str],
        metadatas: list[dict[str, Any]],
        *,
        batch: int = 256,
    ) -> None:
        for s in range(0, len(ids), batch):
            self._call(
                name,
                "upsert",
                {
                    "ids": ids[s : s + batch],
                    "embeddings": embeddings[s : s + batch],
                    "documents": documents[s : s + batch],
                    "metadatas": metadatas[s : s + batch],
                },
            )

    def query(self, name: str, embedding: list[float], n: int, where: dict[str, Any] | None = None) -> list[Hit]:
        if self.collection_id(name) is None:
            return []
        body: dict[str, Any] = {
            "query_embeddings": [embedding],
            "n_results": n,
            "include": ["distances", "documents", "metadatas"],
        }
        if where:
            body["where"] = where
        res = self._query_past_first_write(name, body)
        ids = (res.get("ids") or [[]])[0]
        dists = (res.get("distances") or [[]])[0]
        docs = (res.get("documents") or [[None] * len(ids)])[0]
        metas = (res.get("metadatas") or [[None] * len(ids)])[0]
        return [Hit(i, float(d), doc, meta or {}) for i, d, doc, meta in zip(ids, dists, docs, metas, strict=False)]

    def _query_past_first_write(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        for delay in FIRST_WRITE_RETRY_DELAYS_S:
            try:
                return self._call(name, "query", body) or {}
            except ChromaError as exc:
                if FIRST_WRITE_RACE not in str(exc):
                    raise
            time.sleep(delay)
        return self._call(name, "query", body) or {}

    def delete(self, name: str, *, where: dict[str, Any] | None = None, ids: list[str] | None = None) -> None:
        if self.collection_id(name) is None:
            return
        body: dict[str, Any] = {}
        if where:
            body["where"] = where
        if ids is not None:
            body["ids"] = ids
        if not body:
            raise ValueError("delete needs where or ids")
        self._call(name, "delete", body)

    def get(
        self,
        name: str,
        *,
        where: dict[str, Any] | None = None,
        ids: list[str] | None = None,
        include: list[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        if self.collection_id(name) is None:
            return {"ids": [], "metadatas": []}
        body: dict[str, Any] = {"include": include if include is not None else ["metadatas"]}
        if where:
            body["where"] = where
        if ids is not None:
            body["ids"] = ids
        if limit is not None:
            body["limit"] = limit
        if offset is not None:
            body["offset"] = offset
        return self._call(name, "get", body) or {"ids": []}

    def count(self, name: str) -> int:
        cid = self.collection_id(name)
        if cid is None:
            return 0
        return int(self._req("GET", f"{self.coll_base}/{cid}/count") or 0)
