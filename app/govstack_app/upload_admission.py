"""Admission of uploads to the spool: each upload in flight may spool up to the upload limit (plus
multipart framing) to /tmp, a tmpfs of GOVSTACK_UPLOAD_SPOOL_BYTES, so at most spool // slot
uploads are admitted at once; one more is answered 503 with a JSON reason and Retry-After before
a byte of its body is read. The spool can then never fill.

A pure ASGI middleware: it must act before Starlette parses (and spools) the multipart body,
which happens before any endpoint or dependency runs. For the same reason it authenticates the
upload first (the same 401/403 answers as the endpoint's own dependency): otherwise anonymous
clients with bodies that never finish could hold every slot.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import anyio
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .http_errors import error_response
from .security import key_refusal
from .services.errors import AppError

UPLOAD_PATH = re.compile(r"^/api/v1/collections/[^/]+/documents/?$")
RETRY_AFTER_S = 5


class UploadSlots:
    """A counter of uploads in flight that never waits: taken or refused."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("the spool must hold at least one upload")
        self.slots = slots
        self.in_flight = 0
        self._lock = threading.Lock()

    def try_take(self) -> bool:
        with self._lock:
            if self.in_flight >= self.slots:
                return False
            self.in_flight += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.in_flight -= 1


UPLOADS_NEED_ROLE = "writer"


class UploadAdmissionMiddleware:
    """``key_role(key)``: the role of the active API key, or None (a blocking call: run in a thread)."""

    def __init__(self, app: ASGIApp, slots: UploadSlots, key_role: Callable[[str], str | None]) -> None:
        self.app = app
        self.slots = slots
        self.key_role = key_role

    async def _refusal_before_the_body(self, scope: Scope) -> Response | None:
        # Connection: close: the body was never read, so the connection cannot carry another request.
        key = Headers(scope=scope).get("x-api-key")
        role = None
        if key:
            try:
                role = await anyio.to_thread.run_sync(self.key_role, key)
            except AppError as exc:  # Postgres unavailable: the answer the endpoint would give (503 naming it)
                return error_response(exc.status, exc.detail, {"Connection": "close"})
        refusal = key_refusal(key, role, UPLOADS_NEED_ROLE)
        if refusal is None:
            return None
        status, detail = refusal
        return error_response(status, detail, {"WWW-Authenticate": "ApiKey", "Connection": "close"}
                              if status == 401 else {"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not UPLOAD_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        refusal = await self._refusal_before_the_body(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if not self.slots.try_take():
            refusal = error_response(
                503,
                f"too many uploads in progress ({self.slots.slots} at once fill the upload spool); "
                f"retry in {RETRY_AFTER_S} s",
                # The body was never read: the connection cannot carry another request.
                {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
            )
            await refusal(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.give_back()
