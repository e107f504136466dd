"""/api/v1/collections: every collection with its embedding model and totals."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..schemas import AUTH_ERRORS, CollectionInfo
from ..services.collections import list_collections
from .deps import ReaderKey, services

router = APIRouter(tags=["documents"])


@router.get(
    "/api/v1/collections",
    response_model=list[CollectionInfo],
    summary="Collections with their embedding model and totals",
    responses=AUTH_ERRORS,
)
def collections(request: Request, principal: ReaderKey) -> list[dict[str, Any]]:
    return list_collections(services(request).pool)
