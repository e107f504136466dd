"""Compliance jobs against the deployed stack: audit retention on real partitions, the access
review of keys made through the API, the storage report on planted orphans, the residency report.

The commands run as an operator runs them (`python -m govstack.compliance` is the same click
commands the main CLI registers), against the test inventory.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_govstack
from tests.e2e.test_app_support import Api, app_exec, chroma_ids, object_exists, wait_indexed


def compliance(stack, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "govstack.compliance", *args, "-i", stack.inventory],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def partitions(stack) -> set[str]:
    return {r[0] for r in stack.psql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'audit_logs'::regclass")}


# -- audit retention -----------------------------------------------------------------------------
@pytest.fixture
def old_partitions(stack):
    """Two partitions older than the default 24-month retention and one inside it, one row each,
    made as the app's role (the owner of audit_logs, as the app makes them)."""
    role = stack.settings.postgres.app_user
    names = {}
    for label, months in (("old1", 40), ("old2", 30), ("kept", 20)):
        rows = stack.psql(
            f"SET ROLE {role}; SELECT govstack_ensure_audit_partition(now() - interval '{months} months')")
        stack.psql(f"INSERT INTO audit_logs (created_at, action, resource_type) "
                   f"VALUES (now() - interval '{months} months', 'test.retention', 'test')")
        names[label] = rows[-1][0]  # after the SET command tag
    yield names
    # The kept one is inside the retention but the test's; the others are gone unless the test failed.
    for name in names.values():
        stack.psql(f"DROP TABLE IF EXISTS {name}")


def test_audit_retention_drops_only_whole_partitions_older_than_the_retention(stack, old_partitions):
    before = partitions(stack)
    assert set(old_partitions.values()) <= before

    dry = json.loads(compliance(stack, "audit-retention", "--dry-run", "--json").stdout.splitlines()[-1])
    assert {d["name"] for d in dry["dropped"]} >= {old_partitions["old1"], old_partitions["old2"]}
    assert old_partitions["kept"] not in {d["name"] for d in dry["dropped"]}
    assert partitions(stack) == before, "a dry run drops nothing"

    refused = compliance(stack, "audit-retention", "--months", "3", check=False)
    assert refused.returncode == 2 and "floor is 12 months" in refused.stderr
    app_refused = app_exec(stack, "govstack-app", "purge-audit-partitions", "--months", "3", "--floor", "12",
                           check=False)
    assert app_refused.returncode == 2 and "floor" in app_refused.stderr
    assert partitions(stack) == before, "a refused retention drops nothing"

    done = json.loads(compliance(stack, "audit-retention", "--json").stdout.splitlines()[-1])
    dropped = {d["name"]: d for d in done["dropped"]}
    assert {old_partitions["old1"], old_partitions["old2"]} <= set(dropped)
    assert dropped[old_partitions["old1"]]["rows"] >= 1
    after = partitions(stack)
    assert old_partitions["old1"] not in after and old_partitions["old2"] not in after
    assert old_partitions["kept"] in after
    assert any(name.startswith("audit_logs_") for name in after - {old_partitions["kept"]}), "current months kept"

    resource_id, details = stack.psql(
        "SELECT resource_id, details::text FROM audit_logs WHERE action = 'audit.partitions_dropped' "
        "ORDER BY created_at DESC LIMIT 1")[0]
    assert old_partitions["old1"] in resource_id.split(",")
    details = json.loads(details)
    assert details["retention_months"] == 24 and details["floor_months"] == 12
    assert details["actor"].startswith("operator:")


# -- access review -------------------------------------------------------------------------------
def test_access_review_lists_the_keys_made_through_the_api(stack):
    admin = Api(stack, stack.admin_api_key)
    tag = uuid.uuid4().hex[:8]
    made = {}
    scopes = {"reader": None, "writer": [f"permits-{tag}", f"archive-{tag}"]}
    for role in ("reader", "writer"):
        name = f"review-{role}-{tag}"
        response = admin.call("POST", "/api/v1/keys", json={"name": name, "role": role, "collections": scopes[role]})
        assert response.status_code == 201, response.text
        made[role] = (name, response.json()["api_key"])
    used = Api(stack, made["reader"][1]).call("GET", "/api/v1/collections")
    assert used.status_code == 200
    assert admin.call("DELETE", f"/api/v1/keys/{made['writer'][0]}").status_code == 204

    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(
        compliance(stack, "access-review", "-o", "-").stdout))}
    reader, writer = rows[made["reader"][0]], rows[made["writer"][0]]
    assert list(reader) == ["name", "role", "collections", "created_by", "created", "last_used", "active", "revoked"]
    assert (reader["role"], reader["active"], reader["revoked"]) == ("reader", "true", "")
    # The scope: every collection, or the key's own, sorted.
    assert (reader["collections"], writer["collections"]) == ("*", f"archive-{tag} permits-{tag}")
    assert reader["created"].endswith("Z") and reader["last_used"].endswith("Z")
    assert (writer["role"], writer["active"], writer["last_used"]) == ("writer", "false", "")
    assert writer["revoked"].endswith("Z")
    assert rows["bootstrap-admin"]["role"] == "admin"

    out = compliance(stack, "access-review").stdout
    path = Path(out.split(" written to ")[1].split(" (")[0])
    assert path.parent == Path(stack.settings.stack_root, "reports")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert made["reader"][0] in path.read_text()


# -- storage report ------------------------------------------------------------------------------
ORPHAN_DOCUMENT_ID = 987_654_321


def test_storage_report_finds_planted_orphans_and_apply_quarantines_the_object(stack):
    # A restore earlier in the session paused cleanup; this test is about --apply.
    assert run_govstack("cleanup", "resume", "--yes", "-i", stack.inventory).returncode == 0
    collection = f"storage-{uuid.uuid4().hex[:8]}"
    admin = Api(stack, stack.admin_api_key)
    response = admin.upload(collection, "note.txt", b"A document so that the collection has vectors.")
    assert response.status_code in (200, 201), response.text
    wait_indexed(stack, [int(response.json()["id"])])
    coll_id = stack.psql(f"SELECT id FROM collections WHERE name = '{collection}'")[0][0]

    bucket = stack.settings.object_store.bucket
    orphan = f"c{coll_id}/orphan{uuid.uuid4().hex}"
    data = b"an object no row names"
    stack.s3().put_object(bucket, orphan, io.BytesIO(data), len(data))
    chroma = stack.chroma().get_collection(f"govstack_{collection}")
    dimension = len(chroma.get(limit=1, include=["embeddings"])["embeddings"][0])
    chroma.add(ids=[f"{ORPHAN_DOCUMENT_ID}:0"], embeddings=[[0.0] * (dimension - 1) + [1.0]],
               metadatas=[{"document_id": ORPHAN_DOCUMENT_ID, "chunk_index": 0}], documents=["orphan vector"])
    time.sleep(3)  # older than --min-age 2, so an upload in flight elsewhere (younger) is never touched

    report = json.loads(compliance(stack, "report", "storage", "--min-age", "2", "--json").stdout)
    assert orphan in report["orphan_objects"]
    assert ORPHAN_DOCUMENT_ID in report["orphan_vectors"][collection]
    assert any(t["name"] == "documents" for t in report["tables"])
    assert any(p["name"].startswith("audit_logs_") for p in report["audit_partitions"])
    assert object_exists(stack, bucket, orphan), "the report alone changes nothing"

    applied = json.loads(compliance(stack, "report", "storage", "--min-age", "2", "--apply", "--json").stdout)
    assert applied["applied"]["orphan_objects_quarantined"] >= 1
    assert orphan not in applied["after"]["orphan_objects"]
    assert not object_exists(stack, bucket, orphan)
    moved = [o.object_name for o in stack.s3().list_objects(bucket, prefix="quarantine/", recursive=True)
             if o.object_name.endswith("/" + orphan)]
    assert len(moved) == 1, "the orphan object is moved to the quarantine, not deleted"
    assert ORPHAN_DOCUMENT_ID in applied["after"]["orphan_vectors"][collection], "vectors are reported, never deleted"
    assert chroma_ids(stack, collection, ORPHAN_DOCUMENT_ID)
    assert chroma_ids(stack, collection, int(response.json()["id"])), "the real document keeps its vectors"

    text = compliance(stack, "report", "storage").stdout
    assert "## Audit partitions" in text and "## Orphans" in text


# -- residency -----------------------------------------------------------------------------------
def test_residency_report_from_the_settings_and_the_host(stack):
    (report,) = json.loads(compliance(stack, "report", "residency", "--json").stdout)
    s = stack.settings
    where = {item["store"].split()[0]: item for item in report["items"]}
    assert where["PostgreSQL"]["where"] == f"{s.data_dir}/postgres"
    assert where["SeaweedFS"]["where"] == f"{s.data_dir}/seaweedfs"
    # Asked of the live bucket: the deploy set its default encryption (SSE-S3).
    assert where["SeaweedFS"]["encrypted_at_rest"].startswith("yes: bucket default AES256 (SeaweedFS SSE-S3);")
    assert "could not be asked" not in where["SeaweedFS"]["encrypted_at_rest"]
    assert {i["name"] for i in report["s3_identities"]} == {"app", "backup", "restore", "admin"}
    if s.backup.enabled:
        assert where["restic"]["encrypted_at_rest"].startswith("yes, always")
    else:
        assert "restic" not in where
    assert report["host_disk_encrypted"] in ("yes", "no")
