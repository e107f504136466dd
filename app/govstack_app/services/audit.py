"""The audit trail: one row per state change, written in the caller's transaction."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def audit(
    conn: psycopg.Connection,
    action: str,
    resource_type: str,
    *,
    resource_id: object = None,
    collection: str | None = None,
    api_key_name: str | None = None,
    client_ip: str | None = None,
    request_id: str | None = None,
    status_code: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Insert one audit row (inside the caller's transaction, as a savepoint). A missing month
    partition is created on the fly."""
    params = (
        action,
        resource_type,
        None if resource_id is None else str(resource_id),
        collection,
        api_key_name,
        client_ip,
        request_id,
        status_code,
        Jsonb(details or {}),
    )
    sql = (
        "INSERT INTO audit_logs (action, resource_type, resource_id, collection, api_key_name,"
        " client_ip, request_id, status_code, details) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    )
    try:
        with conn.transaction():
            conn.execute(sql, params)
    except psycopg.errors.CheckViolation:  # "no partition of relation audit_logs found for row"
        with conn.transaction():
            conn.execute("SELECT govstack_ensure_audit_partition(now())")
            conn.execute(sql, params)
