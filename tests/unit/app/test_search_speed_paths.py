"""Search's fast paths without services: the query-embedding LRU (keyed by model) and the
per-request Server-Timing record that sync routes fill from the thread pool."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from govstack_app import metrics, timing
from govstack_app.embeddings.minilm_onnx import MiniLMOnnx
from govstack_app.embeddings.query_cache import DEFAULT_SIZE, QueryEmbeddingCache
from govstack_app.middleware import RequestContextMiddleware


class Recording:
    """The real ONNX embedder, recording what it was asked (and able to claim another model)."""

    def __init__(self, model: MiniLMOnnx, model_name: str | None = None) -> None:
        self.model = model
        self.model_name = model_name or model.model_name
        self.dimension = model.dimension
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.model.embed(texts)


@pytest.fixture(scope="module")
def onnx_model() -> MiniLMOnnx:
    return MiniLMOnnx.from_installed_package(verify=False, threads=1)


def test_a_repeated_query_is_embedded_once(onnx_model: MiniLMOnnx) -> None:
    embedder = Recording(onnx_model)
    cache = QueryEmbeddingCache(embedder)
    hits_before = metrics.QUERY_EMBEDDING_CACHE.labels("hit")._value.get()
    first, cached_first = cache.embed_query("renew a passport")
    second, cached_second = cache.embed_query("renew a passport")
    assert (cached_first, cached_second) == (False, True)
    assert embedder.calls == [["renew a passport"]]
    assert np.array_equal(first, second) and np.array_equal(first, onnx_model.embed(["renew a passport"])[0])
    assert metrics.QUERY_EMBEDDING_CACHE.labels("hit")._value.get() == hits_before + 1
    with pytest.raises(ValueError, match="read-only"):
        second[0] = 1.0  # a caller cannot corrupt the cached vector


def test_the_key_includes_the_model(onnx_model: MiniLMOnnx) -> None:
    embedder = Recording(onnx_model, model_name="model-a")
    cache = QueryEmbeddingCache(embedder)
    cache.embed_query("birth registration")
    embedder.model_name = "model-b"  # the same text under another model is another entry
    _, cached = cache.embed_query("birth registration")
    assert not cached and len(embedder.calls) == 2 and len(cache) == 2


def test_the_least_recently_used_query_is_evicted_at_the_bound(onnx_model: MiniLMOnnx) -> None:
    embedder = Recording(onnx_model)
    cache = QueryEmbeddingCache(embedder, maxsize=2)
    cache.embed_query("a")
    cache.embed_query("b")
    cache.embed_query("a")  # a is now the most recent
    cache.embed_query("c")  # evicts b
    assert len(cache) == 2
    assert cache.embed_query("a")[1] is True
    assert cache.embed_query("b")[1] is False
    assert DEFAULT_SIZE == 1024
    with pytest.raises(ValueError):
        QueryEmbeddingCache(embedder, maxsize=0)


def test_timed_outside_a_request_records_nothing() -> None:
    with timing.timed("postgres"):
        pass
    timing.note("cache", "hit")  # no record, no error


def test_header_value_lists_durations_in_milliseconds_and_notes() -> None:
    value = timing.header_value({"postgres": 0.0021, "cache": "miss"}, 0.0105)
    assert value == 'postgres;dur=2.1, cache;desc="miss", app;dur=10.5'
    assert timing.log_fields({"postgres": 0.0021, "cache": "miss"}) == {"postgres_ms": 2.1, "cache": "miss"}


def test_a_sync_route_in_the_thread_pool_fills_the_request_record() -> None:
    app = FastAPI()

    @app.get("/work")
    def work() -> dict[str, str]:  # sync: FastAPI runs it in its thread pool
        with timing.timed("postgres"):
            pass
        with timing.timed("postgres"):
            pass
        timing.note("cache", "hit")
        return {"ok": "yes"}

    client = TestClient(RequestContextMiddleware(app, max_body=1000))
    header = client.get("/work").headers["server-timing"]
    names = [part.split(";")[0] for part in header.split(", ")]
    assert names == ["postgres", "cache", "app"]  # the two postgres blocks add up to one entry
    assert 'cache;desc="hit"' in header
    # every request starts a fresh record
    assert client.get("/missing").headers["server-timing"].startswith("app;dur=")
