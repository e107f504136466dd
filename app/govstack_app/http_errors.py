"""Every error the API answers has one JSON shape: {"detail": ..., "request_id": ...}.
``install_exception_handlers`` maps HTTPError, the services' AppError, request validation and
Postgres failures to it."""

from __future__ import annotations

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .services.backends import is_connection_error
from .services.errors import AppError, Unavailable

log = structlog.get_logger(__name__)


class HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.detail, self.headers = status, detail, headers


def current_request_id() -> str | None:
    return structlog.contextvars.get_contextvars().get("request_id")


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "request_id": current_request_id()}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
    return error_response(exc.status, exc.detail, exc.headers)


async def _app_error(request: Request, exc: AppError) -> JSONResponse:
    if isinstance(exc, Unavailable):
        log.warning("dependency unavailable", component=exc.component, detail=exc.detail)
    return error_response(exc.status, exc.detail)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": jsonable_encoder(exc.errors()), "request_id": current_request_id()}, status_code=422)


# Methods a route may declare; each is probed against the router (below).
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's own 405 names only the first
    route that matched the path, e.g. GET but not DELETE). Probed through the router's public
    ``matches``, which sees into included routers too."""
    return [
        method for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
               for route in request.app.router.routes)
    ]


async def _starlette_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Routing's own errors (404 for an unknown path, 405 for a method a path does not serve) in
    the API's JSON shape; a 405 names every method the path allows (RFC 9110). The edge sends
    the methods it refuses itself (TRACE, anything but GET on /health) here as OPTIONS."""
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
        refused = request.method
        if refused == "OPTIONS":  # the edge asking on behalf of the method it refused
            refused = request.headers.get("x-original-method", refused)[:16]
        detail = f"method {refused} not allowed"
        return error_response(405, detail, headers)
    return error_response(exc.status_code, str(exc.detail), headers or None)


async def _pg_down(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
    log.warning("postgres error", error=str(exc), sqlstate=getattr(exc, "sqlstate", None))
    if is_connection_error(exc):
        return error_response(503, "postgres is unavailable")
    return error_response(
        409 if isinstance(exc, psycopg.errors.LockNotAvailable) else 503,
        "the database could not complete the request now; retry",
    )


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPError, _http_error)
    app.add_exception_handler(StarletteHTTPException, _starlette_http)
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(psycopg.OperationalError, _pg_down)
