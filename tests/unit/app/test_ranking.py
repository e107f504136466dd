from __future__ import annotations

import pytest
from govstack_app.ranking import RRF_K, rrf


def test_rrf_scores_and_order() -> None:
    fused = rrf([["a", "b", "c"], ["c", "a", "d"]])
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + 2))
    assert scores["c"] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    assert scores["d"] == pytest.approx(1 / (RRF_K + 3))
    assert [k for k, _ in fused] == ["a", "c", "b", "d"]


def test_rrf_single_list_keeps_order_and_ties_are_stable() -> None:
    assert [k for k, _ in rrf([["x", "y", "z"]])] == ["x", "y", "z"]
    fused = rrf([["p", "q"], ["q", "p"]])  # p and q tie: the first list decides
    assert [k for k, _ in fused] == ["p", "q"]
    assert fused[0][1] == fused[1][1]


def test_rrf_empty_and_duplicates() -> None:
    assert rrf([]) == [] and rrf([[], []]) == []
    assert dict(rrf([["a", "a", "b"]]))["a"] == pytest.approx(1 / (RRF_K + 1))


def test_rrf_tuple_keys() -> None:
    fused = rrf([[(1, 0), (2, 3)], [(2, 3)]], k=1)
    assert fused[0] == ((2, 3), pytest.approx(1 / 3 + 1 / 2))
