"""The analytics service's routes: differentially private releases about usage, retrieval and
system health, behind the edge at /analytics/ (OpenAPI at /analytics/docs). The service's app
(analytics/api.py create_analytics_app) only wires them.

Consumers authenticate with an API key of the app (X-API-Key; role ``analytics_consumer_role``
or higher), looked up through ``analytics.consumer_of_key`` (the role reads no key table).
Every error has the app's shape ``{"detail", "request_id"}``; a request over budget answers 429
with what is left of it (``budget``) and a Retry-After until the period ends.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import metrics
from ..analytics.ledger import OverBudget
from ..analytics.releases import SPECS, USAGE_KINDS, BadQuery
from ..analytics.schemas import AnalyticsHealth, BudgetExhausted, BudgetState, ReleaseAnswer
from ..analytics.settings import AnalyticsSettings
from ..http_errors import HTTPError, current_request_id
from ..schemas import AUTH_ERRORS, ReadyResponse, error_doc
from ..security import SCOPED_HASH_PREFIX, hash_api_key, role_allows, valid_collection_name
from ..services.analytics import ReleaseService
from ..services.backends import db

log = structlog.get_logger(__name__)

PREFIX = "/analytics"
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key of the app")

Start = Annotated[date | None, Query(description="first UTC day (default: 7 days before end)")]
End = Annotated[date | None, Query(description="last UTC day, inclusive (default: today)")]
Collections = Annotated[
    list[str] | None,
    Query(alias="collection", max_length=100,
          description="only these collections (repeat the parameter); default: every collection"),
]
RELEASE_ERRORS: dict[int | str, dict[str, Any]] = {
    422: error_doc("Malformed question: bad dates, a window longer than allowed, a bad collection name"),
    429: {"model": BudgetExhausted, "description": "The privacy budget is spent: what is left, and Retry-After"},
    **AUTH_ERRORS,
}


def _service(request: Request) -> ReleaseService:
    return request.app.state.releases


def consumer(request: Request, key: Annotated[str | None, Security(api_key_header)] = None) -> str:
    """The API key's name, when its role may consume analytics."""
    if not key:
        raise HTTPError(401, "missing API key (X-API-Key header)", {"WWW-Authenticate": "ApiKey"})
    digest = hash_api_key(key)
    with db(request.app.state.pool) as conn:
        row = conn.execute("SELECT name, role FROM analytics.consumer_of_key(%s)", (digest,)).fetchone()
        # A key scoped to collections is stored under a prefixed hash: releases cover every
        # collection, so such a key is refused by name rather than as unknown.
        scoped = row is None and conn.execute("SELECT 1 FROM analytics.consumer_of_key(%s)",
                                              (SCOPED_HASH_PREFIX + digest,)).fetchone() is not None
        conn.rollback()
    if scoped:
        raise HTTPError(403, "a key scoped to collections may not read analytics: releases cover every collection")
    if row is None:
        raise HTTPError(401, "invalid API key", {"WWW-Authenticate": "ApiKey"})
    needed = request.app.state.settings.analytics_consumer_role
    structlog.contextvars.bind_contextvars(api_key_name=row["name"])
    if not role_allows(row["role"], needed):
        raise HTTPError(403, f"role {row['role']!r} may not read analytics (needs {needed!r})")
    return row["name"]


Consumer = Annotated[str, Depends(consumer)]


def _checked(collections: list[str] | None) -> list[str] | None:
    for name in collections or ():
        if not valid_collection_name(name):
            raise HTTPError(422, f"{name[:80]!r} is not a collection name")
    return collections


def _answer(request: Request, who: str, release: str, **kwargs: Any) -> dict[str, Any]:
    try:
        answer = _service(request).answer(who, release, request_id=current_request_id(), **kwargs)
    except BadQuery as exc:
        raise HTTPError(422, str(exc)) from None
    except OverBudget as exc:
        metrics.ANALYTICS_RELEASES.labels(release, "refused").inc()
        raise exc from None
    metrics.ANALYTICS_RELEASES.labels(release, "cached" if answer.cached else "released").inc()
    if not answer.cached:
        metrics.ANALYTICS_EPSILON.inc(answer.release["privacy"]["epsilon"])
    return answer.as_dict()


def over_budget(request: Request, exc: OverBudget) -> JSONResponse:
    end = datetime.combine(exc.budget.period_end, datetime.min.time(), UTC)
    retry_after = max(1, int((end - datetime.now(UTC)).total_seconds()))
    return JSONResponse(
        {"detail": str(exc), "request_id": current_request_id(), "budget": exc.budget.as_dict()},
        status_code=429, headers={"Retry-After": str(retry_after)},
    )


usage = APIRouter(prefix=f"{PREFIX}/v1/usage", tags=["usage"])
retrieval = APIRouter(prefix=f"{PREFIX}/v1/retrieval", tags=["retrieval"])
system = APIRouter(prefix=f"{PREFIX}/v1/system", tags=["system health"])
budget = APIRouter(prefix=f"{PREFIX}/v1", tags=["budget"])
ops = APIRouter(tags=["ops"])


@usage.get("/daily", response_model=ReleaseAnswer, summary=SPECS["usage.daily"].summary, responses=RELEASE_ERRORS)
def usage_daily(request: Request, who: Consumer, start: Start = None, end: End = None,
                collections: Collections = None,
                kind: Annotated[str, Query(pattern=f"^({'|'.join(USAGE_KINDS)})$")] = "search") -> dict[str, Any]:
    return _answer(request, who, "usage.daily", start=start, end=end, collections=_checked(collections), kind=kind)


@usage.get("/active-actors", response_model=ReleaseAnswer, summary=SPECS["usage.active_actors"].summary,
           responses=RELEASE_ERRORS)
def active_actors(request: Request, who: Consumer, start: Start = None, end: End = None,
                  collections: Collections = None) -> dict[str, Any]:
    return _answer(request, who, "usage.active_actors", start=start, end=end, collections=_checked(collections))


@retrieval.get("/latency", response_model=ReleaseAnswer, summary=SPECS["retrieval.latency"].summary,
               responses=RELEASE_ERRORS)
def latency(request: Request, who: Consumer, start: Start = None, end: End = None,
            collections: Collections = None) -> dict[str, Any]:
    return _answer(request, who, "retrieval.latency", start=start, end=end, collections=_checked(collections))


@retrieval.get("/content-gaps", response_model=ReleaseAnswer, summary=SPECS["retrieval.content_gaps"].summary,
               responses=RELEASE_ERRORS)
def content_gaps(request: Request, who: Consumer, start: Start = None, end: End = None,
                 collections: Collections = None) -> dict[str, Any]:
    return _answer(request, who, "retrieval.content_gaps", start=start, end=end, collections=_checked(collections))


@retrieval.get("/top-collections", response_model=ReleaseAnswer, summary=SPECS["retrieval.top_collections"].summary,
               responses=RELEASE_ERRORS)
def top_collections(request: Request, who: Consumer, start: Start = None, end: End = None,
                    collections: Collections = None,
                    limit: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
    return _answer(request, who, "retrieval.top_collections", start=start, end=end,
                   collections=_checked(collections), limit=limit)


@system.get("/errors", response_model=ReleaseAnswer, summary=SPECS["system.errors"].summary,
            responses=RELEASE_ERRORS)
def errors(request: Request, who: Consumer, start: Start = None, end: End = None) -> dict[str, Any]:
    return _answer(request, who, "system.errors", start=start, end=end)


@budget.get("/budget", response_model=BudgetState, summary="What is left of your privacy budget (free)",
            responses=AUTH_ERRORS)
def remaining(request: Request, who: Consumer) -> dict[str, Any]:
    return _service(request).budget(who).as_dict()


@ops.get("/health", response_model=AnalyticsHealth, summary="Liveness")
def health(request: Request) -> dict[str, Any]:
    s: AnalyticsSettings = request.app.state.settings
    return {"status": "ok", "version": s.app_version, "color": s.app_color}


@ops.get("/ready", response_model=ReadyResponse, summary="Readiness: the events view and the ledger answer",
         responses={503: {"model": ReadyResponse, "description": "Postgres or a grant is missing"}})
def ready(request: Request) -> JSONResponse:
    try:
        with db(request.app.state.pool, timeout=3.0) as conn:
            conn.execute("SELECT 1 FROM analytics.actor_day_events LIMIT 0")
            conn.execute("SELECT 1 FROM analytics.privacy_ledger LIMIT 0")
            conn.rollback()
        checks = {"postgres": "ok"}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks = {"postgres": f"error: {type(exc).__name__}: {str(exc)[:200]}"}
    failed = [k for k, v in checks.items() if v != "ok"]
    body = {"status": "unavailable" if failed else "ready", "checks": checks, "failed": failed}
    return JSONResponse(body, status_code=503 if failed else 200)


@ops.get("/metrics", summary="Prometheus metrics", response_class=Response,
         responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def prom() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


ROUTERS = (usage, retrieval, system, budget, ops)
