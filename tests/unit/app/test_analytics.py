"""Privacy-preserving analytics without services: the OpenDP mechanism and its noise, the
contribution bound, k suppression, the release cache and the budget (on an in-memory store that
holds what Postgres would; tests/e2e/test_analytics.py proves the same against the real one),
pseudonymous actors and the event writer."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from govstack_app import metrics
from govstack_app.analytics.api import create_analytics_app
from govstack_app.analytics.events import (
    ACTOR_HEX_CHARS,
    LATENCY_EDGES_S,
    Event,
    EventRecorder,
    actor_id,
    latency_bucket,
    minute_of,
    score_bucket,
)
from govstack_app.analytics.ledger import OverBudget, period_bounds
from govstack_app.analytics.mechanisms import bound_contributions, count_mechanism
from govstack_app.analytics.releases import SPECS, BadQuery, resolve_window, shape
from govstack_app.analytics.settings import AnalyticsSettings
from govstack_app.services.analytics import ReleaseService

TODAY = date(2026, 12, 4)


# == the mechanism ================================================================================
def test_only_the_contrib_feature_of_opendp_is_enabled() -> None:
    import opendp.prelude as dp

    assert set(dp.GLOBAL_FEATURES) == {"contrib"}
    # Constructors whose privacy rests on ideal arithmetic or on trusting their arguments stay locked.
    for feature in ("idealized-numerics", "honest-but-curious"):
        with pytest.raises(dp.OpenDPException, match=feature):
            dp.assert_features(feature)


@pytest.mark.parametrize(("epsilon", "sensitivity"), [(1.0, 5), (0.5, 1), (2.0, 10)])
def test_calibration_charges_what_opendp_proves(epsilon: float, sensitivity: int) -> None:
    mechanism = count_mechanism(epsilon, sensitivity)
    # Discrete Laplace: epsilon = sensitivity / scale; OpenDP's search lands on it.
    assert mechanism.scale == pytest.approx(sensitivity / epsilon, rel=1e-6)
    assert mechanism.charged_epsilon <= epsilon
    assert mechanism.charged_epsilon == pytest.approx(epsilon, rel=1e-6)
    assert float(mechanism.measurement.map(sensitivity)) == mechanism.charged_epsilon


def discrete_laplace_moments(scale: float) -> tuple[float, float]:
    """E|X| and Var|X| of the discrete Laplace with this scale: P(k) = (1-a)/(1+a) a^|k|, a = e^-1/scale."""
    a = math.exp(-1.0 / scale)
    mean_abs = 2 * a / (1 - a * a)
    second_moment = 2 * a / (1 - a) ** 2  # E[X^2] = Var X (the mean is 0)
    return mean_abs, second_moment - mean_abs**2


# Two-sided z = 5.3: a correct mechanism fails this check with probability about 1e-7.
Z = 5.3


def scale_matches(samples: list[int], scale: float) -> tuple[bool, float, float]:
    """Is the samples' mean absolute deviation the mechanism's, within Z standard errors?"""
    mean_abs, var_abs = discrete_laplace_moments(scale)
    observed = statistics.fmean(abs(x) for x in samples)
    return abs(observed - mean_abs) <= Z * math.sqrt(var_abs / len(samples)), observed, mean_abs


def test_the_noise_has_the_stated_scale_over_many_independent_releases() -> None:
    """20 000 draws from 40 independent releases of 500 zero counts each, straight from the
    measurement (no cache involved): their mean absolute value is the discrete Laplace's for the
    stated scale within Z standard errors (false alarm ~1e-7), and the noise is centred."""
    mechanism = count_mechanism(1.0, 5)
    samples = [x for _ in range(40) for x in mechanism.release([0] * 500)]
    ok, observed, expected = scale_matches(samples, mechanism.scale)
    assert ok, f"mean |noise| {observed:.3f}, the mechanism's {expected:.3f}"
    _, var_abs = discrete_laplace_moments(mechanism.scale)
    second = discrete_laplace_moments(mechanism.scale)[1] + discrete_laplace_moments(mechanism.scale)[0] ** 2
    assert abs(statistics.fmean(samples)) <= Z * math.sqrt(second / len(samples))
    # The same check tells a mechanism of half the scale apart: it is not vacuous.
    half = count_mechanism(2.0, 5)
    assert not scale_matches([x for _ in range(40) for x in half.release([0] * 500)], mechanism.scale)[0]


def test_the_stated_error_bound_holds_as_often_as_it_says() -> None:
    mechanism = count_mechanism(1.0, 5)
    bound = mechanism.error_bound(0.05)
    assert bound == 15  # P(|X| > 15) = 2 a^16 / (1 + a) = 0.045 <= 0.05 < P(|X| > 14) for scale 5
    samples = [x for _ in range(40) for x in mechanism.release([0] * 500)]
    misses = sum(abs(x) > bound for x in samples) / len(samples)
    a = math.exp(-1 / mechanism.scale)
    p = 2 * a ** (bound + 1) / (1 + a)
    assert abs(misses - p) <= Z * math.sqrt(p * (1 - p) / len(samples))


# == contribution bounding ========================================================================
def test_contribution_bounding_caps_an_actors_influence() -> None:
    """A very active actor counts at most `cap` events a day, however many cells it touched:
    removing that actor-day changes the totals by at most `cap` (the L1 sensitivity)."""
    rng = np.random.default_rng(7)
    heavy = [(("d1", "heavy"), "a", 700), (("d1", "heavy"), "b", 250), (("d1", "heavy"), "c", 50)]
    light = [(("d1", f"u{i}"), "a", 2) for i in range(20)] + [(("d1", "u0"), "b", 1)]
    for trial in range(200):
        with_heavy = bound_contributions(heavy + light, cap=5, rng=np.random.default_rng(trial))
        without = bound_contributions(light, cap=5, rng=rng)
        assert sum(abs(with_heavy.get(c, 0) - without.get(c, 0)) for c in "abc") == 5
        assert without == {"a": 40, "b": 1}  # under the cap: counted as they are
    # The same actor on another day is another actor-day: bounded separately.
    two_days = bound_contributions([(("d1", "x"), "a", 9), (("d2", "x"), "a", 9)], cap=5)
    assert two_days == {"a": 10}


def test_the_bound_keeps_a_uniform_sample_of_the_actors_events() -> None:
    """Which events survive the bound is a sample without replacement: 3/4 of them in cell a
    means 3/4 of the kept ones in a, on average, not always the first cell."""
    kept_a = [bound_contributions([(("d", "x"), "a", 300), (("d", "x"), "b", 100)], cap=4,
                                  rng=np.random.default_rng(seed)).get("a", 0) for seed in range(2000)]
    assert statistics.fmean(kept_a) == pytest.approx(3.0, abs=0.1)
    assert min(kept_a) < 4  # sometimes b gets more than its share, so it is random


def test_distinct_actors_count_each_actor_once_a_day() -> None:
    rows = [(("d1", "x"), "d1", 40), (("d1", "y"), "d1", 1), (("d2", "x"), "d2", 3)]
    assert bound_contributions(rows, cap=1) == {"d1": 2, "d2": 1}


# == k suppression and shaping ===================================================================
def test_groups_below_k_are_suppressed_and_counted() -> None:
    spec = SPECS["usage.daily"]
    cells = [("a", TODAY), ("b", TODAY), ("c", TODAY), ("d", TODAY)]
    groups, suppressed = shape(spec, cells, [57, 9, -3, 10], k=10)
    assert groups == [{"collection": "a", "day": TODAY.isoformat(), "count": 57},
                      {"collection": "d", "day": TODAY.isoformat(), "count": 10}]
    assert suppressed == 2


def test_top_collections_rank_the_noisy_counts_after_suppression() -> None:
    spec = SPECS["retrieval.top_collections"]
    groups, suppressed = shape(spec, [("a",), ("b",), ("c",), ("d",)], [12, 40, 3, 25], k=10, limit=2)
    assert groups == [{"rank": 1, "collection": "b", "count": 40}, {"rank": 2, "collection": "d", "count": 25}]
    assert suppressed == 1


def test_the_domain_is_public_whatever_the_data() -> None:
    window = resolve_window(date(2026, 12, 1), TODAY, TODAY, 31)
    assert len(SPECS["usage.daily"].cells(window, ["a", "b"])) == 8
    assert len(SPECS["retrieval.latency"].cells(window, [])) == len(LATENCY_EDGES_S) + 1
    assert SPECS["system.errors"].cells(window, [])[:2] == [(date(2026, 12, 1), 4), (date(2026, 12, 1), 5)]


@pytest.mark.parametrize(("start", "end", "message"), [
    (None, TODAY + timedelta(days=1), "in the future"),
    (TODAY, TODAY - timedelta(days=1), "after end"),
    (TODAY - timedelta(days=40), None, "at most 31"),
])
def test_malformed_windows_are_refused_with_the_reason(start: date | None, end: date | None, message: str) -> None:
    with pytest.raises(BadQuery, match=message):
        resolve_window(start, end, TODAY, 31)


# == cache and budget ============================================================================
class MemoryStore:
    """The ReleaseStore contract over in-memory tables: the events view's rows, the releases and
    the ledger; a session that raises leaves them as they were (a rolled-back transaction)."""

    def __init__(self, rows: list[dict[str, Any]], collections: list[str], today: date = TODAY) -> None:
        self.view = rows
        self.names = collections
        self.day = today
        self.releases: dict[tuple[str, date], tuple[int, dict[str, Any]]] = {}
        self.ledger: list[dict[str, Any]] = []
        self.reads = 0

    @contextmanager
    def session(self) -> Iterator[MemoryStore]:
        releases, ledger = dict(self.releases), list(self.ledger)
        try:
            yield self
        except BaseException:
            self.releases, self.ledger = releases, ledger
            raise

    def today(self) -> date:
        return self.day

    def lock(self) -> None:
        pass

    def cached(self, key: str, period_start: date) -> tuple[int, dict[str, Any]] | None:
        return self.releases.get((key, period_start))

    def spent(self, consumer: str, period_start: date) -> tuple[float, float]:
        rows = [r for r in self.ledger if r["period_start"] == period_start]
        return (sum(r["epsilon"] for r in rows if r["consumer"] == consumer), sum(r["epsilon"] for r in rows))

    def collections(self) -> list[str]:
        return list(self.names)

    def rows(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        self.reads += 1
        return [r for r in self.view if params["start"] <= r["actor_day"] <= params["end"]
                and r["kind"] in params["kinds"] and r["collection"] in params["collections"]]

    def save_release(self, key: str, period_start: date, release: str, query: dict[str, Any],
                     answer: dict[str, Any], epsilon: float, consumer: str) -> int:
        assert (key, period_start) not in self.releases
        self.releases[(key, period_start)] = (len(self.releases) + 1, answer)
        return len(self.releases)

    def record(self, consumer: str, period_start: date, release: str, query: dict[str, Any], outcome: str,
               epsilon: float, release_id: int | None, request_id: str | None) -> None:
        self.ledger.append({"consumer": consumer, "period_start": period_start, "release": release,
                            "outcome": outcome, "epsilon": epsilon, "release_id": release_id})


def service(store: MemoryStore, **overrides: Any) -> ReleaseService:
    fields = {"analytics_consumer_epsilon_per_period": 3.0, "analytics_total_epsilon_per_period": 5.0,
              **overrides}
    return ReleaseService(AnalyticsSettings(**fields), store.session)


def search_rows(collection: str, actors: int, per_actor: int, day: date = TODAY) -> list[dict[str, Any]]:
    return [{"actor_day": day, "day": day, "actor": f"{collection}-{i}", "kind": "search", "collection": collection,
             "events": per_actor} for i in range(actors)]


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(search_rows("big", 30, 4) + search_rows("small", 1, 2), ["big", "small"])


def test_the_same_question_gets_the_identical_cached_release_at_no_cost(store: MemoryStore) -> None:
    svc = service(store)
    first = svc.answer("alice", "usage.daily", collections=["big", "small"], kind="search")
    # The same question spelled differently: collections unsorted and repeated, dates explicit.
    again = [svc.answer("alice", "usage.daily", collections=["small", "big", "big"], kind="search",
                        start=TODAY - timedelta(days=6), end=TODAY) for _ in range(20)]
    assert not first.cached and all(a.cached for a in again)
    assert all(a.release == first.release for a in again)
    assert store.reads == 1  # the events were read once, noised once
    assert [r["outcome"] for r in store.ledger] == ["released"] + ["cached"] * 20
    assert again[-1].budget.consumer_spent == first.release["privacy"]["epsilon"] == 1.0
    # Another consumer asking the same question gets the same release, also at no cost.
    other = svc.answer("bob", "usage.daily", collections=["big", "small"], kind="search")
    assert other.cached and other.release == first.release and other.budget.consumer_spent == 0
    # A different question is a new release.
    assert not svc.answer("alice", "usage.daily", collections=["big"], kind="search").cached


def test_the_cache_lasts_one_budget_period(store: MemoryStore) -> None:
    svc = service(store)
    first = svc.answer("alice", "usage.daily", collections=["big"], start=date(2026, 12, 1), end=date(2026, 12, 3))
    store.day = date(2027, 1, 2)  # next month: the budget renews, and so does the release
    later = svc.answer("alice", "usage.daily", collections=["big"], start=date(2026, 12, 1), end=date(2026, 12, 3))
    assert not later.cached and later.budget.period_start == date(2027, 1, 1)
    assert later.release["period_start"] != first.release["period_start"]


def test_a_spent_budget_refuses_with_what_is_left_and_the_ledger_says_so(store: MemoryStore) -> None:
    svc = service(store)
    for day in range(3):
        svc.answer("alice", "usage.daily", collections=["big"], start=TODAY - timedelta(days=day), end=TODAY)
    with pytest.raises(OverBudget) as refused:
        svc.answer("alice", "usage.daily", collections=["small"])
    assert refused.value.budget.remaining == 0 and refused.value.budget.consumer_spent == 3.0
    assert "this consumer's budget has 0 left until 2027-01-01" in str(refused.value)
    assert [r["outcome"] for r in store.ledger][-1] == "refused" and store.ledger[-1]["epsilon"] == 0
    assert len(store.releases) == 3  # nothing was released, nothing noised
    # What was already released stays free to read again.
    assert svc.answer("alice", "usage.daily", collections=["big"], start=TODAY, end=TODAY).cached


def test_the_total_budget_binds_consumers_who_pool_their_answers(store: MemoryStore) -> None:
    svc = service(store)  # 3 per consumer, 5 in total
    for consumer, kind, n in (("alice", "view", 3), ("bob", "download", 2)):
        for day in range(n):
            svc.answer(consumer, "usage.daily", kind=kind, start=TODAY - timedelta(days=day), end=TODAY)
    with pytest.raises(OverBudget) as refused:
        svc.answer("carol", "usage.daily", kind="upload")
    assert refused.value.budget.consumer_spent == 0 and refused.value.budget.remaining == 0
    assert "the total budget of all consumers" in str(refused.value)
    assert sum(r["epsilon"] for r in store.ledger) == 5.0


def test_small_groups_are_suppressed_in_a_release(store: MemoryStore) -> None:
    """'small' (2 searches) is far below k with a low-noise setting; 'big' (30 actors x 4) is
    reported within 15. At scale 0.5 the chance either fails is about 1e-7."""
    svc = service(store, analytics_epsilon_per_release=4.0, analytics_max_events_per_actor_day=2,
                  analytics_consumer_epsilon_per_period=8.0, analytics_total_epsilon_per_period=8.0)
    release = svc.answer("alice", "usage.daily", collections=["big", "small"], start=TODAY, end=TODAY).release
    assert [g["collection"] for g in release["groups"]] == ["big"]
    # Bounded to 2 a day per actor: 30 actors -> 60.
    assert abs(release["groups"][0]["count"] - 60) <= 15
    assert release["privacy"]["suppressed_groups"] == 1 and release["privacy"]["groups_in_domain"] == 2
    assert release["privacy"]["contribution_bounds"]["events_per_actor_per_day"] == 2
    assert release["privacy"]["scale"] == pytest.approx(0.5)


def test_a_period_renews_the_budget() -> None:
    assert period_bounds("month", TODAY) == (date(2026, 12, 1), date(2027, 1, 1))
    assert period_bounds("week", TODAY) == (date(2026, 11, 30), date(2026, 12, 7))
    assert period_bounds("day", TODAY) == (TODAY, TODAY + timedelta(days=1))


def test_settings_refuse_a_budget_that_fits_no_release() -> None:
    with pytest.raises(ValueError, match="below one release's epsilon"):
        AnalyticsSettings(analytics_epsilon_per_release=2.0, analytics_consumer_epsilon_per_period=1.0)


# == the analytics API without a database ========================================================
def test_analytics_openapi_lives_under_its_prefix_and_declares_every_status() -> None:
    app = create_analytics_app(AnalyticsSettings())
    spec = app.openapi()
    paths = set(spec["paths"])
    assert {p for p in paths if p.startswith("/analytics/")} == {
        "/analytics/v1/usage/daily", "/analytics/v1/usage/active-actors", "/analytics/v1/retrieval/latency",
        "/analytics/v1/retrieval/content-gaps", "/analytics/v1/retrieval/top-collections",
        "/analytics/v1/system/errors", "/analytics/v1/budget"}
    for path in paths - {"/analytics/v1/budget", "/health", "/ready", "/metrics"}:
        assert set(spec["paths"][path]["get"]["responses"]) == {"200", "401", "403", "422", "429", "503"}, path
    assert app.docs_url == "/analytics/docs" and app.openapi_url == "/analytics/openapi.json"


def test_analytics_refuses_a_missing_key_in_the_apps_error_shape() -> None:
    client = TestClient(create_analytics_app(AnalyticsSettings()))
    response = client.get("/analytics/v1/usage/daily")
    assert response.status_code == 401
    assert set(response.json()) == {"detail", "request_id"}
    assert response.headers["x-request-id"] == response.json()["request_id"]


# == events ======================================================================================
def test_actors_are_pseudonyms_that_depend_on_the_secret() -> None:
    one = actor_id(b"secret-one", key_name="alice-reports", client="10.0.0.7")
    assert one == actor_id(b"secret-one", key_name="alice-reports", client="10.9.9.9")  # the key decides
    assert len(one) == ACTOR_HEX_CHARS and int(one, 16) >= 0 and "alice" not in one
    assert one != actor_id(b"secret-two", key_name="alice-reports", client=None)
    # No key: the address is the actor, in a namespace no key name can reach.
    by_addr = actor_id(b"secret-one", key_name=None, client="10.0.0.7")
    assert by_addr != actor_id(b"secret-one", key_name="addr:10.0.0.7", client=None)
    assert by_addr != actor_id(b"secret-one", key_name="10.0.0.7", client=None)


def test_event_times_and_buckets_carry_nothing_finer_than_stated() -> None:
    assert minute_of(1_765_000_079.9) == datetime(2025, 12, 6, 5, 47, tzinfo=UTC)
    assert [latency_bucket(s) for s in (0.0, 0.025, 0.026, 9.9, 60)] == [0, 0, 1, 8, len(LATENCY_EDGES_S)]
    assert score_bucket("vector", None) == 0
    assert [score_bucket("vector", s) for s in (0.1, 0.4, 0.8)] == [1, 2, 3]
    assert [score_bucket("hybrid", s) for s in (1 / 61, 1 / 61 + 1 / 70, 2 / 61)] == [1, 2, 3]


def test_the_recorder_never_blocks_and_counts_what_it_drops() -> None:
    def refuse() -> Any:
        raise AssertionError("not started: nothing connects")

    recorder = EventRecorder(refuse, capacity=100)
    dropped = metrics.ANALYTICS_EVENTS.labels("dropped")._value.get()
    event = Event(minute_of(0), "search", "0" * 32, "big", 1, 2)
    for _ in range(150):
        recorder.record(event)
    assert recorder.queued == 100
    assert metrics.ANALYTICS_EVENTS.labels("dropped")._value.get() - dropped == 50


def test_a_failing_database_costs_events_not_requests() -> None:
    attempts = []

    def down() -> Any:
        attempts.append(1)
        raise OSError("connection refused")

    failed = metrics.ANALYTICS_EVENTS.labels("failed")._value.get()
    recorder = EventRecorder(down, capacity=100, flush_interval_s=0.05)
    recorder.start()
    for _ in range(10):
        recorder.record(Event(minute_of(0), "view", "0" * 32, "big", 1))
    recorder.close(timeout_s=5)
    assert attempts and metrics.ANALYTICS_EVENTS.labels("failed")._value.get() - failed == 10


def test_the_api_records_a_failed_request_as_an_error_event(env: dict[str, str], tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from govstack_app.api import create_app
    from govstack_app.settings import Settings

    (tmp_path / "actor_key").write_text("k" * 64 + "\n")
    monkeypatch.setenv("GOVSTACK_ANALYTICS_ACTOR_KEY_FILE", str(tmp_path / "actor_key"))
    app = create_app(Settings(), run_migrations=False)
    client = TestClient(app)
    assert client.post("/api/v1/search", json={"query": "q", "collection": "big"}).status_code == 401
    assert client.get("/health").status_code == 200  # not an API call: no event
    recorder: EventRecorder = app.state.usage_events
    assert recorder.queued == 1
    event = recorder._queue.get_nowait()
    assert (event.kind, event.collection, event.status_class, event.score_bucket) == ("error", None, 4, None)
    assert event.actor == actor_id(b"k" * 64, key_name=None, client="testclient")
    assert event.occurred_at.second == 0 and event.occurred_at.microsecond == 0
