"""The openai-compatible provider against a real HTTP server standing in for /v1/embeddings."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from govstack_app.embeddings import EmbeddingError
from govstack_app.embeddings.remote import OpenAICompatible, embeddings_endpoint


class StandIn:
    """Answers like OpenAI's /v1/embeddings; can be told to fail first."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_next: list[int] = []
        self.dim = 8
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, **body})
                outer.headers.append(dict(self.headers))
                if outer.fail_next:
                    code = outer.fail_next.pop(0)
                    self.send_response(code)
                    self.end_headers()
                    self.wfile.write(b'{"error": "nope"}')
                    return
                data = []
                for i, text in enumerate(body["input"]):
                    vec = [float(len(text) + j) for j in range(outer.dim)]
                    data.append({"object": "embedding", "index": i, "embedding": vec})
                payload = json.dumps({"object": "list", "data": data[::-1], "model": body["model"]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def standin() -> Iterator[StandIn]:
    s = StandIn()
    t = threading.Thread(target=s.server.serve_forever, daemon=True)
    t.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://api.openai.com", "https://api.openai.com/v1/embeddings"),
        ("http://llm:8080/v1/", "http://llm:8080/v1/embeddings"),
        ("http://llm:8080/v1/embeddings", "http://llm:8080/v1/embeddings"),
    ],
)
def test_endpoint(url: str, endpoint: str) -> None:
    assert embeddings_endpoint(url) == endpoint


def test_batches_order_auth_and_normalization(standin: StandIn) -> None:
    emb = OpenAICompatible(standin.url, "text-embedding-3-small", "sk-test", batch_size=2)
    texts = ["a", "bbb", "", "dddd", "ee"]
    out = emb.embed(texts)
    assert out.shape == (5, 8) and emb.dimension == 8
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0)
    # order restored from "index" although the server answered reversed
    expected = np.array([[len(t or " ") + j for j in range(8)] for t in texts], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(out, expected)
    assert [len(r["input"]) for r in standin.requests] == [2, 2, 1]
    assert all(r["path"] == "/v1/embeddings" and r["model"] == "text-embedding-3-small" for r in standin.requests)
    assert standin.requests[1]["input"][0] == " "  # empty strings are sent as a space
    assert all(h["Authorization"] == "Bearer sk-test" for h in standin.headers)


def test_retries_transient_errors(standin: StandIn) -> None:
    standin.fail_next = [503, 429]
    out = OpenAICompatible(standin.url, "m", retries=3).embed(["x"])
    assert out.shape == (1, 8) and len(standin.requests) == 3


def test_client_errors_are_not_retried(standin: StandIn) -> None:
    standin.fail_next = [400]
    with pytest.raises(EmbeddingError, match="400"):
        OpenAICompatible(standin.url, "m", retries=3).embed(["x"])
    assert len(standin.requests) == 1


def test_gives_up_after_retries(standin: StandIn) -> None:
    standin.fail_next = [500, 500]
    with pytest.raises(EmbeddingError, match="500"):
        OpenAICompatible(standin.url, "m", retries=2).embed(["x"])


def test_unreachable_server() -> None:
    with pytest.raises(EmbeddingError, match="failed"):
        OpenAICompatible("http://127.0.0.1:9", "m", retries=1, timeout=1).embed(["x"])


def test_dimension_change_is_an_error(standin: StandIn) -> None:
    emb = OpenAICompatible(standin.url, "m")
    emb.embed(["x"])
    standin.dim = 4
    with pytest.raises(EmbeddingError, match="dimension"):
        emb.embed(["y"])
