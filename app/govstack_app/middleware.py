"""ASGI middleware: request id (kept from X-Request-ID when sane), the serving color header,
Server-Timing (where the request's time went), request metrics, one access log line per request
with the same timings, and an early 413 for oversized bodies."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog

from . import metrics, timing
from .http_errors import error_response

log = structlog.get_logger(__name__)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(self, app: Any, max_body: int, color: str = "blue") -> None:
        self.app = app
        self.max_body = max_body
        self.color_header = (b"x-govstack-color", color.encode())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        if not _REQUEST_ID_RE.match(rid):
            rid = uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=rid)
        structlog.contextvars.unbind_contextvars("api_key_name")
        start = time.perf_counter()
        status_holder = {"status": 500, "started": False}
        method = scope["method"]
        timings, timings_token = timing.open_record()

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                message.setdefault("headers", [])
                # The serving color tells operators (and the blue/green tests)
                # which release answered; Server-Timing where the time went.
                server_timing = timing.header_value(timings, time.perf_counter() - start)
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", rid.encode()),
                    self.color_header,
                    (b"server-timing", server_timing.encode()),
                ]
            await send(message)

        limit = self.max_body if method in ("POST", "PUT", "PATCH") else None
        received = 0

        async def receive_wrapper() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if limit is not None and message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        metrics.ACTIVE_CONNECTIONS.inc()
        try:
            declared = headers.get("content-length")
            if limit is not None and declared and declared.isdigit() and int(declared) > limit:
                await error_response(413, f"request body over the {limit}-byte limit")(scope, receive, send_wrapper)
            else:
                try:
                    await self.app(scope, receive_wrapper, send_wrapper)
                except _BodyTooLarge:
                    if not status_holder["started"]:
                        await error_response(413, f"request body over the {limit}-byte limit")(
                            scope, receive, send_wrapper
                        )
        finally:
            metrics.ACTIVE_CONNECTIONS.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            status = status_holder["status"]
            metrics.REQUESTS.labels(method, endpoint, str(status)).inc()
            metrics.REQUEST_DURATION.labels(method, endpoint).observe(elapsed)
            if endpoint not in ("/health", "/ready", "/metrics") or status >= 400:
                log.info(
                    "request",
                    method=method,
                    path=scope.get("path"),
                    endpoint=endpoint,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                    client=(scope.get("client") or [None])[0],
                    **timing.log_fields(timings),
                )
            timing.close_record(timings_token)
            structlog.contextvars.unbind_contextvars("request_id", "api_key_name")
