# ruff: noqa: F811  (pytest fixtures are imported from backup_support and used as arguments)
"""A restore is never followed by a purge; cleanup quarantines instead of deleting.

1. Back up, upload (into a collection the snapshot has, and into one it lacks), restore Postgres
   alone, force the cleanup with no age limit: every object is still readable where it was, its
   vectors are still there, and the reconciliation report names it. `govstack reconcile adopt`
   brings the documents back (twice: no duplicates) and they are searchable; then
   `govstack cleanup resume`.
2. Once cleanup runs, an orphan is moved to the quarantine, never deleted; a crash between the
   copy and the delete leaves it readable in both places and the next run finishes the move
   without a second copy. Adopting the quarantined key brings it back; an expired quarantine
   entry is the only thing ever deleted, and that is counted.
3. A full restore (every component) to an older run pauses cleanup the same way: the later
   uploads stay readable through a forced cleanup, the kept database still finds its objects,
   the report names them, adopt brings them back searchable, then resume.
4. A crash at each step of a cleanup (before the copy, after it, after the delete, before an
   expiry) loses nothing, and the next run finishes with exactly one copy.
5. Cleanup run twice, and two at once: each orphan is moved once; while another cleanup or an
   adoption holds the reconcile lock, a cleanup moves nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from govstack_app.faults import FAULT_EXIT_CODE
from govstack_app.services.maintenance import RECONCILE_LOCK

from tests.e2e.backup_support import (  # noqa: F401 - fixtures
    admin,
    cleanup_resumed,
    cli,
    cli_json,
    drop_kept_databases,
    in_test_stack,
)
from tests.e2e.test_app_support import Api, chroma_ids, object_exists, unique, wait_indexed

QUARANTINE_PREFIX = "quarantine/"


def read_object(stack: Any, key: str) -> bytes:
    response = stack.s3().get_object(stack.settings.object_store.bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def quarantined_copies(stack: Any, original: str) -> list[str]:
    """Quarantine keys (quarantine/<time>/<original key>) that hold ``original``."""
    names = [o.object_name for o in stack.s3().list_objects(stack.settings.object_store.bucket,
                                                            prefix=QUARANTINE_PREFIX, recursive=True)]
    return [name for name in names if name.split("/", 2)[-1] == original]


def app_cleanup(stack: Any, *args: str, env: dict[str, str] | None = None, check: bool = True):
    """The cleanup the worker runs hourly, triggered now, with no age limit."""
    extra = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
    cmd = ["docker", "exec", *extra, stack.service_container("api"), "govstack-app", "cleanup", "--min-age", "0",
           *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, f"cleanup: {result.stdout[-1500:]}\n{result.stderr[-1500:]}"
    return result


def rows_for(stack: Any, object_name: str) -> list[tuple[str, ...]]:
    return stack.psql("SELECT d.id, c.name, d.filename, d.content_type, d.sha256 FROM documents d "
                      f"JOIN collections c ON c.id = d.collection_id WHERE d.object_name = '{object_name}'")


def test_restore_postgres_then_forced_cleanup_keeps_every_object_and_adopt_brings_the_documents_back(
        stack, admin: Api, drop_kept_databases, cleanup_resumed):
    in_test_stack(stack)
    kept_collection, new_collection = unique("qkeep"), unique("qnew")
    first = admin.upload(kept_collection, "before.txt", b"In the snapshot: the harbour dredging schedule.")
    assert first.status_code == 201, first.text
    run = cli_json(stack, "backup")["run"]

    phrases = {kept_collection: f"quay lantern {unique('p')}", new_collection: f"orchard ledger {unique('p')}"}
    uploaded = {}
    for collection, name in ((kept_collection, "later notice.md"), (new_collection, "fresh memo.txt")):
        data = f"# After the snapshot\n\nThe {phrases[collection]} was approved.\n".encode()
        response = admin.upload(collection, name, data)
        assert response.status_code == 201, response.text
        uploaded[collection] = {"id": response.json()["id"], "filename": response.json()["filename"],
                                "sha256": hashlib.sha256(data).hexdigest()}
    wait_indexed(stack, [u["id"] for u in uploaded.values()])
    for u in uploaded.values():
        (u["object"],) = stack.psql(f"SELECT object_name FROM documents WHERE id = {u['id']}")[0]

    restore = cli(stack, "restore", "--snapshot", run, "--component", "postgres", "--force")
    assert restore.returncode == 0, f"{restore.stdout[-2000:]}\n{restore.stderr[-2000:]}"
    for u in uploaded.values():
        assert not rows_for(stack, u["object"]), "the restored database must not know the later uploads"

    # The cleanup the worker runs, forced now with no age limit: nothing may be lost.
    app_cleanup(stack)
    for collection, u in uploaded.items():
        assert hashlib.sha256(read_object(stack, u["object"])).hexdigest() == u["sha256"], u
        assert chroma_ids(stack, collection, u["id"]), "vectors of unknown documents are never deleted"

    # The restore paused cleanup and wrote a reconciliation report that names every object.
    assert "cleanup is paused" in restore.stdout
    found = re.search(r"reconciliation report: (\S+\.json)", restore.stdout)
    assert found, restore.stdout
    report = json.loads(Path(found[1]).read_text())
    assert Path(found[1]).stat().st_mode & 0o777 == 0o600
    assert Path(found[1][:-len(".json")] + ".md").exists()
    without_rows = {o["key"]: o for o in report["objects_without_rows"]}
    newer = {d["object_name"]: d for d in report["documents_newer_than_snapshot"]}
    for collection, u in uploaded.items():
        assert u["object"] in without_rows, report["objects_without_rows"]
        assert without_rows[u["object"]]["collection"] == collection
        assert newer[u["object"]]["filename"] == u["filename"]
    status = cli(stack, "cleanup", "status")
    assert status.returncode == 0 and "paused" in status.stdout and run in status.stdout, status.stdout

    # --all would take every object without a row (a dry run changes nothing); adopt ours, twice at
    # once (the operator's command, under the stack lock, and the app's own, which only the app's
    # advisory lock orders), while someone uploads the same bytes again: one row per object, every
    # row's object there. No --min-age: objects written before the restore paused cleanup are no
    # uploads in flight.
    everything = cli_json(stack, "reconcile", "adopt", "--all", "--dry-run")
    assert {a["key"] for a in everything["adopted"]} >= {u["object"] for u in uploaded.values()}
    keys = [u["object"] for u in uploaded.values()]
    again_bytes = f"# After the snapshot\n\nThe {phrases[kept_collection]} was approved.\n".encode()
    in_app = ["docker", "exec", stack.service_container("api"), "govstack-app", "adopt", *keys]
    with ThreadPoolExecutor(max_workers=3) as pool:
        adopts = [pool.submit(cli, stack, "reconcile", "adopt", *keys, "--json"),
                  pool.submit(subprocess.run, in_app, capture_output=True, text=True, timeout=600)]
        reupload = pool.submit(admin.upload, kept_collection, "again.md", again_bytes)
    for adopt in adopts:
        assert adopt.result().returncode == 0, adopt.result().stderr[-2000:]
    results = [json.loads(f.result().stdout.strip().splitlines()[-1]) if i else json.loads(f.result().stdout)
               for i, f in enumerate(adopts)]
    assert reupload.result().status_code in (200, 201), reupload.result().text
    registered = [a["object_name"] for r in results for a in r["adopted"]]
    assert sorted(registered) == sorted(set(registered)), "no object registered twice"
    ids = []
    for collection, u in uploaded.items():
        rows = stack.psql("SELECT d.id, d.object_name, d.filename, d.content_type FROM documents d JOIN collections c"
                          f" ON c.id = d.collection_id WHERE c.name = '{collection}' AND d.sha256 = '{u['sha256']}'")
        assert len(rows) == 1, rows
        doc_id, object_name, filename, content_type = rows[0]
        assert hashlib.sha256(read_object(stack, object_name)).hexdigest() == u["sha256"]
        if object_name == u["object"]:  # adopted (the re-upload may have come first for the kept collection)
            assert filename == u["filename"] and content_type in ("text/markdown", "text/plain")
        ids.append(int(doc_id))
    assert rows_for(stack, uploaded[new_collection]["object"]), "the collection the snapshot lacked is made again"
    wait_indexed(stack, ids)
    for collection, phrase in phrases.items():
        hits = admin.search(collection, phrase, "keyword")
        assert hits and int(hits[0]["document_id"]) in ids, hits

    resumed = cli(stack, "cleanup", "resume", "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert "quarantine" in resumed.stdout  # it says what it is about to do
    assert "not paused" in cli(stack, "cleanup", "status").stdout


def test_cleanup_quarantines_orphans_and_a_crash_between_copy_and_delete_loses_nothing(
        stack, admin: Api, cleanup_resumed):
    assert cli(stack, "cleanup", "resume", "--yes").returncode == 0
    collection = unique("qorph")
    seeded = admin.upload(collection, "seed.txt", b"A document so that the collection exists.")
    assert seeded.status_code == 201, seeded.text
    (coll_id,) = stack.psql(f"SELECT id FROM collections WHERE name = '{collection}'")[0]
    bucket = stack.settings.object_store.bucket
    data = b"Orphaned minutes of the lighthouse committee."
    digest = hashlib.sha256(data).hexdigest()
    orphan = f"c{coll_id}/orphan{unique('o').replace('-', '')}"
    # As an upload writes it: the bytes, then (never, here) the row.
    stack.s3().put_object(bucket, orphan, io.BytesIO(data), len(data), content_type="text/plain",
                          metadata={"sha256": digest, "original-filename": "minutes%20lighthouse.txt",
                                    "collection": collection})

    crashed = app_cleanup(stack, env={"GOVSTACK_FAULT_INJECT": f"quarantine.after-copy:{orphan}"}, check=False)
    assert crashed.returncode != 0, "the injected crash did not happen"
    copies = quarantined_copies(stack, orphan)
    assert len(copies) == 1 and object_exists(stack, bucket, orphan), "a crash after the copy leaves both"
    assert read_object(stack, copies[0]) == data

    app_cleanup(stack)
    assert not object_exists(stack, bucket, orphan)
    assert quarantined_copies(stack, orphan) == copies, "the next run finishes the move with no second copy"
    assert read_object(stack, copies[0]) == data

    listing = cli_json(stack, "report", "quarantine")
    mine = [c for c in listing["collections"] if c["collection"] == collection]
    assert mine and mine[0]["objects"] == 1 and mine[0]["bytes"] == len(data), listing
    assert mine[0]["expires"] > mine[0]["oldest"]

    # Adopting it back crashes after the copy back: the bytes are in both places, no row yet.
    crashed = subprocess.run(["docker", "exec", "-e", f"GOVSTACK_FAULT_INJECT=adopt.after-copy-back:{orphan}",
                              stack.service_container("api"), "govstack-app", "adopt", copies[0]],
                             capture_output=True, text=True, timeout=300)
    assert crashed.returncode != 0 and "fault injected" in crashed.stderr, crashed.stderr
    assert read_object(stack, orphan) == data and quarantined_copies(stack, orphan) == copies
    assert not rows_for(stack, orphan)
    adopted = cli_json(stack, "reconcile", "adopt", copies[0])
    assert [a["object_name"] for a in adopted["adopted"]] == [orphan], adopted
    assert not quarantined_copies(stack, orphan) and read_object(stack, orphan) == data
    (doc_id, coll, filename, _, _), = rows_for(stack, orphan)
    assert (coll, filename) == (collection, "minutes lighthouse.txt")
    wait_indexed(stack, [int(doc_id)])
    assert admin.search(collection, "lighthouse committee", "keyword")[0]["document_id"] == int(doc_id)

    # Expiry is the only deletion: an entry quarantined long ago goes, and is counted.
    expired = f"{QUARANTINE_PREFIX}20000101T000000Z/c{coll_id}/expired{unique('e').replace('-', '')}"
    stack.s3().put_object(bucket, expired, io.BytesIO(b"old"), 3)
    out = json.loads(app_cleanup(stack).stdout.strip().splitlines()[-1])
    assert expired in out["expired"], out
    assert not object_exists(stack, bucket, expired)
    assert out["metrics"]["govstack_quarantine_expired_objects_total"] >= 1


def plant_orphan(stack: Any, admin: Api, prefix: str) -> tuple[str, str, bytes]:
    """(collection, key, bytes) of an object written as an upload writes it, whose row never came."""
    collection = unique(prefix)
    seeded = admin.upload(collection, "seed.txt", f"The {collection} collection exists.".encode())
    assert seeded.status_code == 201, seeded.text
    (coll_id,) = stack.psql(f"SELECT id FROM collections WHERE name = '{collection}'")[0]
    data = f"Orphaned bytes {unique('b')}.".encode()
    key = f"c{coll_id}/orphan{unique('o').replace('-', '')}"
    stack.s3().put_object(stack.settings.object_store.bucket, key, io.BytesIO(data), len(data),
                          content_type="text/plain", metadata={"sha256": hashlib.sha256(data).hexdigest(),
                                                               "collection": collection})
    return collection, key, data


def readable_somewhere(stack: Any, key: str, data: bytes) -> list[str]:
    """Where ``key``'s bytes are now (the key itself and its quarantine copies), checked byte for byte."""
    places = ([key] if object_exists(stack, stack.settings.object_store.bucket, key) else []) + \
        quarantined_copies(stack, key)
    for place in places:
        assert read_object(stack, place) == data, place
    return places


def test_full_restore_to_an_older_run_pauses_cleanup_and_adopt_brings_the_later_documents_back(
        stack, admin: Api, drop_kept_databases, cleanup_resumed):
    in_test_stack(stack)
    collection = unique("qfull")
    assert admin.upload(collection, "before.txt", b"In the older run: the ferry timetable.").status_code == 201
    run = cli_json(stack, "backup")["run"]
    phrase = f"granary survey {unique('p')}"
    data = f"# Later\n\nThe {phrase} was filed.\n".encode()
    later = admin.upload(collection, "later.md", data)
    assert later.status_code == 201, later.text
    doc_id = later.json()["id"]
    wait_indexed(stack, [doc_id])
    (key,) = stack.psql(f"SELECT object_name FROM documents WHERE id = {doc_id}")[0]

    restore = cli(stack, "restore", "--snapshot", run, "--component", "all", "--force", "--json")
    assert restore.returncode == 0, f"{restore.stdout[-2000:]}\n{restore.stderr[-2000:]}"
    report = json.loads(restore.stdout)
    assert report["cleanup_paused"]["run"] == run and set(report["cleanup_paused"]["components"]) == {
        "postgres", "objects", "vectors"}
    assert not rows_for(stack, key), "the older run does not know the later upload"

    app_cleanup(stack)  # forced, no age limit: paused, so nothing moves
    assert readable_somewhere(stack, key, data) == [key]
    kept = report["components"]["postgres"]["kept_previous_as"]
    kept_rows = subprocess.run(
        ["docker", "exec", stack.service_container("postgres"), "psql", "-X", "-tA", "-U", "postgres", "-d", kept,
         "-c", f"SELECT object_name FROM documents WHERE id = {doc_id}"],
        capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert kept_rows == [key], "the kept database names the object, and the object is still there"

    reconciliation = json.loads(Path(report["reconciliation"]["json"]).read_text())
    assert key in {o["key"] for o in reconciliation["objects_without_rows"]}
    assert key in {d["object_name"] for d in reconciliation["documents_newer_than_snapshot"]}

    adopted = cli_json(stack, "reconcile", "adopt", key)
    assert [a["object_name"] for a in adopted["adopted"]] == [key], adopted
    (new_id, coll, filename, _, sha), = rows_for(stack, key)
    assert (coll, filename, sha) == (collection, "later.md", hashlib.sha256(data).hexdigest())
    wait_indexed(stack, [int(new_id)])
    assert int(admin.search(collection, phrase, "keyword")[0]["document_id"]) == int(new_id)
    assert cli(stack, "cleanup", "resume", "--yes").returncode == 0
    app_cleanup(stack)
    assert readable_somewhere(stack, key, data) == [key], "a registered object is never moved"


@pytest.mark.parametrize("step", ["before-copy", "after-copy", "after-delete"])
def test_a_crash_at_each_step_of_a_move_loses_nothing(stack, admin: Api, cleanup_resumed, step: str):
    assert cli(stack, "cleanup", "resume", "--yes").returncode == 0
    _, key, data = plant_orphan(stack, admin, "qcrash")
    crashed = app_cleanup(stack, env={"GOVSTACK_FAULT_INJECT": f"quarantine.{step}:{key}"}, check=False)
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr
    assert f"fault injected at quarantine.{step}" in crashed.stderr, crashed.stderr
    places = readable_somewhere(stack, key, data)
    expected = {"before-copy": 1, "after-copy": 2, "after-delete": 1}[step]
    assert len(places) == expected, places
    assert (key in places) == (step != "after-delete")

    app_cleanup(stack)
    after = readable_somewhere(stack, key, data)
    assert len(after) == 1 and after[0] != key, "the next run finishes the move: one copy, no original"
    if step == "after-copy":
        assert after == [p for p in places if p != key], "the crashed run's copy is reused, not copied again"


def test_a_crash_before_an_expiry_leaves_the_entry_and_the_next_run_expires_it(stack, admin: Api, cleanup_resumed):
    assert cli(stack, "cleanup", "resume", "--yes").returncode == 0
    bucket = stack.settings.object_store.bucket
    expired = f"{QUARANTINE_PREFIX}20000101T000000Z/c1/expiry{unique('e').replace('-', '')}"
    stack.s3().put_object(bucket, expired, io.BytesIO(b"old"), 3)
    crashed = app_cleanup(stack, env={"GOVSTACK_FAULT_INJECT": f"quarantine.before-expire:{expired}"}, check=False)
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr
    assert object_exists(stack, bucket, expired)
    out = json.loads(app_cleanup(stack).stdout.strip().splitlines()[-1])
    assert expired in out["expired"] and not object_exists(stack, bucket, expired)


def test_cleanup_twice_and_at_once_moves_each_orphan_once_and_never_beside_the_lock_holder(
        stack, admin: Api, cleanup_resumed):
    assert cli(stack, "cleanup", "resume", "--yes").returncode == 0
    orphans = [plant_orphan(stack, admin, "qtwice")[1:] for _ in range(2)]

    # Another cleanup or an adoption holds the reconcile lock: this one moves nothing.
    holder = threading.Thread(target=subprocess.run, kwargs={"args": [
        "docker", "exec", stack.service_container("postgres"), "psql", "-X", "-U", "postgres", "-d",
        stack.settings.postgres.database, "-c",
        f"SELECT pg_advisory_lock({RECONCILE_LOCK}), pg_sleep(120) -- quarantine test holder"],
        "capture_output": True, "timeout": 180})
    holder.start()
    try:
        for _ in range(60):
            if stack.psql("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                          f" AND objid = {RECONCILE_LOCK}"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the test's holder never got the lock")
        out = json.loads(app_cleanup(stack).stdout.strip().splitlines()[-1])
        assert "skipped" in out and not out["moved"], out
        for key, data in orphans:
            assert readable_somewhere(stack, key, data) == [key]
    finally:
        stack.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                   " WHERE query LIKE '%quarantine test holder%' AND pid <> pg_backend_pid()")
        holder.join(timeout=60)

    # Two at once, then a third: each orphan moved exactly once, one copy each.
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [json.loads(r.stdout.strip().splitlines()[-1]) for r in pool.map(lambda _: app_cleanup(stack), [0, 1])]
    moved = [m["key"] for r in runs for m in r["moved"]]
    for key, data in orphans:
        assert moved.count(key) == 1, runs
        places = readable_somewhere(stack, key, data)
        assert len(places) == 1 and places[0] != key, places
    again = json.loads(app_cleanup(stack).stdout.strip().splitlines()[-1])
    assert not {m["key"] for m in again["moved"]} & {key for key, _ in orphans}, again
    for key, data in orphans:
        assert len(readable_somewhere(stack, key, data)) == 1
