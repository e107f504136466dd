"""What every router shares: API-key authentication (roles reader < writer < curator < admin, each
key confined to a set of collections or to none), the app's services and settings, the client's
address and the request id."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from ..http_errors import HTTPError
from ..schemas import CollectionPath
from ..security import CREATES_COLLECTIONS, key_refusal, role_allows, scope_allows
from ..services.backends import Services
from ..services.keys import lookup_api_key
from ..settings import Settings


class Principal(BaseModel):
    name: str
    role: str
    # None: every collection.
    collections: frozenset[str] | None = None

    def may_access(self, collection: str) -> bool:
        return scope_allows(self.collections, collection)

    def require_access(self, collection: str) -> None:
        """403 for a collection outside the key's scope, whether or not it exists."""
        if not self.may_access(collection):
            raise HTTPError(403, f"API key {self.name!r} may not access collection {collection!r}")

    @property
    def may_create_collections(self) -> bool:
        return role_allows(self.role, CREATES_COLLECTIONS)


api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="API key; roles reader < writer < curator < admin, each key confined to its collections or not",
)


def services(request: Request) -> Services:
    """Built by the lifespan: only routes that got past authentication reach it."""
    return request.app.state.services


def settings(request: Request) -> Settings:
    """The settings create_app was given; set before the lifespan runs."""
    return request.app.state.settings


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def require(role: str):  # noqa: ANN201 - FastAPI dependency factory
    def dependency(
        request: Request,
        key: Annotated[str | None, Security(api_key_header)] = None,
    ) -> Principal:
        row = lookup_api_key(services(request).pool, key) if key else None
        if row is not None:
            structlog.contextvars.bind_contextvars(api_key_name=row["name"])
            # For the usage event (analytics/events.py), which keeps only an HMAC of it.
            request.state.api_key_name = row["name"]
        refusal = key_refusal(key, None if row is None else row["role"], role)
        if refusal is not None:
            status, detail = refusal
            raise HTTPError(status, detail, {"WWW-Authenticate": "ApiKey"} if status == 401 else None)
        scope = row["collections"]
        return Principal(name=row["name"], role=row["role"], collections=None if scope is None else frozenset(scope))

    return dependency


def require_in_collection(role: str):  # noqa: ANN201 - FastAPI dependency factory
    """``require(role)`` and the path's {collection} inside the key's scope."""

    # A default, not Annotated: this module's annotations are strings (__future__), and one
    # naming the factory's own `role` could not be resolved from them.
    def dependency(collection: CollectionPath, principal: Principal = Depends(require(role))) -> Principal:  # noqa: B008
        principal.require_access(collection)
        return principal

    return dependency


ReaderKey = Annotated[Principal, Depends(require("reader"))]
CuratorKey = Annotated[Principal, Depends(require("curator"))]
AdminKey = Annotated[Principal, Depends(require("admin"))]
CollectionReaderKey = Annotated[Principal, Depends(require_in_collection("reader"))]
CollectionWriterKey = Annotated[Principal, Depends(require_in_collection("writer"))]
