"""Ingest throughput and search latency of a deployed stack, as ratios.

    .venv/bin/python bench/app_ingest_search.py [INVENTORY] [--docs N] [--queries M]

1. ingest: N generated text documents uploaded through nginx, timed until the
   worker has indexed all of them: documents/s and chunks/s;
2. search: M vector searches through nginx (TLS, auth, the app's embedding,
   Chroma, Postgres) against a direct Chroma query of the same vector (the
   embedding computed here with the app's own MiniLM), same run: p50/p95 and
   the ratio.
Prints; asserts nothing. Searches are paced under the edge's rate limit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import Stack  # noqa: E402
from tests.e2e.test_app_support import Api, wait_indexed  # noqa: E402

WORDS = ("archive land registry record county survey title deed boundary parcel owner transfer "
         "court judgment appeal ministry budget allocation health clinic school enrolment water").split()


def document(i: int, words: int = 400) -> bytes:
    text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words))
    return f"Document {i}\n\n{text}\n".encode()


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=20)
    return statistics.median(samples), cuts[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("inventory", nargs="?", default=str(REPO / "tests" / "inventories" / "test_local.py"))
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--queries", type=int, default=60)
    args = parser.parse_args()

    stack = Stack(args.inventory)
    api = Api(stack, stack.admin_api_key)
    collection = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        started = time.monotonic()
        ids = []
        for i in range(args.docs):
            response = api.upload(collection, f"doc-{i}.txt", document(i))
            assert response.status_code in (200, 201), response.text
            ids.append(int(response.json()["id"]))
        wait_indexed(stack, ids, timeout=1800)
        ingest_s = time.monotonic() - started
        id_list = ",".join(str(int(i)) for i in ids)
        (chunks,) = stack.psql(f"SELECT count(*) FROM chunks WHERE document_id IN ({id_list})")[0]  # noqa: S608
        print(f"ingest: {args.docs} documents, {chunks} chunks in {ingest_s:.1f} s = "
              f"{args.docs / ingest_s:.2f} documents/s, {int(chunks) / ingest_s:.1f} chunks/s")

        from govstack_app.embeddings.minilm import MiniLM

        model = MiniLM.from_installed_package()
        chroma = stack.chroma().get_collection(f"govstack_{collection}")
        queries = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5) % len(WORDS)]} records" for i in range(args.queries)]
        via_edge, direct = [], []
        for query in queries:
            t0 = time.monotonic()
            response = api.call("POST", "/api/v1/search",
                                json={"query": query, "collection": collection, "k": 5, "mode": "vector"})
            assert response.status_code == 200, response.text
            via_edge.append(time.monotonic() - t0)
            vector = model.embed([query])[0]
            t0 = time.monotonic()
            chroma.query(query_embeddings=[list(map(float, vector))], n_results=5)
            direct.append(time.monotonic() - t0)
            time.sleep(0.15)  # under the edge's api rate limit
        edge_p50, edge_p95 = percentiles(via_edge)
        direct_p50, direct_p95 = percentiles(direct)
        print(f"search through nginx: p50 {edge_p50 * 1000:.1f} ms, p95 {edge_p95 * 1000:.1f} ms")
        print(f"direct Chroma query:  p50 {direct_p50 * 1000:.1f} ms, p95 {direct_p95 * 1000:.1f} ms")
        print(f"ratio (nginx / direct): p50 {edge_p50 / direct_p50:.1f} x, p95 {edge_p95 / direct_p95:.1f} x")
    finally:
        stack.close()


if __name__ == "__main__":
    main()
