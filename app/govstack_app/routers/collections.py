"""/api/v1/collections: the collections a key may see, and creating one (curator role)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..http_errors import current_request_id
from ..schemas import AUTH_ERRORS, EDGE_ERRORS, CollectionCreate, CollectionInfo, error_doc
from ..services.collections import create_collection, list_collections
from .deps import CuratorKey, ReaderKey, client_ip, services

router = APIRouter(tags=["documents"])


@router.get(
    "/api/v1/collections",
    response_model=list[CollectionInfo],
    summary="Collections with their embedding model and totals (those of the key's scope)",
    responses={**AUTH_ERRORS, **EDGE_ERRORS},
)
def collections(request: Request, principal: ReaderKey) -> list[dict[str, Any]]:
    return list_collections(services(request).pool, principal.collections)


@router.post(
    "/api/v1/collections",
    status_code=201,
    response_model=CollectionInfo,
    summary="Create an empty collection, bound to the configured embedding model",
    responses={
        409: error_doc("A collection with this name exists"),
        422: error_doc("Malformed name"),
        **AUTH_ERRORS,
        **EDGE_ERRORS,
    },
)
def create(request: Request, body: CollectionCreate, principal: CuratorKey) -> dict[str, Any]:
    principal.require_access(body.name)
    svc = services(request)
    return create_collection(svc.pool, body.name, svc.embedder.model_name, created_by=principal.name,
                             client_ip=client_ip(request), request_id=current_request_id())
