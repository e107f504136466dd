"""Probes and metrics, without authentication: /health (liveness; the edge answers the same for
the serving release), /ready (every backing service: which one failed, never why, the log says
why), /metrics (Prometheus scrapes the app directly; the edge does not serve it)."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import metrics
from ..http_errors import current_request_id
from ..schemas import EDGE_ERRORS, HealthResponse, ReadyResponse
from ..services.indexing import backlog
from .deps import services, settings

log = structlog.get_logger(__name__)

router = APIRouter(tags=["ops"])


@router.get("/health", response_model=HealthResponse, summary="Liveness")
def health(request: Request) -> dict[str, Any]:
    s = settings(request)
    return {"status": "ok", "version": s.app_version, "color": s.app_color}


@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness: postgres, object store and chroma",
    responses={
        400: EDGE_ERRORS[400],
        429: EDGE_ERRORS[429],
        503: {
            "description": "A dependency is broken (`failed` names it), or the edge has no app to ask",
            "content": {"application/json": {"schema": {"anyOf": [
                {"$ref": "#/components/schemas/ReadyResponse"},
                {"$ref": "#/components/schemas/ErrorResponse"},
            ]}}},
        },
    },
)
def ready(request: Request) -> JSONResponse:
    s = services(request)
    checks: dict[str, str] = {}

    def run(name: str, fn: Any) -> None:
        try:
            fn()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001
            # Anyone may ask: the cause (addresses, driver messages) goes to the log only.
            log.warning("readiness check failed", check=name, error=f"{type(exc).__name__}: {str(exc)[:500]}",
                        request_id=current_request_id())
            checks[name] = "error"

    def pg() -> None:
        with s.pool.connection(timeout=3.0) as conn:
            conn.execute("SELECT 1")

    run("postgres", pg)
    run("object_store", s.store.check)
    run("chroma", s.chroma.heartbeat)
    failed = [k for k, v in checks.items() if v != "ok"]
    body = {"status": "unavailable" if failed else "ready", "checks": checks, "failed": failed}
    return JSONResponse(body, status_code=503 if failed else 200)


@router.get(
    "/metrics",
    include_in_schema=False,
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
)
def prom(request: Request) -> Response:
    try:
        pending, failed = backlog(services(request).pool)
        metrics.UNINDEXED_BACKLOG.set(pending)
        metrics.FAILED_DOCUMENTS.set(failed)
    except Exception as exc:  # noqa: BLE001 - metrics must still be served
        log.warning("backlog gauge not updated", error=repr(exc))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
