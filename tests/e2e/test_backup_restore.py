# ruff: noqa: F811  (pytest fixtures are imported from backup_support and used as arguments)
"""`govstack restore`: refusals that touch nothing, and a backup taken during live
uploads that restores a database and objects consistent with each other."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

from tests.e2e.backup_support import (  # noqa: F401 - fixtures
    admin,
    cause,
    cleanup_resumed,
    cli,
    cli_json,
    compose,
    drop_kept_databases,
    in_test_stack,
    metrics,
    running_ids,
    seeded,
)
from tests.e2e.test_app_support import samples, unique

UPLOAD_WINDOW_S = 120


def test_restore_over_existing_data_is_refused_and_says_why(stack, seeded):
    cli_json(stack, "backup")
    apps = running_ids(stack, stack.app_project)
    result = cli(stack, "restore", "--snapshot", "latest")
    assert result.returncode == 3
    message = cause(result)
    assert "refusing to restore over existing data" in message and "--force" in message
    assert "public.documents" in message and "buckets hold objects" in message
    assert running_ids(stack, stack.app_project) == apps  # nothing stopped or restarted


def test_missing_snapshot_is_a_clear_error(stack, seeded):
    apps = running_ids(stack, stack.app_project)
    result = cli(stack, "restore", "--snapshot", "deadbeefcafe", "--force")
    assert result.returncode == 1
    assert "no backup run or snapshot 'deadbeefcafe'" in cause(result)
    assert running_ids(stack, stack.app_project) == apps


def test_wrong_repository_password_fails_clearly_and_touches_nothing(stack, seeded):
    path = Path(stack.settings.secrets_dir, "restic_password")
    original = path.read_text()
    apps = running_ids(stack, stack.app_project)
    failures = metrics(stack)["govstack_backup_failures_total"]
    try:
        # In place (same inode): the container's bind-mounted secret sees it at once.
        with open(path, "r+") as fh:
            fh.write("W" * len(original.strip()))
        restore = cli(stack, "restore", "--snapshot", "latest", "--force")
        assert restore.returncode == 1 and "wrong password" in cause(restore)
        assert running_ids(stack, stack.app_project) == apps
        backup = cli(stack, "backup")
        assert backup.returncode == 1 and "wrong password" in cause(backup)
        after = metrics(stack)
        assert after["govstack_backup_failures_total"] == failures + 1
        assert after["govstack_backup_last_failure_timestamp_seconds"] > after[
            "govstack_backup_last_success_timestamp_seconds"]
    finally:
        with open(path, "r+") as fh:
            fh.truncate(0)
            fh.write(original)
    assert cli(stack, "backup").returncode == 0  # and the repository opens again


def test_backup_during_live_uploads_restores_rows_and_objects_consistently(stack, admin, drop_kept_databases,
                                                                          cleanup_resumed):
    in_test_stack(stack)
    collection = unique("bklive")
    stop = threading.Event()
    uploaded: list[int] = []
    errors: list[str] = []

    def upload_loop() -> None:
        deadline = time.monotonic() + UPLOAD_WINDOW_S
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            r = admin.upload(collection, f"live-{n}.txt", samples.make_txt(f"Live upload {n} of {collection}.\n"))
            if r.status_code in (200, 201):
                uploaded.append(r.json()["id"])
            else:
                errors.append(f"{r.status_code} {r.text[:200]}")
            n += 1

    thread = threading.Thread(target=upload_loop, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(uploaded) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        summary = cli_json(stack, "backup")
        during = len(uploaded)
    finally:
        stop.set()
        thread.join(timeout=UPLOAD_WINDOW_S)
    assert not errors, errors[:3]
    assert during >= 3, "uploads did not run alongside the backup"

    manifest = cli_json(stack, "backup", "--list")
    assert any(r["run"] == summary["run"] for r in manifest)
    # The deploy ledger is in the run, as the host had it then (the backup's own line came after).
    ledger_then = compose(stack, "exec", "-T", "backup", "govstack-backup", "dump", summary["run"], "ledger").stdout
    assert ledger_then and Path(stack.settings.paths.ledger_file).read_text().startswith(ledger_then)
    assert any(json.loads(line)["action"] == "up" for line in ledger_then.splitlines())
    audited = stack.psql(f"SELECT count(*) FROM audit_logs WHERE action = 'document.upload' "
                         f"AND collection = '{collection}'")
    report = cli_json(stack, "restore", "--snapshot", summary["run"], "--force")
    assert report["run"] == summary["run"]
    assert all(c["ok"] for c in report["components"].values())
    assert report["components"]["postgres"]["kept_previous_as"]
    # Uploads after the snapshot are objects without rows now: cleanup waits for the operator.
    assert report["cleanup_paused"]["run"] == summary["run"]
    reconciliation = json.loads(Path(report["reconciliation"]["json"]).read_text())
    assert reconciliation["counts"]["objects_without_rows"] == len(reconciliation["objects_without_rows"])

    # No row names a missing object, and every object has the row's bytes.
    rows = stack.psql("SELECT object_name, sha256, size FROM documents")
    assert rows, "the restored database has no documents"
    s3 = stack.s3()
    bucket = stack.settings.object_store.bucket
    for name, sha256, size in rows:
        body = s3.get_object(bucket, name)
        try:
            data = body.read()
        finally:
            body.close()
            body.release_conn()
        assert len(data) == int(size) and hashlib.sha256(data).hexdigest() == sha256.strip(), name
    # The restore is a point in time: uploads after the backup's snapshot are not in it.
    mine = stack.psql(f"SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id "
                      f"WHERE c.name = '{collection}'")
    assert 0 < int(mine[0][0]) <= len(uploaded)
    # The app's audit trail came back with the database: the upload's row (same transaction) of
    # each restored document, and none of the uploads after the snapshot.
    restored_audit = stack.psql(f"SELECT count(*) FROM audit_logs WHERE action = 'document.upload' "
                                f"AND collection = '{collection}'")
    assert int(restored_audit[0][0]) == int(mine[0][0]) <= int(audited[0][0])
    # The database's other clients can still connect to the database the restore created.
    db = stack.settings.postgres.database
    clients = stack.psql(f"SELECT rolname, has_database_privilege(rolname, '{db}', 'CONNECT') FROM pg_roles "
                         "WHERE rolname IN ('govstack_monitor', 'govstack_analytics') ORDER BY 1")
    assert clients and all(allowed == "t" for _, allowed in clients), clients
