"""/api/v1/keys: create, list and revoke API keys (admin only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..http_errors import current_request_id
from ..schemas import AUTH_ERRORS, KeyCreate, KeyCreated, KeyInfo, error_doc
from ..services import keys
from .deps import AdminKey, client_ip, services

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])


@router.post(
    "",
    status_code=201,
    response_model=KeyCreated,
    summary="Create an API key (the plaintext is returned once)",
    responses={409: error_doc("A key with this name exists"), 422: error_doc("Bad name or role"), **AUTH_ERRORS},
)
def create_key(request: Request, body: KeyCreate, principal: AdminKey) -> dict[str, Any]:
    return keys.create_key(
        services(request).pool,
        body.name,
        body.role,
        created_by=principal.name,
        client_ip=client_ip(request),
        request_id=current_request_id(),
    )


@router.get(
    "",
    response_model=list[KeyInfo],
    summary="List API keys (never the keys themselves)",
    responses=AUTH_ERRORS,
)
def list_keys(request: Request, principal: AdminKey) -> list[dict[str, Any]]:
    return keys.list_keys(services(request).pool)


@router.delete(
    "/{name}",
    status_code=204,
    summary="Revoke an API key",
    responses={
        204: {"description": "Revoked"},
        404: error_doc("No such key"),
        409: error_doc("The bootstrap key is managed by the deploy"),
        422: error_doc("Malformed name"),
        **AUTH_ERRORS,
    },
)
def revoke_key(request: Request, name: str, principal: AdminKey) -> Response:
    keys.revoke_key(
        services(request).pool,
        name,
        revoked_by=principal.name,
        client_ip=client_ip(request),
        request_id=current_request_id(),
    )
    return Response(status_code=204)
