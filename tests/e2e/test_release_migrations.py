"""Migrations a rollback survives, and one that cannot get its lock.

A test-only release vN+1 is the serving image vN plus one migration that
expands the schema (a column and an index on documents), layered on vN in
seconds. First it is deployed while another session holds a lock that
conflicts with the migration (a read left open in a transaction, as a long
report would): the migration gives up after lock_timeout (a setting, 2 s
here), rolled back whole, and the deploy fails with a one-line cause,
traffic and schema as they were. Once the lock is released the same deploy
works. Then a rollback to vN: vN runs on the expanded schema and still
serves uploads and searches. Last, the safety copy that deploy took before
migrating is a restic snapshot the ledger names, and `govstack restore`
puts the database back to it (the migration undone).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from govstack.release import source_version
from tests.conftest import run_govstack
from tests.e2e.test_app_support import Api, wait_indexed

MIGRATION = "0900_e2e_expand"
EXPAND_SQL = f"""-- {MIGRATION}: test-only, layered on the serving image by tests/e2e/test_release_migrations.py.
ALTER TABLE documents ADD COLUMN e2e_summary text;
CREATE INDEX documents_e2e_summary_idx ON documents (e2e_summary);
"""
LOCK_TIMEOUT_S = 2
HOLDER = "govstack-e2e-lock-holder"


def record(stack) -> dict:
    return json.loads(Path(stack.settings.stack_root, "state", "release.json").read_text())


def schema(stack) -> dict:
    column = stack.psql("SELECT count(*) FROM information_schema.columns "
                        "WHERE table_name = 'documents' AND column_name = 'e2e_summary'")[0][0]
    index = stack.psql("SELECT count(*) FROM pg_indexes WHERE indexname = 'documents_e2e_summary_idx'")[0][0]
    applied = stack.psql(f"SELECT count(*) FROM schema_migrations WHERE version = '{MIGRATION}'")[0][0]
    return {"column": column, "index": index, "version_row": applied}


def drop_expansion(stack) -> None:
    """The schema without MIGRATION (vN never used its column)."""
    stack.psql(f"DROP INDEX IF EXISTS documents_e2e_summary_idx; "
               f"ALTER TABLE documents DROP COLUMN IF EXISTS e2e_summary; "
               f"DELETE FROM schema_migrations WHERE version = '{MIGRATION}'")


def migrations_dir(version: str) -> tuple[str, list[str]]:
    """Where an app image keeps its migrations, and the files there."""
    out = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python3", f"govstack/app:{version}", "-c",
         "import govstack_app.migrations as m, os; d = os.path.dirname(m.__file__); print(d, *os.listdir(d))"],
        capture_output=True, text=True, check=True).stdout.split()
    return out[0], out[1:]


@pytest.fixture(scope="module")
def expanded(stack, tmp_path_factory):
    """(vN, vN+1): the serving version and the same image with MIGRATION added."""
    migrations = migrations_dir(record(stack)["version"])
    if (MIGRATION + ".sql") in migrations[1]:
        # An interrupted run left vN+1 serving, and other modules may have
        # aliased it under new tags: vN must be the app source, without MIGRATION.
        result = run_govstack("deploy", "--version", source_version(), "-i", stack.inventory, timeout=1800)
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
        migrations = migrations_dir(record(stack)["version"])
    drop_expansion(stack)  # what an earlier, interrupted run may have left
    old = record(stack)["version"]
    new = f"expand-{uuid.uuid4().hex[:6]}"
    context = tmp_path_factory.mktemp("expand")
    (context / f"{MIGRATION}.sql").write_text(EXPAND_SQL)
    (context / "Dockerfile").write_text(f"FROM govstack/app:{old}\nCOPY {MIGRATION}.sql {migrations[0]}/\n")
    subprocess.run(["docker", "build", "-q", "-t", f"govstack/app:{new}", str(context)], check=True,
                   capture_output=True)
    yield old, new
    # The shared stack gets vN and its schema back (a later module's alias of
    # the serving image must not carry MIGRATION).
    if record(stack)["version"] == new:
        run_govstack("rollback", "-i", stack.inventory, timeout=900)
    drop_expansion(stack)


def hold_conflicting_lock(stack) -> subprocess.Popen:
    """Another session reads documents inside an open transaction: it holds
    ACCESS SHARE, which ALTER TABLE's ACCESS EXCLUSIVE must wait for."""
    holder = subprocess.Popen(
        ["docker", "exec", "-i", "-e", f"PGAPPNAME={HOLDER}", stack.service_container("postgres"),
         "psql", "-X", "-q", "-U", "postgres", "-d", stack.settings.postgres.database],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    holder.stdin.write("BEGIN;\nSELECT count(*) FROM documents;\nSELECT pg_sleep(900);\n")
    holder.stdin.flush()
    deadline = time.monotonic() + 30
    while not stack.psql(
            "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            f"WHERE a.application_name = '{HOLDER}' AND l.relation = 'documents'::regclass AND l.granted"):
        assert time.monotonic() < deadline and holder.poll() is None, "the lock holder never held its lock"
        time.sleep(0.2)
    return holder


def release_lock(stack, holder: subprocess.Popen) -> None:
    stack.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{HOLDER}'")
    holder.kill()
    holder.wait(timeout=30)


def test_a_migration_that_cannot_get_its_lock_fails_whole_and_the_deploy_stays_on_the_old_color(stack, expanded):
    _, new = expanded
    before, schema_before = record(stack), schema(stack)
    assert schema_before == {"column": "0", "index": "0", "version_row": "0"}
    holder = hold_conflicting_lock(stack)
    try:
        result = run_govstack("deploy", "--version", new, "-i", stack.inventory, timeout=900,
                              env={"GOVSTACK__APP__MIGRATION_LOCK_TIMEOUT_S": str(LOCK_TIMEOUT_S)})
        # The serving version kept answering while the migration waited (its lock_timeout bounded the queue).
        ready = Api(stack, None).call("GET", "/ready")
    finally:
        release_lock(stack, holder)
    assert result.returncode != 0
    cause = result.stderr.strip().splitlines()[-1]
    assert cause == (f"govstack: deploy of {new} failed, traffic stays on the previous color: @local: migrations of "
                     f"the new version failed: govstack-app: migration {MIGRATION} could not get its lock within "
                     f"{LOCK_TIMEOUT_S} s (lock_timeout); nothing of it was applied"), cause
    assert record(stack) == before
    assert ready.status_code == 200 and ready.headers["x-govstack-color"] == before["color"]
    assert schema(stack) == schema_before

    # The lock is gone: the same release goes through.
    result = run_govstack("deploy", "--version", new, "-i", stack.inventory, timeout=900,
                          env={"GOVSTACK__APP__MIGRATION_LOCK_TIMEOUT_S": str(LOCK_TIMEOUT_S)})
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    assert record(stack)["version"] == new
    assert schema(stack) == {"column": "1", "index": "1", "version_row": "1"}


def test_the_previous_release_serves_uploads_and_searches_on_the_expanded_schema(stack, expanded):
    old, new = expanded
    assert record(stack)["version"] == new, "needs the expanded release serving (the test before)"
    result = run_govstack("rollback", "-i", stack.inventory, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    assert record(stack)["version"] == old
    assert schema(stack) == {"column": "1", "index": "1", "version_row": "1"}, "a rollback never undoes a migration"

    api = Api(stack, stack.admin_api_key)
    collection = f"expand-{uuid.uuid4().hex[:6]}"
    marker = uuid.uuid4().hex[:10]
    upload = api.upload(collection, "notice.txt",
                        f"Public notice {marker}: the harbour bridge closes for repairs in spring.".encode())
    assert upload.status_code == 201, upload.text
    assert upload.headers.get("x-govstack-color") == record(stack)["color"]
    wait_indexed(stack, [int(upload.json()["id"])])
    for mode in ("keyword", "vector", "hybrid"):
        results = api.search(collection, f"harbour bridge repairs {marker}", mode)
        assert results and results[0]["document_id"] == upload.json()["id"], (mode, results)


def ledger(stack) -> list[dict]:
    path = Path(stack.settings.stack_root, "state", "ledger.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_pre_deploy_copy_is_a_restic_snapshot_that_restore_names(stack, expanded):
    _, new = expanded
    deployed = [r for r in ledger(stack) if (r["action"], r["version"], r["result"]) == ("deploy", new, "ok")]
    assert deployed, "needs the expanded release's deploy (the tests before)"
    copy = deployed[-1]["pre_deploy_copy"]
    assert copy.startswith("pre-deploy-")
    # No plain dump on disk any more (the old code path wrote <time>-<version>.dump there).
    assert not list(Path(stack.settings.stack_root, "backups", "pre-deploy").glob(f"*-{new}.dump"))

    listed = json.loads(run_govstack("backup", "--list", "--json", "-i", stack.inventory, timeout=300).stdout)
    entry = next(run for run in listed if run["run"] == copy)
    assert entry["kind"] == "pre-deploy" and entry["complete"]
    assert {"postgres", "postgres_globals", "manifest"} <= set(entry["snapshots"])
    assert all(run["kind"] == "run" for run in listed if not run["run"].startswith("pre-deploy-"))

    everything = run_govstack("restore", "--snapshot", copy, "--force", "-i", stack.inventory, timeout=300)
    assert everything.returncode == 2
    assert everything.stderr.strip().splitlines()[-1] == (
        f"govstack: run {copy} holds postgres only (a pre-deploy copy); restore it with --component postgres")

    result = run_govstack("restore", "--snapshot", copy, "--component", "postgres", "--force", "--json",
                          "-i", stack.inventory, timeout=1800)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    assert report["run"] == copy and report["components"]["postgres"]["ok"]
    # The database is as it was before that deploy migrated.
    assert schema(stack) == {"column": "0", "index": "0", "version_row": "0"}
    assert Api(stack, None).call("GET", "/ready").status_code == 200
