"""API keys: only their hashes are stored; the plaintext is returned once, at creation."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..db import BOOTSTRAP_KEY_NAME
from ..security import generate_api_key, hash_api_key, key_prefix
from .audit import audit
from .backends import db
from .errors import Conflict, NotFound


def lookup_api_key(pool: ConnectionPool, key: str) -> dict[str, Any] | None:
    with db(pool) as conn:
        row = conn.execute(
            "UPDATE api_keys SET last_used_at = now()"
            " WHERE key_hash = %s AND is_active"
            "   AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')"
            " RETURNING name, role",
            (hash_api_key(key),),
        ).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT name, role FROM api_keys WHERE key_hash = %s AND is_active", (hash_api_key(key),)
            ).fetchone()
        conn.commit()
        return row


def create_key(
    pool: ConnectionPool, name: str, role: str, *, created_by: str, client_ip: str | None, request_id: str | None
) -> dict[str, Any]:
    key = generate_api_key()
    with db(pool) as conn:
        try:
            row = conn.execute(
                "INSERT INTO api_keys (name, key_hash, key_prefix, role, created_by)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING name, role, key_prefix, created_at",
                (name, hash_api_key(key), key_prefix(key), role, created_by),
            ).fetchone()
        except psycopg.errors.UniqueViolation:
            conn.rollback()
            raise Conflict(f"an API key named {name!r} exists") from None
        audit(
            conn,
            "key.create",
            "api_key",
            resource_id=name,
            api_key_name=created_by,
            client_ip=client_ip,
            request_id=request_id,
            status_code=201,
            details={"role": role},
        )
        conn.commit()
    assert row is not None
    return {**row, "api_key": key}


def list_keys(pool: ConnectionPool) -> list[dict[str, Any]]:
    with db(pool) as conn:
        rows = conn.execute(
            "SELECT name, role, key_prefix, is_active, created_at, created_by, last_used_at, revoked_at"
            " FROM api_keys ORDER BY name"
        ).fetchall()
        conn.rollback()
    return rows


def revoke_key(
    pool: ConnectionPool, name: str, *, revoked_by: str, client_ip: str | None, request_id: str | None
) -> None:
    if name == BOOTSTRAP_KEY_NAME:
        raise Conflict("the bootstrap admin key is managed by the deploy (rotate its secret)")
    with db(pool) as conn:
        n = conn.execute(
            "UPDATE api_keys SET is_active = false, revoked_at = now() WHERE name = %s AND is_active", (name,)
        ).rowcount
        if not n:
            conn.rollback()
            raise NotFound(f"no active API key named {name!r}")
        audit(
            conn,
            "key.revoke",
            "api_key",
            resource_id=name,
            api_key_name=revoked_by,
            client_ip=client_ip,
            request_id=request_id,
            status_code=204,
        )
        conn.commit()
