"""The differential-privacy mechanism of every release, from OpenDP, and the contribution bound
that gives it its sensitivity.

Every release is a vector of integer counts. An actor's events are bounded per UTC day
(``bound_contributions``): at most ``cap`` of them count, so adding or removing one actor-day
changes the vector by at most ``cap`` in L1 norm. OpenDP's ``make_laplace`` on integer vectors
with the L1 metric adds discrete Laplace noise (exact sampling, no floating-point attack surface);
its scale is calibrated by OpenDP's own search for the epsilon of the settings, and the epsilon
charged to the ledger is the measurement's own privacy map at that sensitivity, never a number
computed here.

OpenDP gates ``make_laplace`` (like nearly every measurement it has) behind the ``contrib``
feature: its proof is written and published with the library but has not completed OpenDP's
vetting process. That is the only feature enabled: ``idealized-numerics`` (formerly
``floating-point``: mechanisms whose proof assumes ideal arithmetic) and ``honest-but-curious``
(constructors whose privacy depends on trusting their arguments) stay off, and a unit test keeps
it so.
"""

from __future__ import annotations

import math
import secrets
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any

import numpy as np
import opendp.prelude as dp

dp.enable_features("contrib")

OPENDP_VERSION = metadata.version("opendp")
MECHANISM = f"discrete Laplace: OpenDP {OPENDP_VERSION} make_laplace on integer vectors, L1 sensitivity"
_SPACE = (dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l1_distance(T=dp.i64))


@dataclass(frozen=True)
class CountMechanism:
    """One calibrated OpenDP measurement: integer counts in, noisy integer counts out."""

    epsilon: float  # what the settings asked for
    sensitivity: int  # L1: the contribution bound of one actor-day
    scale: float  # discrete Laplace scale, from OpenDP's calibration
    charged_epsilon: float  # the measurement's privacy map at `sensitivity` (<= epsilon)
    measurement: Any = field(repr=False, compare=False)

    def release(self, counts: list[int]) -> list[int]:
        if not counts:
            return []
        return [int(v) for v in self.measurement([int(c) for c in counts])]

    def error_bound(self, alpha: float) -> int:
        """Each released value is within this of its (bounded) true count with probability at
        least 1 - alpha (OpenDP's accuracy of the discrete Laplace; counts are integers)."""
        return math.floor(dp.discrete_laplacian_scale_to_accuracy(scale=self.scale, alpha=alpha))

    def describe(self, alpha: float) -> dict[str, Any]:
        return {
            "mechanism": MECHANISM,
            "epsilon": self.charged_epsilon,
            "sensitivity_l1": self.sensitivity,
            "scale": self.scale,
            "error_bound": {"alpha": alpha, "plus_minus": self.error_bound(alpha)},
        }


@lru_cache(maxsize=64)
def count_mechanism(epsilon: float, sensitivity: int) -> CountMechanism:
    """The discrete Laplace measurement with the smallest scale OpenDP proves ``epsilon``-DP for
    inputs that differ by ``sensitivity`` in L1."""
    if sensitivity < 1:
        raise ValueError("sensitivity must be at least 1")
    scale = dp.binary_search_param(
        lambda s: dp.m.make_laplace(*_SPACE, scale=s), d_in=sensitivity, d_out=epsilon
    )
    measurement = dp.m.make_laplace(*_SPACE, scale=scale)
    charged = float(measurement.map(d_in=sensitivity))
    if charged > epsilon * (1 + 1e-9):
        raise RuntimeError(f"OpenDP maps the calibrated scale {scale} to epsilon {charged} > {epsilon}")
    return CountMechanism(epsilon, sensitivity, float(scale), charged, measurement)


def bound_contributions(
    rows: Iterable[tuple[Hashable, Hashable, int]], cap: int, rng: np.random.Generator | None = None
) -> dict[Hashable, int]:
    """Cell counts with each actor-day's contribution bounded to ``cap`` events.

    ``rows`` are (actor-day, cell, events). An actor-day with more than ``cap`` events keeps a
    uniform random sample of ``cap`` of them (multivariate hypergeometric: without replacement,
    across its cells), so its whole influence on the cell counts is at most ``cap`` (L1).
    """
    if cap < 1:
        raise ValueError("cap must be at least 1")
    rng = rng or np.random.default_rng(secrets.randbits(128))
    per_actor_day: dict[Hashable, list[tuple[Hashable, int]]] = defaultdict(list)
    for actor_day, cell, events in rows:
        if events > 0:
            per_actor_day[actor_day].append((cell, int(events)))
    totals: dict[Hashable, int] = defaultdict(int)
    for cells in per_actor_day.values():
        counts = [n for _, n in cells]
        if sum(counts) > cap:
            counts = [int(n) for n in rng.multivariate_hypergeometric(counts, cap)]
        for (cell, _), n in zip(cells, counts, strict=True):
            if n:
                totals[cell] += n
    return dict(totals)
