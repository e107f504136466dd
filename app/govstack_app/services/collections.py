"""Collections: created explicitly or on first upload (by a key whose role may create them),
bound to the embedding model that filled them."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..security import CREATES_COLLECTIONS
from .audit import audit
from .backends import db
from .errors import Conflict, Forbidden, ModelMismatch, NotFound


def chroma_name_for(collection: str) -> str:
    return f"govstack_{collection}"


def get_collection(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM collections WHERE name = %s", (name,)).fetchone()


def require_collection(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    coll = get_collection(conn, name)
    if coll is None:
        raise NotFound(f"collection {name!r} does not exist")
    return coll


def check_model(coll: dict[str, Any], model: str) -> None:
    if coll["embedding_model"] != model:
        dim = f", {coll['embedding_dim']} dimensions" if coll.get("embedding_dim") else ""
        raise ModelMismatch(
            f"collection {coll['name']!r} was embedded with model {coll['embedding_model']!r}{dim}, "
            f"but this deployment embeds with {model!r}. Mixing models in one collection is refused; "
            f"rebuild the collection with the new model (runbook: rebuild embeddings, "
            f"`govstack-app rebuild-collection {coll['name']} --yes`)."
        )


def ensure_collection(
    conn: psycopg.Connection, name: str, model: str, created_by: str | None, *, may_create: bool = True
) -> dict[str, Any]:
    coll = get_collection(conn, name)
    if coll is None:
        if not may_create:
            raise Forbidden(f"collection {name!r} does not exist, and creating one needs the "
                            f"{CREATES_COLLECTIONS!r} role")
        conn.execute(
            "INSERT INTO collections (name, chroma_name, embedding_model, created_by)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
            (name, chroma_name_for(name), model, created_by),
        )
        coll = get_collection(conn, name)
        assert coll is not None
    check_model(coll, model)
    return coll


_WITH_TOTALS = """
    SELECT c.name, c.embedding_model, c.embedding_dim, c.created_at,
           count(d.id) AS documents,
           count(d.id) FILTER (WHERE d.is_indexed) AS indexed,
           coalesce(sum(d.size), 0) AS total_bytes
      FROM collections c LEFT JOIN documents d ON d.collection_id = c.id
     WHERE %(all)s OR c.name = ANY(%(names)s)
     GROUP BY c.id ORDER BY c.name
"""


def list_collections(pool: ConnectionPool, scope: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """Every collection, or those of a key's scope."""
    with db(pool) as conn:
        return conn.execute(_WITH_TOTALS, {"all": scope is None, "names": sorted(scope or ())}).fetchall()


def create_collection(
    pool: ConnectionPool, name: str, model: str, *, created_by: str, client_ip: str | None, request_id: str | None
) -> dict[str, Any]:
    """An empty collection bound to the configured embedding model; Conflict when it exists."""
    with db(pool) as conn:
        created = conn.execute(
            "INSERT INTO collections (name, chroma_name, embedding_model, created_by)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING id",
            (name, chroma_name_for(name), model, created_by),
        ).fetchone()
        if created is None:
            conn.rollback()
            raise Conflict(f"collection {name!r} exists")
        audit(conn, "collection.create", "collection", resource_id=name, collection=name, api_key_name=created_by,
              client_ip=client_ip, request_id=request_id, status_code=201, details={"embedding_model": model})
        conn.commit()
        row = conn.execute(_WITH_TOTALS, {"all": False, "names": [name]}).fetchone()
        conn.rollback()
    assert row is not None
    return row
