"""API keys: only their hashes are stored; the plaintext is returned once, at creation or rotation.

A key has a role (security.ROLES) and a scope: every collection (``collections`` NULL) or a list
of collection names. The bootstrap admin key is a key like any other (rotated and revoked through
the API); the deploy's secret file seeds it, and a changed file is applied once (db.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..security import SCOPED_HASH_PREFIX, generate_api_key, hash_api_key, key_prefix, stored_key_hash
from .audit import audit
from .backends import db
from .errors import Conflict, NotFound

_PUBLIC = "name, role, collections, key_prefix, is_active, created_at, created_by, last_used_at, revoked_at"


def lookup_api_key(pool: ConnectionPool, key: str) -> dict[str, Any] | None:
    """The active key's name, role and scope, or None. last_used_at is refreshed at most once a minute."""
    hashes = [hash_api_key(key), SCOPED_HASH_PREFIX + hash_api_key(key)]
    with db(pool) as conn:
        row = conn.execute(
            "UPDATE api_keys SET last_used_at = now()"
            " WHERE key_hash = ANY(%s) AND is_active"
            "   AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')"
            " RETURNING name, role, collections",
            (hashes,),
        ).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT name, role, collections FROM api_keys WHERE key_hash = ANY(%s) AND is_active", (hashes,)
            ).fetchone()
        conn.commit()
        return row


def create_key(
    pool: ConnectionPool,
    name: str,
    role: str,
    collections: Sequence[str] | None,
    *,
    created_by: str,
    client_ip: str | None,
    request_id: str | None,
) -> dict[str, Any]:
    key = generate_api_key()
    scope = sorted(set(collections)) if collections is not None else None
    with db(pool) as conn:
        try:
            row = conn.execute(
                "INSERT INTO api_keys (name, key_hash, key_prefix, role, collections, created_by)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING name, role, collections, key_prefix, created_at",
                (name, stored_key_hash(key, scope is not None), key_prefix(key), role, scope, created_by),
            ).fetchone()
        except psycopg.errors.UniqueViolation:
            conn.rollback()
            raise Conflict(f"an API key named {name!r} exists") from None
        audit(conn, "key.create", "api_key", resource_id=name, api_key_name=created_by, client_ip=client_ip,
              request_id=request_id, status_code=201, details={"role": role, "collections": scope})
        conn.commit()
    assert row is not None
    return {**row, "api_key": key}


def list_keys(pool: ConnectionPool) -> list[dict[str, Any]]:
    with db(pool) as conn:
        rows = conn.execute(f"SELECT {_PUBLIC} FROM api_keys ORDER BY name").fetchall()  # noqa: S608 - constant
        conn.rollback()
    return rows


def _refuse_last_admin(conn: psycopg.Connection, name: str) -> None:
    """Revoking the last active admin key would leave nobody to manage keys through the API
    (the operator's way back is then `govstack admin-key rotate`, on the host)."""
    others = conn.execute(
        "SELECT count(*) AS n FROM api_keys WHERE role = 'admin' AND is_active AND name <> %s", (name,)
    ).fetchone()
    target = conn.execute("SELECT role, is_active FROM api_keys WHERE name = %s FOR UPDATE", (name,)).fetchone()
    if target and target["role"] == "admin" and target["is_active"] and not others["n"]:
        raise Conflict(f"{name!r} is the last active admin key: create another admin key first")


def revoke_key(
    pool: ConnectionPool, name: str, *, revoked_by: str, client_ip: str | None, request_id: str | None
) -> None:
    with db(pool) as conn:
        # One revocation of an admin key at a time: two admins revoking each other
        # concurrently must not both pass the last-admin check.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('govstack-admin-keys'))")
        _refuse_last_admin(conn, name)
        n = conn.execute(
            "UPDATE api_keys SET is_active = false, revoked_at = now() WHERE name = %s AND is_active", (name,)
        ).rowcount
        if not n:
            conn.rollback()
            raise NotFound(f"no active API key named {name!r}")
        audit(conn, "key.revoke", "api_key", resource_id=name, api_key_name=revoked_by, client_ip=client_ip,
              request_id=request_id, status_code=204)
        conn.commit()


def rotate_key(
    pool: ConnectionPool, name: str, *, rotated_by: str, client_ip: str | None, request_id: str | None
) -> dict[str, Any]:
    """A new secret for an active key (same name, role and scope); the old one stops working at once."""
    key = generate_api_key()
    with db(pool) as conn:
        row = conn.execute(
            "UPDATE api_keys SET key_hash = CASE WHEN collections IS NULL THEN %s ELSE %s END, key_prefix = %s"
            " WHERE name = %s AND is_active RETURNING name, role, collections, key_prefix, created_at",
            (stored_key_hash(key, False), stored_key_hash(key, True), key_prefix(key), name),
        ).fetchone()
        if row is None:
            conn.rollback()
            raise NotFound(f"no active API key named {name!r}")
        audit(conn, "key.rotate", "api_key", resource_id=name, api_key_name=rotated_by, client_ip=client_ip,
              request_id=request_id, status_code=200)
        conn.commit()
    return {**row, "api_key": key}


def set_admin_key(conn: psycopg.Connection, name: str, key: str, *, actor: str) -> None:
    """Make ``key`` the secret of the admin key ``name``, active and reaching every collection
    (created when missing). The operator's way in that needs no API key: the deploy's seed and
    `govstack admin-key rotate` (through `govstack-app keys set-admin`)."""
    conn.execute(
        """
        INSERT INTO api_keys (name, key_hash, key_prefix, role, created_by)
        VALUES (%s, %s, %s, 'admin', %s)
        ON CONFLICT (name) DO UPDATE
           SET key_hash = EXCLUDED.key_hash, key_prefix = EXCLUDED.key_prefix, role = 'admin',
               collections = NULL, is_active = true, revoked_at = NULL
        """,
        (name, stored_key_hash(key, False), key_prefix(key), actor),
    )
    audit(conn, "key.rotate", "api_key", resource_id=name, api_key_name=actor, details={"by": "secret"})
