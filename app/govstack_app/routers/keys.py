"""/api/v1/keys: create, list, rotate and revoke API keys (admin only). The bootstrap admin key is
one of them; the last active admin key cannot be revoked through the API."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from ..http_errors import HTTPError, current_request_id
from ..schemas import AUTH_ERRORS, EDGE_ERRORS, KEY_NAME_RE, KeyCreate, KeyCreated, KeyInfo, error_doc
from ..services import keys
from .deps import AdminKey, client_ip, services

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])

KeyName = Annotated[str, Path(pattern=KEY_NAME_RE, max_length=100, description="Key name")]


@router.post(
    "",
    status_code=201,
    response_model=KeyCreated,
    summary="Create an API key (the plaintext is returned once)",
    responses={
        409: error_doc("A key with this name exists"),
        422: error_doc("Bad name, role or collections (an admin key reaches every collection)"),
        **AUTH_ERRORS,
        **EDGE_ERRORS,
    },
)
def create_key(request: Request, body: KeyCreate, principal: AdminKey) -> dict[str, Any]:
    if body.role == "admin" and body.collections is not None:
        # An admin could mint itself an unscoped key anyway.
        raise HTTPError(422, "an admin key reaches every collection: leave collections out")
    return keys.create_key(
        services(request).pool,
        body.name,
        body.role,
        body.collections,
        created_by=principal.name,
        client_ip=client_ip(request),
        request_id=current_request_id(),
    )


@router.get(
    "",
    response_model=list[KeyInfo],
    summary="List API keys with their roles and scopes (never the keys themselves)",
    responses={**AUTH_ERRORS, **EDGE_ERRORS},
)
def list_keys(request: Request, principal: AdminKey) -> list[dict[str, Any]]:
    return keys.list_keys(services(request).pool)


@router.post(
    "/{name}/rotate",
    response_model=KeyCreated,
    summary="A new secret for a key (same name, role and scope); the old one stops working at once",
    responses={
        404: error_doc("No active key with this name"),
        422: error_doc("Malformed name"),
        **AUTH_ERRORS,
        **EDGE_ERRORS,
    },
)
def rotate_key(request: Request, name: KeyName, principal: AdminKey) -> dict[str, Any]:
    return keys.rotate_key(
        services(request).pool, name, rotated_by=principal.name, client_ip=client_ip(request),
        request_id=current_request_id(),
    )


@router.delete(
    "/{name}",
    status_code=204,
    summary="Revoke an API key",
    responses={
        204: {"description": "Revoked"},
        404: error_doc("No active key with this name"),
        409: error_doc("The last active admin key (create another admin key first)"),
        422: error_doc("Malformed name"),
        **AUTH_ERRORS,
        **EDGE_ERRORS,
    },
)
def revoke_key(request: Request, name: KeyName, principal: AdminKey) -> Response:
    keys.revoke_key(
        services(request).pool,
        name,
        revoked_by=principal.name,
        client_ip=client_ip(request),
        request_id=current_request_id(),
    )
    return Response(status_code=204)
