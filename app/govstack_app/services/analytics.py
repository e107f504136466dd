"""The analytics service's use case, answering one question: the cache, the budget, the
release, the ledger, in one transaction under one lock.

    lock -> same question this period? -> the cached release, ledger "cached", epsilon 0
         -> budget has room?           -> no: ledger "refused", 429 with what is left
         -> read the window's rows, bound, noise once, suppress -> cache it, ledger "released"
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from typing import Any

from ..analytics.ledger import Budget, BudgetPolicy, OverBudget, ReleaseStore
from ..analytics.mechanisms import count_mechanism
from ..analytics.releases import (
    SPECS,
    bounded_counts,
    canonical_query,
    make_release,
    query_key,
    query_kinds,
    resolve_window,
    rows_sql,
)
from ..analytics.settings import AnalyticsSettings


@dataclass(frozen=True)
class Answer:
    release: dict[str, Any]  # as first released; identical for every later answer from the cache
    cached: bool
    budget: Budget

    def as_dict(self) -> dict[str, Any]:
        return {"release": self.release, "cached": self.cached, "budget": self.budget.as_dict()}


class ReleaseService:
    def __init__(self, settings: AnalyticsSettings, session: Callable[[], AbstractContextManager[ReleaseStore]]):
        self.s = settings
        self.session = session
        self.policy = BudgetPolicy(settings.analytics_consumer_epsilon_per_period,
                                   settings.analytics_total_epsilon_per_period, settings.analytics_budget_period)

    @property
    def mechanism_parameters(self) -> dict[str, Any]:
        """Everything besides the question that shapes an answer: a change makes a new release."""
        s = self.s
        return {"epsilon": s.analytics_epsilon_per_release, "cap": s.analytics_max_events_per_actor_day,
                "k": s.analytics_k_threshold, "alpha": s.analytics_accuracy_alpha}

    def budget(self, consumer: str) -> Budget:
        with self.session() as store:
            today = store.today()
            return self.policy.budget(consumer, today, *store.spent(consumer, self._period_start(today)))

    def _period_start(self, today: date) -> date:
        return self.policy.budget("", today, 0, 0).period_start

    def answer(
        self,
        consumer: str,
        release: str,
        *,
        start: date | None = None,
        end: date | None = None,
        collections: list[str] | None = None,
        request_id: str | None = None,
        **params: Any,
    ) -> Answer:
        """The release for this question (fresh or cached); OverBudget when the budget is spent.
        BadQuery (from resolve_window) when the question is malformed."""
        spec = SPECS[release]
        s = self.s
        refused: OverBudget | None = None
        with self.session() as store:
            store.lock()
            today = store.today()
            window = resolve_window(start, end, today, s.analytics_max_window_days)
            query = canonical_query(spec, window, collections, **params)
            key = query_key(query, self.mechanism_parameters)
            period_start = self._period_start(today)
            hit = store.cached(key, period_start)
            if hit is not None:
                release_id, cached_release = hit
                store.record(consumer, period_start, spec.name, query, "cached", 0.0, release_id, request_id)
                return Answer(cached_release, True, self.policy.budget(consumer, today, *store.spent(
                    consumer, period_start)))
            mechanism = count_mechanism(s.analytics_epsilon_per_release, s.analytics_max_events_per_actor_day
                                        if not spec.distinct_actors else 1)
            budget = self.policy.budget(consumer, today, *store.spent(consumer, period_start))
            if not budget.allows(mechanism.charged_epsilon):
                store.record(consumer, period_start, spec.name, query, "refused", 0.0, None, request_id)
                refused = OverBudget(budget, mechanism.charged_epsilon)
            else:
                if collections:
                    domain = sorted(set(collections))
                else:
                    domain = store.collections() if "collection" in spec.cell_columns else []
                cells = spec.cells(window, domain)
                sql = rows_sql(spec, filter_collections=bool(collections))
                rows = store.rows(sql, {"start": window.start, "end": window.end,
                                        "kinds": query_kinds(spec, query), "collections": domain})
                true_counts = bounded_counts(spec, rows, cells, s.analytics_max_events_per_actor_day)
                released = make_release(spec, query, cells, true_counts, mechanism, k=s.analytics_k_threshold,
                                        cap=s.analytics_max_events_per_actor_day, alpha=s.analytics_accuracy_alpha)
                released["period_start"] = period_start.isoformat()
                release_id = store.save_release(key, period_start, spec.name, query, released,
                                                mechanism.charged_epsilon, consumer)
                store.record(consumer, period_start, spec.name, query, "released", mechanism.charged_epsilon,
                             release_id, request_id)
                return Answer(released, False, self.policy.budget(consumer, today, *store.spent(
                    consumer, period_start)))
        raise refused
