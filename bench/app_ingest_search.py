"""Embedding, ingest and search speed, as ratios against baselines measured in the same run.

    .venv/bin/python bench/app_ingest_search.py [INVENTORY] [--docs N] [--queries M]
        [--skip-embeddings] [--skip-ingest] [--skip-search]

1. embeddings, in this machine's processes (no stack): the numpy backend against ONNX Runtime
   over the bench's chunks, each in a child process with one thread (the worker's 1.0-CPU
   quota): chunks/s, chunks per CPU-second (what a CPU quota buys, robust to a busy host) and
   peak RSS; ONNX Runtime at several batch sizes (how BATCH_SIZE was chosen) and two threads.
2. ingest on the deployed stack, once per backend: the serving worker is stopped, N documents
   are uploaded (not timed: the edge allows 1 upload/s per client, so an upload-paced run
   measures nginx's limit, 4.5 chunks/s for any backend), then a one-off worker of the same
   Compose service (same image, limits, networks) with GOVSTACK_EMBEDDING_BACKEND set indexes
   them: chunks/s from its start-up log line to the last document indexed, and its peak RSS.
3. search through nginx against a direct Chroma query of the same vector (the forwarder's
   hop included), p50/p95, and where the milliseconds go: the app's Server-Timing header
   (embed, chroma, postgres, app total) and the rest (TLS, nginx, network) from client totals.
   First each query once (embedding cache misses), then the same queries again (hits).
Prints; asserts nothing. Searches are paced under the edge's rate limit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "app"))

WORDS = ("archive land registry record county survey title deed boundary parcel owner transfer "
         "court judgment appeal ministry budget allocation health clinic school enrolment water").split()
ORT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def document(i: int, sentences: int = 120) -> bytes:
    """Registry-style prose with numbers, dates and punctuation: ~200 tokens per 1000-character
    chunk, as in real documents (plain word lists tokenize to ~140)."""
    lines = []
    for j in range(sentences):
        w = [WORDS[(i * 7 + j * 3 + k * 5) % len(WORDS)] for k in range(6)]
        lines.append(f"The {w[0]} {w[1]} of {2000 + (i + j) % 25} ({w[2]}, {w[3]}) names the {w[4]} "
                     f"and the {w[5]} office; a fee of {((i + 3) * (j + 7)) % 997} was paid.")
    paragraphs = [" ".join(lines[s:s + 5]) for s in range(0, len(lines), 5)]
    return (f"Document {i}\n\n" + "\n\n".join(paragraphs) + "\n").encode()


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=20)
    return statistics.median(samples), cuts[-1]


def bench_chunks(docs: int = 4) -> list[str]:
    from govstack_app.chunking import chunk_document
    from govstack_app.extract import TEXT_PLAIN, ExtractionLimits, extract
    from govstack_app.settings import Settings

    # The app's default caps (its settings' defaults, without the environment a container has).
    limits = ExtractionLimits.from_settings(Settings.model_construct())
    chunks = []
    for i in range(docs):
        blocks = extract(document(i), TEXT_PLAIN, limits)
        chunks += [c.text for c in chunk_document(blocks, TEXT_PLAIN)]
    return chunks


# -- 1. embeddings in child processes ----------------------------------------------------------
def embed_child(backend: str, batch_size: int, threads: int) -> None:
    """Runs in a child: embeds the bench chunks, prints one JSON line."""
    if backend == "numpy":
        from govstack_app.embeddings.minilm import MiniLM

        model = MiniLM.from_installed_package(batch_size=batch_size)
    else:
        from govstack_app.embeddings.minilm_onnx import MiniLMOnnx

        model = MiniLMOnnx.from_installed_package(batch_size=batch_size, threads=threads)
    chunks = bench_chunks()
    model.embed(chunks[:batch_size])  # warm-up: first-run allocations
    best_wall = best_cpu = float("inf")
    for _ in range(3):  # the best of three: other processes share this host
        wall, cpu = time.perf_counter(), time.process_time()
        model.embed(chunks)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    print(json.dumps({
        "chunks": len(chunks),
        "chunks_per_s": len(chunks) / best_wall,
        "chunks_per_cpu_s": len(chunks) / best_cpu,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def run_embed_child(backend: str, batch_size: int, threads: int) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, __file__, "--embed-child", backend, str(batch_size), str(threads)],
        capture_output=True, text=True, env=env, check=True, timeout=900,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_embeddings() -> None:
    from govstack_app.embeddings.minilm_onnx import BATCH_SIZE

    print("== embeddings in-process (bench chunks, one thread; best of 3) ==")
    def line(label: str, r: dict) -> str:
        return (f"{label}: {r['chunks_per_s']:6.1f} chunks/s, {r['chunks_per_cpu_s']:6.1f} chunks/CPU-s,"
                f" peak RSS {r['max_rss_mb']:.0f} MB")

    numpy = run_embed_child("numpy", 16, 1)
    print(line("numpy batch 16", numpy) + f" ({numpy['chunks']} chunks)")
    results = {}
    for batch in ORT_BATCH_SIZES:
        r = results[batch] = run_embed_child("onnx", batch, 1)
        ratio = r["chunks_per_cpu_s"] / numpy["chunks_per_cpu_s"]
        print(line(f"onnx  batch {batch:2d}", r) + f" = {ratio:.1f} x numpy")
    print(line(f"onnx  batch {BATCH_SIZE:2d}, 2 threads", run_embed_child("onnx", BATCH_SIZE, 2)))
    best = max(results, key=lambda b: results[b]["chunks_per_cpu_s"])
    print(f"best batch size per CPU-second: {best} (the backend uses BATCH_SIZE = {BATCH_SIZE})")
    print(f"ratio onnx/numpy at BATCH_SIZE: {results[BATCH_SIZE]['chunks_per_cpu_s'] / numpy['chunks_per_cpu_s']:.1f} x"
          f" per CPU-second, RSS {results[BATCH_SIZE]['max_rss_mb'] / numpy['max_rss_mb']:.2f} x")


# -- 2. ingest through a one-off worker per backend ---------------------------------------------
def wait_all_indexed(stack, ids: list[int], timeout: float) -> None:
    id_list = ",".join(str(int(i)) for i in ids)
    deadline = time.monotonic() + timeout
    while True:
        ((pending, failed),) = stack.psql(
            f"SELECT count(*) FILTER (WHERE NOT is_indexed AND NOT index_failed),"  # noqa: S608
            f" count(*) FILTER (WHERE index_failed) FROM documents WHERE id IN ({id_list})"
        )
        if int(failed):
            raise RuntimeError(f"{failed} documents failed to index")
        if int(pending) == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pending} documents not indexed after {timeout} s")
        time.sleep(0.25)


def peak_rss_mb(container: str) -> float:
    """The largest peak RSS of the container's processes (PID 1 is the init shim, not the worker)."""
    status = subprocess.run(["docker", "exec", container, "sh", "-c", "cat /proc/[0-9]*/status 2>/dev/null"],
                            capture_output=True, text=True, check=False).stdout
    peaks = [int(kb) for kb in re.findall(r"VmHWM:\s+(\d+) kB", status)]
    if not peaks:
        raise RuntimeError(f"no process status readable in {container}")
    return max(peaks) / 1024


def ingest_with(stack, api, backend: str, docs: int) -> dict:
    collection = f"bench-{backend}-{uuid.uuid4().hex[:6]}"
    ids = []
    for i in range(docs):
        response = api.upload(collection, f"doc-{i}.txt", document(i))
        assert response.status_code in (200, 201), response.text
        ids.append(int(response.json()["id"]))
    name = f"{stack.app_project}-bench-{backend}"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    stack.compose(stack.app_project, "run", "-d", "--no-deps", "--name", name,
                  "-e", f"GOVSTACK_EMBEDDING_BACKEND={backend}", "worker")
    try:
        deadline = time.monotonic() + 300
        while "worker started" not in subprocess.run(["docker", "logs", name], capture_output=True,
                                                     text=True).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.1)
        started = time.monotonic()
        wait_all_indexed(stack, ids, timeout=1800)
        seconds = time.monotonic() - started
        rss = peak_rss_mb(name)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    id_list = ",".join(map(str, ids))
    ((chunks,),) = stack.psql(f"SELECT count(*) FROM chunks WHERE document_id IN ({id_list})")  # noqa: S608
    return {"collection": collection, "chunks": int(chunks), "seconds": seconds, "rss_mb": rss}


def bench_ingest(stack, api, docs: int) -> str:
    print(f"== ingest: {docs} documents per backend, one-off worker of the deployed service ==")
    stack.compose(stack.app_project, "stop", "worker")
    try:
        results = {backend: ingest_with(stack, api, backend, docs) for backend in ("numpy", "onnx")}
    finally:
        stack.compose(stack.app_project, "start", "worker")
    for backend, r in results.items():
        print(f"{backend:5s}: {r['chunks']} chunks in {r['seconds']:.1f} s = {r['chunks'] / r['seconds']:.1f} chunks/s,"
              f" worker peak RSS {r['rss_mb']:.0f} MB")
    n, o = results["numpy"], results["onnx"]
    print(f"ratio onnx/numpy: {(o['chunks'] / o['seconds']) / (n['chunks'] / n['seconds']):.1f} x chunks/s,"
          f" {o['rss_mb'] / n['rss_mb']:.2f} x RSS")
    return o["collection"]


# -- 3. search --------------------------------------------------------------------------------
def server_timing(header: str) -> dict[str, float]:
    """`embed;dur=1.2, chroma;dur=3.4` -> {"embed": 1.2, "chroma": 3.4} (milliseconds)."""
    out = {}
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        match = re.search(r"dur=([0-9.]+)", params)
        if name and match:
            out[name] = float(match.group(1))
    return out


def bench_search(stack, api, collection: str, queries: int) -> None:
    from govstack_app.embeddings.minilm_onnx import MiniLMOnnx

    from tests.e2e.test_search_paths import connections

    print(f"== search: {queries} distinct queries, then the same again; collection {collection} ==")
    model = MiniLMOnnx.from_installed_package(threads=1)
    chroma = stack.chroma().get_collection(f"govstack_{collection}")
    texts = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5 + i // len(WORDS)) % len(WORDS)]} records {i}"
             for i in range(queries)]
    rows: dict[str, list[dict[str, float]]] = {"first": [], "repeat": []}
    direct, embed_here = [], []
    ports = {"postgres": stack.plan.ports["postgres"], "chroma": stack.plan.ports["chroma"]}
    api.call("POST", "/api/v1/search", json={"query": "warm-up", "collection": collection, "k": 5, "mode": "vector"})
    sockets_before = {name: connections(stack, port) for name, port in ports.items()}
    for phase in ("first", "repeat"):
        for query in texts:
            t0 = time.perf_counter()
            response = api.call("POST", "/api/v1/search",
                                json={"query": query, "collection": collection, "k": 5, "mode": "vector"})
            total = (time.perf_counter() - t0) * 1000
            assert response.status_code == 200, response.text
            timing = server_timing(response.headers.get("Server-Timing", ""))
            rows[phase].append({"client": total, **timing})
            if phase == "first":
                t0 = time.perf_counter()
                vector = model.embed([query])[0]
                embed_here.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                chroma.query(query_embeddings=[list(map(float, vector))], n_results=5)
                direct.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.15)  # under the edge's api rate limit
    opened = {name: len(connections(stack, port) - sockets_before[name]) for name, port in ports.items()}
    print(f"connections the API opened during {2 * queries} searches: postgres {opened['postgres']},"
          f" chroma {opened['chroma']} (pooled; one per search would be {2 * queries})")
    d50, d95 = percentiles(direct)
    e50, e95 = percentiles(embed_here)
    print(f"direct Chroma query (via the test forwarder): p50 {d50:.1f} ms, p95 {d95:.1f} ms")
    print(f"query embedding in this process (ONNX, 1 thread): p50 {e50:.1f} ms, p95 {e95:.1f} ms")
    for phase, label in (("first", "cache misses"), ("repeat", "cache hits")):
        samples = rows[phase]
        parts = ["client", "app", "embed", "chroma", "postgres"]
        line = []
        for part in parts:
            values = [s[part] for s in samples if part in s]
            if values:
                p50, p95 = percentiles(values)
                line.append(f"{part} {p50:.1f}/{p95:.1f}")
        rest = [s["client"] - s["app"] for s in samples if "app" in s]
        if rest:
            p50, p95 = percentiles(rest)
            line.append(f"edge+network {p50:.1f}/{p95:.1f}")
        print(f"through nginx, {label} (p50/p95 ms): " + ", ".join(line))
    c50, c95 = percentiles([s["client"] for s in rows["first"]])
    target = d95 + e95 + 15
    print(f"ratio (nginx / direct): p50 {c50 / d50:.1f} x, p95 {c95 / d95:.1f} x;"
          f" target p95 <= direct p95 + embedding p95 + 15 ms = {target:.1f} ms: p95 {c95:.1f} ms"
          f" ({'met' if c95 <= target else 'not met'})")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--embed-child":
        embed_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("inventory", nargs="?", default=str(REPO / "tests" / "inventories" / "test_local.py"))
    parser.add_argument("--docs", type=int, default=12)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--skip-embeddings", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()

    if not args.skip_embeddings:
        bench_embeddings()
    if args.skip_ingest and args.skip_search:
        return
    from tests.conftest import Stack
    from tests.e2e.test_app_support import Api

    stack = Stack(args.inventory)
    api = Api(stack, stack.admin_api_key)
    try:
        collection = None
        if not args.skip_ingest:
            collection = bench_ingest(stack, api, args.docs)
        if not args.skip_search:
            if collection is None:
                collection = f"bench-search-{uuid.uuid4().hex[:6]}"
                ids = [int(api.upload(collection, f"doc-{i}.txt", document(i)).json()["id"]) for i in range(4)]
                wait_all_indexed(stack, ids, timeout=600)
            bench_search(stack, api, collection, args.queries)
    finally:
        stack.close()


if __name__ == "__main__":
    main()
