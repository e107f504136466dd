"""Vectors: every Chroma collection as JSONL, through Chroma's HTTP API v2.

The stream is an ``export`` line (format, Chroma version), then per
collection of every database of the tenant a ``collection`` line (name,
metadata, configuration) followed by its ``record`` lines (id, embedding,
metadata, document, uri). Records are read in pages, so memory stays flat
whatever the collection's size. The official client would add ~40 MB of
dependencies for the same handful of JSON calls (the app makes the same
choice, app/govstack_app/chroma.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from typing import IO, Any
from urllib.parse import quote

import urllib3

from govstack_backup.files import write_if_changed
from govstack_backup.manifest import EMBEDDING_TOLERANCE, CollectionDigest, embedding_difference

PAGE = 500


class ChromaError(RuntimeError):
    pass


class Chroma:
    def __init__(self, url: str, tenant: str = "default_tenant", timeout: float = 120) -> None:
        self.base = url.rstrip("/") + "/api/v2"
        self.tenant = tenant
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=timeout),
                                        retries=urllib3.Retry(total=3, backoff_factor=0.5, allowed_methods=None,
                                                              status_forcelist=(502, 503, 504)))

    def req(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        try:
            resp = self.http.request(method, self.base + path, body=None if body is None else json.dumps(body),
                                     headers={"Content-Type": "application/json"})
        except urllib3.exceptions.HTTPError as exc:
            raise ChromaError(f"chroma at {self.base} is unreachable: {exc}") from None
        if resp.status == 404 and missing_ok:
            return None
        if resp.status >= 400:
            raise ChromaError(f"chroma {method} {path} -> {resp.status}: {resp.data[:300].decode(errors='replace')}")
        return json.loads(resp.data) if resp.data else None

    def _db(self, database: str) -> str:
        return f"/tenants/{quote(self.tenant)}/databases/{quote(database)}"

    def version(self) -> str:
        return str(self.req("GET", "/version"))

    def max_batch(self) -> int:
        checks = self.req("GET", "/pre-flight-checks") or {}
        return int(checks.get("max_batch_size") or 1000)

    def databases(self) -> list[str]:
        return sorted(db["name"] for db in self.req("GET", f"/tenants/{quote(self.tenant)}/databases") or [])

    def ensure_database(self, database: str) -> None:
        if self.req("GET", self._db(database), missing_ok=True) is None:
            self.req("POST", f"/tenants/{quote(self.tenant)}/databases", {"name": database})

    def collections(self, database: str) -> list[dict[str, Any]]:
        found, offset = [], 0
        while True:
            page = self.req("GET", f"{self._db(database)}/collections?limit=100&offset={offset}") or []
            found.extend(page)
            if len(page) < 100:
                return sorted(found, key=lambda c: c["name"])
            offset += len(page)

    def collection(self, database: str, name: str) -> dict[str, Any] | None:
        return self.req("GET", f"{self._db(database)}/collections/{quote(name)}", missing_ok=True)

    def count(self, database: str, cid: str) -> int:
        return int(self.req("GET", f"{self._db(database)}/collections/{cid}/count"))

    def page(self, database: str, cid: str, offset: int, limit: int = PAGE) -> dict[str, Any]:
        return self.req("POST", f"{self._db(database)}/collections/{cid}/get",
                        {"limit": limit, "offset": offset,
                         "include": ["embeddings", "metadatas", "documents", "uris"]})

    def records(self, database: str, cid: str) -> Iterator[dict[str, Any]]:
        """Every record once (ids seen on an earlier page are skipped: a
        concurrent delete can shift offsets)."""
        seen: set[str] = set()
        offset = 0
        while True:
            page = self.page(database, cid, offset)
            ids = page.get("ids") or []
            for i, rid in enumerate(ids):
                if rid in seen:
                    continue
                seen.add(rid)
                yield {
                    "id": rid,
                    "embedding": (page.get("embeddings") or [None] * len(ids))[i],
                    "metadata": (page.get("metadatas") or [None] * len(ids))[i],
                    "document": (page.get("documents") or [None] * len(ids))[i],
                    "uri": (page.get("uris") or [None] * len(ids))[i],
                }
            if len(ids) < PAGE:
                return
            offset += len(ids)

    def create_collection(self, database: str, name: str, metadata: Any, configuration: Any) -> dict[str, Any]:
        # configuration only: Chroma derives the schema from it and refuses both at once.
        body = {"name": name, "metadata": metadata or None, "configuration": configuration, "get_or_create": False}
        return self.req("POST", f"{self._db(database)}/collections", body)

    def rename_collection(self, database: str, cid: str, new_name: str) -> None:
        self.req("PUT", f"{self._db(database)}/collections/{cid}", {"new_name": new_name})

    def delete_collection(self, database: str, name: str) -> None:
        self.req("DELETE", f"{self._db(database)}/collections/{quote(name)}", missing_ok=True)

    def upsert(self, database: str, cid: str, batch: list[dict[str, Any]]) -> None:
        body: dict[str, Any] = {
            "ids": [r["id"] for r in batch],
            "embeddings": [r["embedding"] for r in batch],
            "metadatas": [r["metadata"] for r in batch],
            "documents": [r["document"] for r in batch],
        }
        if any(r.get("uri") for r in batch):
            body["uris"] = [r.get("uri") for r in batch]
        self.req("POST", f"{self._db(database)}/collections/{cid}/upsert", body)


def key(database: str, name: str) -> str:
    return f"{database}/{name}"


def export(chroma: Chroma, out: IO[bytes]) -> dict[str, Any]:
    """Write every collection to ``out`` as JSONL; the vectors part of the manifest."""
    result: dict[str, Any] = {"chroma_api_version": chroma.version(), "collections": {}}
    # A first line even with no collection: restic refuses an empty stdin.
    out.write((json.dumps({"type": "export", "format": 1, "tenant": chroma.tenant,
                           "chroma_api_version": result["chroma_api_version"]}, sort_keys=True) + "\n").encode())
    for database in chroma.databases():
        for coll in chroma.collections(database):
            before = chroma.count(database, coll["id"])
            header = {"type": "collection", "database": database, "name": coll["name"],
                      "metadata": coll.get("metadata"), "configuration": coll.get("configuration_json"),
                      "dimension": coll.get("dimension")}
            out.write((json.dumps(header, sort_keys=True) + "\n").encode())
            digest = CollectionDigest()
            for rec in chroma.records(database, coll["id"]):
                digest.add(rec["id"], rec["embedding"], rec["metadata"], rec["document"])
                line = {"type": "record", "database": database, "collection": coll["name"], **rec}
                out.write((json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n").encode())
            after = chroma.count(database, coll["id"])
            result["collections"][key(database, coll["name"])] = {
                "count": digest.count, "digest": digest.hexdigest(), "dimension": coll.get("dimension"),
                "metadata": coll.get("metadata"),
                # Written to during the export: the count may not match the DB snapshot exactly.
                "changed_during_export": before != after,
            }
    return result


# -- incremental: one JSONL file per collection, re-exported only when it changed ---------------
DIR_STATE = "state.json"


def collection_file(full: str) -> str:
    return hashlib.sha256(full.encode()).hexdigest() + ".jsonl"


def signature(coll: dict[str, Any], count: int, watermark: Any) -> dict[str, Any]:
    """What must be equal for a collection to count as unchanged since the last export. Chroma
    (1.x, single node) reports no modification time (its ``log_position`` and ``version`` stay
    0), so: its id, count, metadata and configuration, plus the app's indexing watermark of it
    (rows, newest indexed_at and a hash over every row's id/indexed_at/failure, read inside
    the run's database snapshot). Without a watermark a collection is exported every run."""
    return {"id": coll["id"], "count": count, "metadata": coll.get("metadata"),
            "configuration": coll.get("configuration_json"), "dimension": coll.get("dimension"),
            "watermark": watermark}


def export_dir(chroma: Chroma, root: str, watermarks: dict[str, Any] | None = None) -> dict[str, Any]:
    """Bring ``root`` (one ``<sha256>.jsonl`` per collection, and ``state.json``) up to the
    collections now; collections whose signature equals the last export's are not read.
    Each file is written to a temp name and renamed; the state last. Returns the manifest part."""
    watermarks = watermarks or {}
    os.makedirs(root, mode=0o700, exist_ok=True)
    for name in os.listdir(root):
        if name.endswith(".tmp"):
            os.unlink(os.path.join(root, name))
    try:
        with open(os.path.join(root, DIR_STATE), encoding="utf-8") as fh:
            previous = json.load(fh).get("collections", {})
    except (OSError, ValueError):
        previous = {}
    api = chroma.version()
    collections: dict[str, Any] = {}
    # no_watermark: collections the app does not name (e.g. ones a forced restore set aside),
    # exported every run.
    counters = {"exported": 0, "unchanged": 0, "records_read": 0, "no_watermark": 0}
    for database in chroma.databases():
        for coll in chroma.collections(database):
            full = key(database, coll["name"])
            before = chroma.count(database, coll["id"])
            sig = signature(coll, before, watermarks.get(full))
            old = previous.get(full)
            path = os.path.join(root, collection_file(full))
            if (old is not None and sig["watermark"] is not None and old.get("signature") == sig
                    and not old.get("changed_during_export") and _size_of(path) == old.get("file_bytes")):
                collections[full] = old
                counters["unchanged"] += 1
                continue
            if sig["watermark"] is None:
                counters["no_watermark"] += 1
            entry = _export_collection(chroma, database, coll, path, api)
            after = chroma.count(database, coll["id"])
            counters["exported"] += 1
            counters["records_read"] += entry["count"]
            # Written to during the export: the count may not match the DB snapshot exactly, and
            # the next run exports it again.
            collections[full] = {**entry, "signature": sig, "changed_during_export": before != after}
    state = {"format": 1, "chroma_api_version": api, "collections": dict(sorted(collections.items()))}
    # Unchanged: left alone, so restic finds it unmodified too.
    write_if_changed(os.path.join(root, DIR_STATE), (json.dumps(state, sort_keys=True) + "\n").encode())
    keep = {collection_file(full) for full in collections} | {DIR_STATE}
    for name in os.listdir(root):
        if name not in keep:
            os.unlink(os.path.join(root, name))
    return {"format": "dir", "dir": root, "chroma_api_version": api, "counters": counters,
            "collections": {full: {k: e[k] for k in ("count", "digest", "dimension", "metadata",
                                                      "changed_during_export", "file")}
                            for full, e in state["collections"].items()}}


def _size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _export_collection(chroma: Chroma, database: str, coll: dict[str, Any], path: str, api: str) -> dict[str, Any]:
    tmp = path + ".tmp"
    digest = CollectionDigest()
    with open(tmp, "wb") as out:
        out.write((json.dumps({"type": "export", "format": 1, "tenant": chroma.tenant,
                               "chroma_api_version": api}, sort_keys=True) + "\n").encode())
        header = {"type": "collection", "database": database, "name": coll["name"],
                  "metadata": coll.get("metadata"), "configuration": coll.get("configuration_json"),
                  "dimension": coll.get("dimension")}
        out.write((json.dumps(header, sort_keys=True) + "\n").encode())
        for rec in chroma.records(database, coll["id"]):
            digest.add(rec["id"], rec["embedding"], rec["metadata"], rec["document"])
            line = {"type": "record", "database": database, "collection": coll["name"], **rec}
            out.write((json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n").encode())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return {"count": digest.count, "digest": digest.hexdigest(), "dimension": coll.get("dimension"),
            "metadata": coll.get("metadata"), "file": os.path.basename(path), "file_bytes": _size_of(path)}


def lines_of_dir_tar(stream: IO[bytes], files: Iterable[str]) -> Iterator[bytes]:
    """The JSONL lines of a ``restic dump`` tar of an export directory, in the order of
    ``files`` (the manifest's): one stream, as :func:`restore` and :func:`compare_embeddings`
    read it. Files the manifest does not name are skipped."""
    wanted = set(files)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = os.path.basename(member.name)
            if not member.isfile() or name not in wanted:
                continue
            body = tar.extractfile(member)
            assert body is not None
            with contextlib.closing(body):
                yield from body


def observe(chroma: Chroma, names: list[str]) -> dict[str, dict[str, Any]]:
    """Count and digest of the named collections (``database/name``) as stored now."""
    observed = {}
    for full in names:
        database, name = full.split("/", 1)
        coll = chroma.collection(database, name)
        if coll is None:
            continue
        digest = CollectionDigest()
        for rec in chroma.records(database, coll["id"]):
            digest.add(rec["id"], rec["embedding"], rec["metadata"], rec["document"])
        observed[full] = {"count": digest.count, "digest": digest.hexdigest()}
    return observed


def compare_embeddings(chroma: Chroma, stream: IO[bytes]) -> dict[str, dict[str, Any]]:
    """Every record's embedding in the snapshot's stream against the stored one.

    Both sides are read in order (a restore inserts in the stream's order, and
    Chroma returns records in insertion order), so memory stays flat; records
    met out of order wait in a small dict."""
    result: dict[str, dict[str, Any]] = {}
    stored: Iterator[dict[str, Any]] = iter(())
    waiting: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for raw in stream:
        line = json.loads(raw)
        if line["type"] == "collection":
            full = key(line["database"], line["name"])
            coll = chroma.collection(line["database"], line["name"])
            stored = iter(()) if coll is None else chroma.records(line["database"], coll["id"])
            waiting = {}
            current = result[full] = {"compared": 0, "missing": 0, "max_difference": 0.0, "over_tolerance": 0}
        elif line["type"] == "record" and current is not None:
            found = waiting.pop(line["id"], None)
            while found is None:
                nxt = next(stored, None)
                if nxt is None:
                    break
                if nxt["id"] == line["id"]:
                    found = nxt
                else:
                    waiting[nxt["id"]] = nxt
            if found is None:
                current["missing"] += 1
                continue
            diff = embedding_difference(line["embedding"], found["embedding"])
            current["compared"] += 1
            current["max_difference"] = max(current["max_difference"], diff)
            if diff > EMBEDDING_TOLERANCE:
                current["over_tolerance"] += 1
    return result


def non_empty(chroma: Chroma, names: list[str]) -> dict[str, int]:
    found = {}
    for full in names:
        database, name = full.split("/", 1)
        if database not in chroma.databases():
            continue
        coll = chroma.collection(database, name)
        if coll is not None:
            count = chroma.count(database, coll["id"])
            if count:
                found[full] = count
    return found


def restore(chroma: Chroma, stream: IO[bytes], *, force: bool, aside_suffix: str) -> dict[str, Any]:
    """Recreate every collection of the stream. An existing non-empty collection
    is refused, or with ``force`` renamed to ``<name><aside_suffix>`` (kept, not deleted)."""
    batch_size = min(chroma.max_batch(), 1000)
    result: dict[str, Any] = {"collections": {}, "set_aside": []}
    current: dict[str, Any] | None = None
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if batch and current is not None:
            chroma.upsert(current["database"], current["id"], batch)
            result["collections"][key(current["database"], current["name"])] += len(batch)
            batch.clear()

    for raw in stream:
        line = json.loads(raw)
        if line["type"] == "collection":
            flush()
            database, name = line["database"], line["name"]
            chroma.ensure_database(database)
            existing = chroma.collection(database, name)
            if existing is not None:
                count = chroma.count(database, existing["id"])
                if count and not force:
                    raise ChromaError(f"collection {name} already holds {count} vectors (use --force)")
                if count:
                    aside = f"{name}{aside_suffix}"
                    chroma.rename_collection(database, existing["id"], aside)
                    result["set_aside"].append(key(database, aside))
                else:  # empty (e.g. made by the app at start): nothing to keep
                    chroma.delete_collection(database, name)
            created = chroma.create_collection(database, name, line.get("metadata"), line.get("configuration"))
            current = {"database": database, "name": name, "id": created["id"]}
            result["collections"][key(database, name)] = 0
        elif line["type"] == "export":
            continue
        elif line["type"] == "record":
            if current is None or line["collection"] != current["name"]:
                raise ChromaError("vectors stream: a record before its collection line")
            batch.append(line)
            if len(batch) >= batch_size:
                flush()
    flush()
    return result
