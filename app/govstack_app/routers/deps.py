"""What every router shares: API-key authentication (roles reader < writer < admin), the app's
services and settings, the client's address and the request id."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from ..http_errors import HTTPError
from ..security import role_allows
from ..services.backends import Services
from ..services.keys import lookup_api_key
from ..settings import Settings


class Principal(BaseModel):
    name: str
    role: str


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key; roles reader < writer < admin")


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
        if not key:
            raise HTTPError(401, "missing API key (X-API-Key header)", {"WWW-Authenticate": "ApiKey"})
        row = lookup_api_key(services(request).pool, key)
        if row is None:
            raise HTTPError(401, "invalid API key", {"WWW-Authenticate": "ApiKey"})
        principal = Principal(name=row["name"], role=row["role"])
        structlog.contextvars.bind_contextvars(api_key_name=principal.name)
        if not role_allows(principal.role, role):
            raise HTTPError(403, f"role {principal.role!r} may not do this (needs {role!r})")
        return principal

    return dependency


ReaderKey = Annotated[Principal, Depends(require("reader"))]
WriterKey = Annotated[Principal, Depends(require("writer"))]
AdminKey = Annotated[Principal, Depends(require("admin"))]
