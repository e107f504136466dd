"""OpenAI-compatible embeddings: POST {url}/v1/embeddings {"model", "input": [...]}."""

from __future__ import annotations

import time

import httpx
import numpy as np

from . import EmbeddingError


def embeddings_endpoint(url: str) -> str:
    """Accept a base URL (https://api.openai.com), a /v1 base or the full /v1/embeddings URL."""
    u = url.rstrip("/")
    if u.endswith("/embeddings"):
        return u
    if u.endswith("/v1"):
        return u + "/embeddings"
    return u + "/v1/embeddings"


class OpenAICompatible:
    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        batch_size: int = 64,
        retries: int = 3,
    ) -> None:
        self.endpoint = embeddings_endpoint(url)
        self.model_name = model
        self.batch_size = batch_size
        self.retries = retries
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(timeout=timeout, headers=headers)
        self._dimension: int | None = None

    @property
    def dimension(self) -> int | None:
        return self._dimension

    def _post(self, batch: list[str]) -> list[list[float]]:
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                r = self._client.post(self.endpoint, json={"model": self.model_name, "input": batch})
                if r.status_code in (429, 500, 502, 503, 504):
                    raise EmbeddingError(f"embeddings API answered {r.status_code}")
                if r.status_code != 200:
                    raise EmbeddingError(
                        f"embeddings API answered {r.status_code}: {r.text[:200]}"
                    )  # not retried: a client error will not fix itself
                data = r.json()["data"]
                data = sorted(data, key=lambda d: d.get("index", 0))
                vectors = [d["embedding"] for d in data]
                if len(vectors) != len(batch):
                    raise EmbeddingError(f"embeddings API returned {len(vectors)} vectors for {len(batch)} inputs")
                return vectors
            except EmbeddingError as exc:
                if "answered 4" in str(exc) and "429" not in str(exc):
                    raise
                last = exc
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                last = EmbeddingError(f"embeddings API call failed: {exc!r}")
            time.sleep(min(0.5 * 2**attempt, 4.0))
        assert last is not None
        raise last

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dimension or 0), dtype=np.float32)
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            # Some servers reject empty strings; embed a single space instead.
            batch = [t if t.strip() else " " for t in texts[start : start + self.batch_size]]
            rows.extend(self._post(batch))
        arr = np.asarray(rows, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] == 0:
            raise EmbeddingError("embeddings API returned malformed vectors")
        if self._dimension is None:
            self._dimension = int(arr.shape[1])
        elif arr.shape[1] != self._dimension:
            raise EmbeddingError(f"embeddings API changed dimension {self._dimension} -> {arr.shape[1]}")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        return arr / np.clip(norms, 1e-12, None)
