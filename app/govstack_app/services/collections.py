"""Collections: created on first upload, bound to the embedding model that filled them."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from .backends import db
from .errors import ModelMismatch, NotFound


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


def ensure_collection(conn: psycopg.Connection, name: str, model: str, created_by: str | None) -> dict[str, Any]:
    coll = get_collection(conn, name)
    if coll is None:
        conn.execute(
            "INSERT INTO collections (name, chroma_name, embedding_model, created_by)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
            (name, chroma_name_for(name), model, created_by),
        )
        coll = get_collection(conn, name)
        assert coll is not None
    check_model(coll, model)
    return coll


def list_collections(pool: ConnectionPool) -> list[dict[str, Any]]:
    with db(pool) as conn:
        return conn.execute(
            """
            SELECT c.name, c.embedding_model, c.embedding_dim, c.created_at,
                   count(d.id) AS documents,
                   count(d.id) FILTER (WHERE d.is_indexed) AS indexed,
                   coalesce(sum(d.size), 0) AS total_bytes,
                   count(*) OVER () AS total_collections
              FROM collections c LEFT JOIN documents d ON d.collection_id = c.id
             GROUP BY c.id ORDER BY c.name
            """
        ).fetchall()
