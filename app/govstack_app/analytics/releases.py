"""What the analytics service releases: each question, its canonical form, the cells it counts,
and how a noisy answer is shaped.

Every release is a vector of counts over a **public domain** of cells fixed before any event is
read (days of the window, latency and score buckets, status classes, and the collection names,
which every API reader can list), so that neither which groups appear nor how many are
suppressed depends on anyone's activity. Counts are bounded per actor and day, noised once by the
release's OpenDP measurement, and groups whose noisy count is below k are suppressed
(post-processing: it costs no privacy). Nothing else touches the data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from .events import EVENT_KINDS, GAP_BUCKETS, LATENCY_LABELS, SCORE_LABELS
from .mechanisms import CountMechanism, bound_contributions

PRIVACY_UNIT = (
    "one actor's events on one UTC day (actor: an HMAC pseudonym of an API key, or of the client "
    "address of a request no key was accepted for)"
)
STATUS_CLASSES = (4, 5)
USAGE_KINDS = tuple(k for k in EVENT_KINDS if k != "error")


class BadQuery(ValueError):
    """The question cannot be answered as asked (the message says why)."""


@dataclass(frozen=True)
class Window:
    start: date
    end: date

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]


def resolve_window(start: date | None, end: date | None, today: date, max_days: int) -> Window:
    """Absolute dates (inclusive): a relative question becomes the same question as its dates."""
    end = end or today
    start = start or end - timedelta(days=min(7, max_days) - 1)
    if end > today:
        raise BadQuery(f"end {end} is in the future (today is {today} UTC)")
    if start > end:
        raise BadQuery(f"start {start} is after end {end}")
    if (end - start).days + 1 > max_days:
        raise BadQuery(f"the window spans {(end - start).days + 1} days; at most {max_days} per release")
    return Window(start, end)


@dataclass(frozen=True)
class Spec:
    """One kind of release."""

    name: str
    summary: str
    # Which view rows count, as SQL over analytics.actor_day_events, and their cell columns.
    kinds: tuple[str, ...]
    cell_columns: tuple[str, ...]
    extra_filter: str = ""
    # One event per actor-day (distinct actors) instead of up to the contribution bound.
    distinct_actors: bool = False
    # Top-N by noisy count instead of every group.
    ranked: bool = False

    def cells(self, window: Window, collections: list[str]) -> list[tuple[Any, ...]]:
        """The public domain: every cell the release reports on, in output order."""
        axes: dict[str, list[Any]] = {
            "collection": collections,
            "day": window.days,
            "latency_bucket": list(range(len(LATENCY_LABELS))),
            "score_bucket": list(GAP_BUCKETS),
            "status_class": list(STATUS_CLASSES),
        }
        out: list[tuple[Any, ...]] = [()]
        for column in self.cell_columns:
            out = [(*cell, value) for cell in out for value in axes[column]]
        return out


SPECS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec("usage.daily", "Events of one kind per collection and day", kinds=USAGE_KINDS,
             cell_columns=("collection", "day")),
        Spec("usage.active_actors", "Distinct active actors per day", kinds=EVENT_KINDS, cell_columns=("day",),
             distinct_actors=True),
        Spec("retrieval.latency", "Histogram of search latencies", kinds=("search",),
             cell_columns=("latency_bucket",)),
        Spec("retrieval.content_gaps", "Searches that found nothing or only weak matches, per collection",
             kinds=("search",), cell_columns=("collection", "score_bucket"),
             extra_filter=f"score_bucket IN ({', '.join(str(b) for b in GAP_BUCKETS)})"),
        Spec("retrieval.top_collections", "Collections ranked by downloads", kinds=("download",),
             cell_columns=("collection",), ranked=True),
        Spec("system.errors", "Failed API requests per day and status class", kinds=("error",),
             cell_columns=("day", "status_class")),
    )
}


def canonical_query(spec: Spec, window: Window, collections: list[str] | None, **params: Any) -> dict[str, Any]:
    """The question in one spelling: equivalent requests (parameter order, repeated or unsorted
    collections, relative dates) are the same question, hence the same cached release."""
    return {
        "release": spec.name,
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "collections": sorted(set(collections)) if collections else None,
        **{k: v for k, v in sorted(params.items())},
    }


def query_key(query: dict[str, Any], mechanism: dict[str, Any]) -> str:
    """Identifies a release: the question and every parameter that shapes its answer."""
    text = json.dumps({"query": query, "mechanism": mechanism}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def query_kinds(spec: Spec, query: dict[str, Any]) -> list[str]:
    """The event kinds a release counts: the one asked for (usage.daily), else the spec's."""
    return [query["kind"]] if "kind" in query else list(spec.kinds)


def rows_sql(spec: Spec, *, filter_collections: bool) -> str:
    """Rows of the window: actor-day, cell columns and event count (summed over other columns)."""
    cells = ", ".join(spec.cell_columns)
    where = ["day BETWEEN %(start)s AND %(end)s", "kind = ANY(%(kinds)s)"]
    if filter_collections:
        where.append("collection = ANY(%(collections)s)")
    if spec.extra_filter:
        where.append(spec.extra_filter)
    return (
        f"SELECT day AS actor_day, actor, {cells}, sum(events)::bigint AS events "  # noqa: S608 - fixed specs
        f"FROM analytics.actor_day_events WHERE {' AND '.join(where)} "
        f"GROUP BY day, actor, {cells}"
    )


def bounded_counts(
    spec: Spec, rows: Iterable[dict[str, Any]], cells: list[tuple[Any, ...]], cap: int
) -> list[int]:
    """True counts per domain cell after the contribution bound (distinct actors: one per day)."""
    domain = set(cells)

    def cell_of(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[column] for column in spec.cell_columns)

    keyed: list[tuple[Hashable, Hashable, int]] = [
        ((row["actor_day"], row["actor"]), cell_of(row), int(row["events"]))
        for row in rows if cell_of(row) in domain
    ]
    totals = bound_contributions(keyed, 1 if spec.distinct_actors else cap)
    return [totals.get(cell, 0) for cell in cells]


def _group(spec: Spec, cell: tuple[Any, ...], value: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column, v in zip(spec.cell_columns, cell, strict=True):
        if column == "day":
            out["day"] = v.isoformat()
        elif column == "latency_bucket":
            out["latency"] = LATENCY_LABELS[v]
        elif column == "score_bucket":
            out["gap"] = SCORE_LABELS[v]
        else:
            out[column] = v
    out["actors" if spec.distinct_actors else "count"] = value
    return out


def shape(spec: Spec, cells: list[tuple[Any, ...]], noisy: list[int], k: int, limit: int | None = None
          ) -> tuple[list[dict[str, Any]], int]:
    """Groups at or above k (ranked: the top ``limit``), and how many were suppressed."""
    kept = [(cell, value) for cell, value in zip(cells, noisy, strict=True) if value >= k]
    suppressed = len(cells) - len(kept)
    if spec.ranked:
        kept.sort(key=lambda item: (-item[1], item[0]))
        groups = [{"rank": i + 1, **_group(spec, cell, value)} for i, (cell, value) in enumerate(kept[:limit])]
    else:
        groups = [_group(spec, cell, value) for cell, value in kept]
    return groups, suppressed


def make_release(
    spec: Spec,
    query: dict[str, Any],
    cells: list[tuple[Any, ...]],
    true_counts: list[int],
    mechanism: CountMechanism,
    *,
    k: int,
    cap: int,
    alpha: float,
) -> dict[str, Any]:
    """The release as served and cached: noisy groups, suppression, and every parameter."""
    noisy = mechanism.release(true_counts)
    groups, suppressed = shape(spec, cells, noisy, k, query.get("limit"))
    return {
        "release": spec.name,
        "query": query,
        "groups": groups,
        "privacy": {
            "unit": PRIVACY_UNIT,
            **mechanism.describe(alpha),
            "contribution_bounds": {
                "events_per_actor_per_day": 1 if spec.distinct_actors else cap,
                "what_counts": "distinct actors per day" if spec.distinct_actors else "events",
            },
            "k_threshold": k,
            "groups_in_domain": len(cells),
            "suppressed_groups": suppressed,
        },
    }
