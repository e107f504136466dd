"""Query vectors, embedded once: a bounded LRU in front of the embedder for search queries.

Keyed by (model, exact query text): a cache can never answer with another model's vector,
whatever the embedder is switched to. 1024 entries: a vector is 1.5 KB and a query at most 2000
characters (SearchRequest), so the cache holds at most ~5 MB; repeated queries (the head of a
portal's search traffic, a client retrying, pagination re-asking) skip the model, which costs
milliseconds of CPU each on the API's 1.5-CPU quota.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from .. import metrics
from . import Embedder

DEFAULT_SIZE = 1024


class QueryEmbeddingCache:
    def __init__(self, embedder: Embedder, maxsize: int = DEFAULT_SIZE) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.embedder = embedder
        self.maxsize = maxsize
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._vectors)

    def embed_query(self, text: str) -> tuple[np.ndarray, bool]:
        """The query's vector (read-only) and whether it came from the cache."""
        key = (self.embedder.model_name, text)
        with self._lock:
            vector = self._vectors.get(key)
            if vector is not None:
                self._vectors.move_to_end(key)
        if vector is not None:
            metrics.QUERY_EMBEDDING_CACHE.labels("hit").inc()
            return vector, True
        metrics.QUERY_EMBEDDING_CACHE.labels("miss").inc()
        # Embedded outside the lock: two threads missing the same text both compute it (same
        # vector), rather than every search waiting behind one embedding.
        vector = np.array(self.embedder.embed([text])[0], dtype=np.float32)
        vector.setflags(write=False)
        with self._lock:
            self._vectors[key] = vector
            self._vectors.move_to_end(key)
            while len(self._vectors) > self.maxsize:
                self._vectors.popitem(last=False)
        return vector, False
