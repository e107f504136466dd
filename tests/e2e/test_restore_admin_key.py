# ruff: noqa: F811  (pytest fixtures are imported from backup_support and used as arguments)
"""A restore of a database older than the operator's bootstrap admin key.

The operator rotated the key (`govstack admin-key rotate`: the secret file, then the database) after
the run they restore. The restored database knows only the key before, so until the next deploy
the API refused the key in the secret file, the operator's only way in, and accepted the one
rotated away (found on a dev stack: 401 after `govstack restore`). The API now applies a secret
file value its database never saw when it starts, which the restore does last.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import requests

from tests.e2e.backup_support import (  # noqa: F401 - fixtures
    cleanup_resumed,
    cli,
    cli_json,
    drop_kept_databases,
    in_test_stack,
)


def _file_key(stack: Any) -> str:
    return Path(stack.settings.secrets_dir, "app_admin_api_key").read_text().strip()


def _keys_status(stack: Any, key: str) -> int:
    return requests.get(f"{stack.base_url}/api/v1/keys", headers={"X-API-Key": key}, verify=stack.verify,
                        timeout=30).status_code


def test_a_restore_older_than_the_admin_key_keeps_the_operators_key_and_not_the_rotated_one(
        stack, drop_kept_databases, cleanup_resumed):
    in_test_stack(stack)
    run = cli_json(stack, "backup")["run"]
    before = _file_key(stack)
    rotated = cli(stack, "admin-key", "rotate", "--lock-wait", "300", timeout=900)
    assert rotated.returncode == 0, rotated.stderr[-2000:]
    after = stack.admin_api_key = _file_key(stack)
    assert after != before and _keys_status(stack, after) == 200 and _keys_status(stack, before) == 401

    (since,) = stack.psql("SELECT now()")[0]
    restored = cli_json(stack, "restore", "--snapshot", run, "--component", "postgres", "--force")
    assert restored["components"]["postgres"]["ok"], restored

    assert _keys_status(stack, after) == 200, "the secret file's key is refused after the restore"
    assert _keys_status(stack, before) == 401, "the key rotated away works again after the restore"
    # Applied as a deploy applies it: audited, and recorded as seen, so no later start applies it
    # again over a rotation or revocation through the API.
    (applied,) = stack.psql("SELECT count(*) FROM audit_logs WHERE action = 'key.rotate' "
                            "AND resource_id = 'bootstrap-admin' AND api_key_name = 'deploy secret' "
                            f"AND created_at > '{since}'::timestamptz")[0]
    assert int(applied) >= 1, applied
    digest = hashlib.sha256(after.encode()).hexdigest()
    assert stack.psql(f"SELECT 1 FROM bootstrap_key_seeds WHERE key_hash = '{digest}'") == [("1",)]
