"""Issue 12 §5: least privilege in Postgres, on the deployed stack.

- The app connects as a role that owns nothing: with the app's own
  credentials (inside its API container) DROP, TRUNCATE, DELETE or UPDATE of
  the audit trail, DDL of any kind and the partition-drop function below the
  floor all fail; reading and appending the audit trail works, and so does
  the app (upload, index, search, delete).
- In schema analytics (migration 0006) the app's role may append usage
  events and delete old ones, nothing else.
- Only the one-off migrate service mounts the owner's password.
- A stack whose app role owned everything (as before the split) is upgraded
  in place by `govstack up`; a second `up` changes nothing.
- The worker survives a Postgres restart while documents are being indexed:
  its pool's reconnected connections read rows as dicts, every document ends
  indexed and the worker container never restarted.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.conftest import run_govstack
from tests.e2e.test_app_support import (
    POSTGRES_SERVICE,
    WORKER_SERVICE,
    Api,
    app_exec,
    docker,
    wait_indexed,
)
from tests.e2e.test_deploy import changed_operations

# Each statement in its own transaction, as the app's role, with the app's own connection
# settings and password file; prints {statement: sqlstate or "ok"}.
_AS_APP_ROLE = r"""
import json, sys
import psycopg
from govstack_app.settings import Settings
results = {}
with psycopg.connect(Settings().conninfo(), autocommit=True) as conn:
    for statement in json.loads(sys.argv[1]):
        try:
            with conn.transaction():
                conn.execute(statement)
                raise RuntimeError("rollback")  # nothing a probe did may stay
        except RuntimeError:
            results[statement] = "ok"
        except psycopg.Error as exc:
            results[statement] = exc.sqlstate or type(exc).__name__
print(json.dumps(results))
"""
INSUFFICIENT_PRIVILEGE = "42501"


def as_app_role(stack, statements: list[str]) -> dict[str, str]:
    out = app_exec(stack, "python3", "-c", _AS_APP_ROLE, json.dumps(statements)).stdout
    return json.loads(out.strip().splitlines()[-1])


def assert_app_role_may(stack, *, refused: list[str], allowed: list[str]) -> None:
    results = as_app_role(stack, refused + allowed)
    assert {statement: results[statement] for statement in refused} == {
        statement: INSUFFICIENT_PRIVILEGE for statement in refused}
    assert {statement: results[statement] for statement in allowed} == {statement: "ok" for statement in allowed}


def owned_by(stack, role: str) -> int:
    return int(stack.psql(
        "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid) + (SELECT count(*) FROM pg_proc "  # noqa: S608
        "WHERE proowner = r.oid) + (SELECT count(*) FROM pg_database WHERE datdba = r.oid) "
        f"FROM pg_roles r WHERE rolname = '{role}'")[0][0])


def test_the_app_role_owns_nothing_and_cannot_drop_truncate_or_delete_audit_rows(stack):
    s = stack.settings.postgres
    assert owned_by(stack, s.app_user) == 0
    assert owned_by(stack, s.owner_user) > 0
    partition = stack.psql("SELECT govstack_ensure_audit_partition(now())")[0][0]
    refused = [
        "DROP TABLE audit_logs",
        "TRUNCATE audit_logs",
        "DELETE FROM audit_logs",
        "UPDATE audit_logs SET action = 'forged'",
        f"DELETE FROM {partition}",
        f"TRUNCATE {partition}",
        f"DROP TABLE {partition}",
        f"ALTER TABLE audit_logs DETACH PARTITION {partition}",
        f"SELECT govstack_drop_audit_partition('{partition}')",  # younger than the floor
        "TRUNCATE documents",
        "DROP TABLE documents",
        "ALTER TABLE documents ADD COLUMN forged text",
        "CREATE TABLE forged (x int)",
        "UPDATE audit_retention_floor SET months = 1",
        "DELETE FROM schema_migrations",
        # Migration 0003's objects: the column is the owner's, the seeds append-only.
        "ALTER TABLE api_keys DROP COLUMN collections",
        "DROP TABLE bootstrap_key_seeds",
        "TRUNCATE bootstrap_key_seeds",
        "DELETE FROM bootstrap_key_seeds",
    ]
    allowed = [
        "SELECT count(*) FROM audit_logs",
        "INSERT INTO audit_logs (action, resource_type) VALUES ('test.probe', 'test')",
        "UPDATE documents SET filename = filename WHERE false",
        "DELETE FROM chunks WHERE false",
        "UPDATE api_keys SET collections = collections WHERE false",
        "INSERT INTO bootstrap_key_seeds (key_hash) VALUES ('probe')",
    ]
    assert_app_role_may(stack, refused=refused, allowed=allowed)


def test_in_schema_analytics_the_app_role_writes_and_expires_events_only(stack):
    """Migration 0006: the API appends usage events and the worker's retention deletes old ones
    (grants made by migrate, as the owner); nothing else there is the app's, and neither the app's
    role nor the analytics service's owns anything."""
    if not stack.settings.analytics.enabled:
        pytest.skip("analytics is disabled in this inventory: schema analytics has no readers")
    assert owned_by(stack, stack.settings.postgres.app_user) == owned_by(stack, "govstack_analytics") == 0
    refused = [
        "DROP TABLE analytics.events",
        "TRUNCATE analytics.events",
        "UPDATE analytics.events SET kind = kind WHERE false",
        "SELECT count(*) FROM analytics.releases",
        "SELECT count(*) FROM analytics.privacy_ledger",
        "INSERT INTO analytics.privacy_ledger (consumer, period_start, release, query, outcome, epsilon)"
        " VALUES ('forged', current_date, 'x', '{}', 'refused', 0)",
        "SELECT * FROM analytics.consumer_of_key('x')",
        "CREATE TABLE analytics.forged (x int)",
    ]
    allowed = [
        "INSERT INTO analytics.events (occurred_at, kind, actor, latency_bucket)"
        " VALUES (date_trunc('minute', now()), 'view', repeat('0', 32), 0)",
        "SELECT count(*) FROM analytics.events",
        "DELETE FROM analytics.events WHERE false",
    ]
    assert_app_role_may(stack, refused=refused, allowed=allowed)


def test_only_the_migrate_service_reads_the_owners_password(stack):
    rendered = docker("compose", "-p", stack.app_project, "-f", stack.compose_file(stack.app_project),
                      "--profile", "migrate", "config", "--format", "json").stdout
    services = json.loads(rendered)["services"]
    readers = {name for name, service in services.items()
               if any(secret["source"] == "postgres_owner_password" for secret in service.get("secrets", []))}
    assert readers == {"migrate"}
    assert services["api"]["environment"]["GOVSTACK_DATABASE_USER"] == stack.settings.postgres.app_user
    listing = app_exec(stack, "ls", "/run/secrets").stdout.split()
    assert "postgres_owner_password" not in listing and "postgres_app_password" in listing


def test_the_app_still_uploads_searches_and_deletes(stack):
    api = Api(stack, stack.admin_api_key)
    collection = f"lp-{uuid.uuid4().hex[:8]}"
    text = f"Least privilege registry entry {uuid.uuid4().hex[:8]}: the ferry timetable of the northern islands."
    upload = api.upload(collection, "ferry.txt", text.encode())
    assert upload.status_code == 201, upload.text
    doc = upload.json()
    wait_indexed(stack, [doc["id"]])
    results = api.search(collection, "ferry timetable northern islands", "hybrid")
    assert results and results[0]["document_id"] == doc["id"], results
    deleted = api.call("DELETE", f"/api/v1/collections/{collection}/documents/{doc['id']}")
    assert deleted.status_code in (200, 204), deleted.text
    audited = stack.psql("SELECT count(*) FROM audit_logs WHERE resource_id = " + f"'{doc['id']}'")  # noqa: S608
    assert int(audited[0][0]) >= 2, "the upload and the delete were audited"


def test_a_stack_whose_app_role_owned_everything_is_upgraded_in_place_by_up(stack):
    s = stack.settings.postgres
    # A table a later migration makes (as the owner): the grants are the migrate run's, not a
    # list of today's tables.
    stack.psql(f"DROP TABLE IF EXISTS later_migration_probe; CREATE TABLE later_migration_probe (x int); "
               f"ALTER TABLE later_migration_probe OWNER TO {s.owner_user}")
    # The state of a stack from before the split: the app's role owns the database and schema.
    stack.psql(f"REASSIGN OWNED BY {s.owner_user} TO {s.app_user}")
    assert owned_by(stack, s.owner_user) == 0
    first = run_govstack("up", "-i", stack.inventory)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert owned_by(stack, s.app_user) == 0
    changed = changed_operations(first.stdout)
    assert any("owns nothing" in op for op in changed), changed
    assert any("Schema of" in op for op in changed), changed  # the migrate run narrowed the privileges
    probes = {"DELETE FROM audit_logs": INSUFFICIENT_PRIVILEGE,
              "DROP TABLE later_migration_probe": INSUFFICIENT_PRIVILEGE,
              "INSERT INTO later_migration_probe VALUES (1)": "ok"}
    assert as_app_role(stack, list(probes)) == probes
    again = run_govstack("up", "-i", stack.inventory)
    assert again.returncode == 0, again.stderr[-2000:]
    assert changed_operations(again.stdout) == []
    stack.psql("DROP TABLE later_migration_probe")


WORKER_DOCS = 12


@pytest.fixture
def indexing_color_set(stack):
    """The serving color indexes (as after any blue/green deploy): the worker reads that row."""
    before = stack.psql("SELECT value FROM app_state WHERE key = 'indexing_color'")
    color = stack.current_release().color
    stack.psql("INSERT INTO app_state (key, value) VALUES ('indexing_color', " + f"'{color}') "
               "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")
    yield color
    if not before:
        stack.psql("DELETE FROM app_state WHERE key = 'indexing_color'")


def _worker_state(stack) -> tuple[str, str, str]:
    container = stack.service_container(WORKER_SERVICE)
    out = docker("inspect", "--format", "{{.Id}} {{.RestartCount}} {{.State.StartedAt}}", container).stdout
    return tuple(out.split())  # type: ignore[return-value]


def test_the_worker_survives_a_postgres_restart_while_indexing(stack, indexing_color_set):
    api = Api(stack, stack.admin_api_key)
    collection = f"pgrestart-{uuid.uuid4().hex[:8]}"
    before = _worker_state(stack)
    ids = []
    for n in range(WORKER_DOCS):
        body = f"Harbour log {n} {uuid.uuid4().hex}: tides, cargo and the lighthouse keeper's notes.".encode()
        response = api.upload(collection, f"log-{n}.txt", body)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    postgres = stack.service_container(POSTGRES_SERVICE)
    docker("restart", "--time", "10", postgres, timeout=120)
    stack.wait_healthy(POSTGRES_SERVICE)
    # A second restart once the pool has reconnected: every pooled connection is new again.
    time.sleep(5)
    docker("restart", "--time", "10", postgres, timeout=120)
    stack.wait_healthy(POSTGRES_SERVICE)
    states = wait_indexed(stack, ids)
    assert all(state["is_indexed"] for state in states.values()), states
    after = _worker_state(stack)
    assert after == before, f"the worker container restarted: {before} -> {after}"
    logs = docker("logs", "--since", before[2], stack.service_container(WORKER_SERVICE))
    assert "Traceback" not in logs.stdout + logs.stderr, (logs.stdout + logs.stderr)[-3000:]
