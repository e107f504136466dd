"""Search: vector (Chroma), keyword (Postgres full-text) or hybrid (reciprocal rank fusion).
Only hits of committed, indexed documents are returned."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from .. import metrics, timing
from ..chroma import ChromaError
from ..embeddings import EmbeddingError
from ..ranking import rrf
from .backends import Services, db
from .collections import check_model, require_collection
from .errors import ModelMismatch, Unavailable


def _vector_hits(svc: Services, coll: dict[str, Any], query: str, n: int) -> list[dict[str, Any]]:
    start = time.perf_counter()
    try:
        with timing.timed("embed"):
            vec, cached = svc.queries.embed_query(query)
    except EmbeddingError as exc:
        raise Unavailable("embeddings", str(exc)) from exc
    timing.note("cache", "hit" if cached else "miss")
    if coll.get("embedding_dim") and len(vec) != coll["embedding_dim"]:
        raise ModelMismatch(
            f"query embedding has {len(vec)} dimensions but collection {coll['name']!r} holds "
            f"{coll['embedding_dim']}-dimensional vectors; rebuild the collection"
        )
    try:
        with timing.timed("chroma"):
            hits = svc.chroma.query(coll["chroma_name"], vec.tolist(), n)
    except ChromaError as exc:
        raise Unavailable("chroma", str(exc)) from exc
    finally:
        metrics.VECTOR_SEARCH_DURATION.observe(time.perf_counter() - start)
    out = []
    for h in hits:
        md = h.metadata
        if "document_id" not in md:
            continue
        out.append(
            {
                "document_id": int(md["document_id"]),
                "chunk_index": int(md.get("chunk_index", 0)),
                "text": h.document or "",
                "page": md.get("page"),
                "score": 1.0 - h.distance,
            }
        )
    return out


def _keyword_hits(conn: psycopg.Connection, coll: dict[str, Any], query: str, n: int) -> list[dict[str, Any]]:
    return conn.execute(
        """
        SELECT ch.document_id, ch.chunk_index, ch.content AS text, ch.page,
               ts_rank_cd(ch.tsv, q) AS score
          FROM chunks ch, websearch_to_tsquery('english', %s) AS q
         WHERE ch.collection_id = %s AND ch.tsv @@ q
         ORDER BY score DESC, ch.document_id, ch.chunk_index
         LIMIT %s
        """,
        (query, coll["id"], n),
    ).fetchall()


def search(svc: Services, collection: str, query: str, k: int, mode: str) -> dict[str, Any]:
    with db(svc.pool) as conn:
        coll = require_collection(conn, collection)
        conn.rollback()
    if mode in ("vector", "hybrid"):
        check_model(coll, svc.embedder.model_name)
    n_candidates = k if mode != "hybrid" else min(max(3 * k, 20), 200)
    vector: list[dict[str, Any]] = []
    keyword: list[dict[str, Any]] = []
    if mode in ("vector", "hybrid"):
        vector = _vector_hits(svc, coll, query, min(n_candidates + 10, 300))
    with db(svc.pool) as conn:
        if mode in ("keyword", "hybrid"):
            keyword = _keyword_hits(conn, coll, query, n_candidates)
        ids = sorted({h["document_id"] for h in vector} | {h["document_id"] for h in keyword})
        docs = (
            {
                r["id"]: r
                for r in conn.execute(
                    "SELECT id, filename FROM documents WHERE id = ANY(%s) AND collection_id = %s AND is_indexed",
                    (ids, coll["id"]),
                ).fetchall()
            }
            if ids
            else {}
        )
        conn.rollback()
    # vectors of deleted or not-yet-committed documents are ignored
    vector = [h for h in vector if h["document_id"] in docs][:n_candidates]
    keyword = [h for h in keyword if h["document_id"] in docs]

    def key(h: dict[str, Any]) -> tuple[int, int]:
        return (h["document_id"], h["chunk_index"])

    if mode == "vector":
        ranked = [(h, float(h["score"])) for h in vector[:k]]
    elif mode == "keyword":
        ranked = [(h, float(h["score"])) for h in keyword[:k]]
    else:
        by_key = {key(h): h for h in keyword}
        by_key.update({key(h): h for h in vector})
        fused = rrf([[key(h) for h in vector], [key(h) for h in keyword]])
        ranked = [(by_key[kk], score) for kk, score in fused[:k]]
    results = [
        {
            "document_id": h["document_id"],
            "filename": docs[h["document_id"]]["filename"],
            "chunk_index": h["chunk_index"],
            "score": score,
            "text": h["text"],
            "page": h.get("page"),
        }
        for h, score in ranked
    ]
    return {"collection": collection, "mode": mode, "k": k, "query": query, "results": results}
