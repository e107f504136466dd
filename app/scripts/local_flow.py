"""Prove the whole flow against running services, through HTTP.

  upload one document of each type -> worker indexes -> vector/keyword/hybrid search finds each
  -> presigned download has the same sha256 -> delete -> gone from Postgres, object store, Chroma
  + bad inputs (415, 413 over-size, 413 zip bomb, 422 empty, 401, 403) leave nothing behind.

Run with the same GOVSTACK_* environment as the app (for the direct store checks), e.g.
  eval "$(app/scripts/dev-services.sh env)"
  python app/scripts/local_flow.py --base-url http://127.0.0.1:58100
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import uuid

import httpx
from govstack_app import samples
from govstack_app.chroma import ChromaClient
from govstack_app.settings import Settings
from govstack_app.storage import ObjectStore


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--verify", default=None, help="CA bundle for https")
    ap.add_argument("--timeout", type=float, default=180.0)
    args = ap.parse_args()
    settings = Settings()
    admin = settings.admin_api_key()
    http = httpx.Client(base_url=args.base_url, verify=args.verify or True, timeout=60)
    store, chroma = ObjectStore(settings), ChromaClient(settings.chroma_host, settings.chroma_port)
    run = uuid.uuid4().hex[:8]
    coll = f"flow-{run}"

    def key(role: str) -> str:
        r = http.post("/api/v1/keys", json={"name": f"flow-{role}-{run}", "role": role}, headers={"X-API-Key": admin})
        assert r.status_code == 201, r.text
        return r.json()["api_key"]

    writer, reader = {"X-API-Key": key("writer")}, {"X-API-Key": key("reader")}
    docs: dict[str, dict] = {}
    t0 = time.monotonic()
    for kind in samples.TOPICS:
        name, data = samples.topic_document(kind, salt=run)
        r = http.post(f"/api/v1/collections/{coll}/documents", files={"file": (name, data)}, headers=writer)
        assert r.status_code == 201, (kind, r.status_code, r.text)
        doc = r.json()
        assert doc["sha256"] == hashlib.sha256(data).hexdigest()
        docs[kind] = doc | {"bytes": data}
        again = http.post(f"/api/v1/collections/{coll}/documents", files={"file": ("other-name", data)}, headers=writer)
        assert again.status_code == 200 and again.json()["id"] == doc["id"], again.text
        print(f"uploaded {kind:5} id={doc['id']} type={doc['content_type']}")
    deadline = time.monotonic() + args.timeout
    while True:
        states = {
            k: http.get(f"/api/v1/collections/{coll}/documents/{d['id']}", headers=reader).json()
            for k, d in docs.items()
        }
        if all(s["is_indexed"] for s in states.values()):
            break
        failed = {k: s["index_error"] for k, s in states.items() if s["index_status"] == "failed"}
        assert not failed, failed
        assert time.monotonic() < deadline, states
        time.sleep(1)
    print(
        f"indexed all in {time.monotonic() - t0:.1f}s: "
        + ", ".join(f"{k}={s['chunk_count']} chunks" for k, s in states.items())
    )

    for kind, (_, _, question, keywords) in samples.TOPICS.items():
        for mode, q in (("vector", question), ("keyword", keywords), ("hybrid", question + " " + keywords)):
            r = http.post("/api/v1/search", json={"query": q, "collection": coll, "k": 3, "mode": mode}, headers=reader)
            assert r.status_code == 200, r.text
            res = r.json()["results"]
            assert res and res[0]["document_id"] == docs[kind]["id"], (kind, mode, res)
        print(f"search {kind:5} vector/keyword/hybrid -> top hit is {res[0]['filename']}")

    for d in docs.values():
        r = http.get(f"/api/v1/collections/{coll}/documents/{d['id']}/download", headers=reader)
        assert r.status_code == 200, r.text
        body = httpx.get(r.json()["url"], verify=args.verify or True, timeout=30)
        assert body.status_code == 200, (body.status_code, body.text[:300])
        assert hashlib.sha256(body.content).hexdigest() == d["sha256"]
    print("presigned downloads match sha256")

    lst = http.get(f"/api/v1/collections/{coll}/documents?limit=2", headers=reader).json()
    assert lst["total"] == 5 and len(lst["items"]) == 2 and lst["stats"]["indexed_documents"] == 5, lst
    assert http.delete(f"/api/v1/collections/{coll}/documents/{docs['txt']['id']}", headers=reader).status_code == 403
    assert http.get(f"/api/v1/collections/{coll}/documents", headers={"X-API-Key": "nope"}).status_code == 401
    assert http.get(f"/api/v1/collections/{coll}/documents").status_code == 401

    chroma_name = f"govstack_{coll}"
    for d in docs.values():
        obj = store.client.stat_object(store.bucket, _object_name(settings, d["id"]))  # exists before
        assert obj.metadata.get("x-amz-meta-sha256") == d["sha256"], obj.metadata
        r = http.delete(f"/api/v1/collections/{coll}/documents/{d['id']}", headers=writer)
        assert r.status_code == 204, r.text
        assert http.get(f"/api/v1/collections/{coll}/documents/{d['id']}", headers=reader).status_code == 404
        assert not store.exists(obj.object_name)
        assert chroma.get(chroma_name, where={"document_id": d["id"]})["ids"] == []
    print("deleted: gone from postgres, object store and chroma")

    before = sum(1 for _ in store.iter_objects())
    bad = {
        "png": (samples.make_png(), 415),
        "zip": (samples.make_plain_zip(), 415),
        "empty": (b"", 422),
        "bomb": (samples.make_docx_bomb(settings.max_unpacked_bytes + (1 << 20)), 413),
        "oversize": (b"a" * (settings.max_upload_bytes + 1), 413),
    }
    for name, (data, want) in bad.items():
        r = http.post(f"/api/v1/collections/{coll}/documents", files={"file": (f"{name}.docx", data)}, headers=writer)
        assert r.status_code == want, (name, r.status_code, r.text[:200])
    after = sum(1 for _ in store.iter_objects())
    assert after == before, (before, after)
    lst = http.get(f"/api/v1/collections/{coll}/documents", headers=reader).json()
    assert lst["total"] == 0, lst
    print("bad inputs: 415/415/422/413/413, nothing stored")
    print("FLOW OK")
    return 0


def _object_name(settings: Settings, doc_id: int) -> str:
    import psycopg

    with psycopg.connect(settings.conninfo()) as conn:
        row = conn.execute("SELECT object_name FROM documents WHERE id = %s", (doc_id,)).fetchone()
    assert row, doc_id
    return row[0]


if __name__ == "__main__":
    sys.exit(main())
