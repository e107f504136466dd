"""/api/v1/search: vector, keyword or hybrid search in one collection."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..analytics.events import note_usage, score_bucket
from ..schemas import AUTH_ERRORS, EDGE_ERRORS, SearchRequest, SearchResponse, error_doc
from ..services import search as search_service
from .deps import ReaderKey, services

router = APIRouter(tags=["search"])


@router.post(
    "/api/v1/search",
    response_model=SearchResponse,
    summary="Vector, keyword (Postgres full-text) or hybrid (reciprocal rank fusion) search",
    responses={
        404: error_doc("No such collection"),
        409: error_doc("The collection was embedded with another model than the one configured"),
        422: error_doc("Malformed request"),
        **AUTH_ERRORS,
        **EDGE_ERRORS,
    },
)
def search(request: Request, body: SearchRequest, principal: ReaderKey) -> dict[str, Any]:
    principal.require_access(body.collection)
    answer = search_service.search(services(request), body.collection, body.query, body.k, body.mode)
    results = answer["results"]
    note_usage(request.state, "search", body.collection,
               score_bucket(body.mode, results[0]["score"] if results else None))
    return answer
