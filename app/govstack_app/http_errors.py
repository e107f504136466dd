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
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(psycopg.OperationalError, _pg_down)
