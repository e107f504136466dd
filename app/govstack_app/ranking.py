"""Reciprocal rank fusion."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
RRF_K = 60


def rrf(ranked_lists: Sequence[Sequence[K]], k: int = RRF_K) -> list[tuple[K, float]]:
    """Fuse ranked lists (best first): score(d) = sum over lists of 1 / (k + rank), rank from 1.
    Ties keep the order of first appearance (earlier list, better rank)."""
    scores: dict[K, float] = {}
    first_seen: dict[K, tuple[int, int]] = {}
    for li, items in enumerate(ranked_lists):
        seen_here: set[K] = set()
        for rank, key in enumerate(items, start=1):
            if key in seen_here:  # a list counts each key once, at its best rank
                continue
            seen_here.add(key)
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
            first_seen.setdefault(key, (rank, li))
    return sorted(scores.items(), key=lambda kv: (-kv[1], first_seen[kv[0]]))
