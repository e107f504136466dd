# ruff: noqa: F811  (pytest fixtures are imported from backup_support and used as arguments)
"""Incremental backups: a run after a change reads from S3 only the changed object and
from Chroma only the changed collection; an unchanged object is not read again, as the
job's own counters, restic's and SeaweedFS' S3 request metrics all show (not timing).
A scheduled run (``--if-changed``) that finds nothing changed stores nothing, and each kind
of change, alone, makes it store a run."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess

from govstack.catalog import SERVICES
from tests.e2e.backup_support import (  # noqa: F401 - fixtures
    admin,
    cli_json,
    in_test_stack,
    job,
    metrics,
    running_ids,
    seeded,
)
from tests.e2e.test_app_support import samples, wait_indexed

KEEP, CHANGE = "incr-keep-test", "incr-change-test"


def s3_gets(stack, bucket: str) -> int:
    """SeaweedFS' own count of S3 object GETs in ``bucket`` (its Prometheus endpoint, read
    inside its container; listings count as type LIST)."""
    seaweedfs = running_ids(stack, stack.settings.project)["seaweedfs"]
    port = SERVICES["seaweedfs"].metrics.port
    text = subprocess.run(["docker", "exec", seaweedfs, "busybox", "wget", "-q", "-O", "-",
                           f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True, check=True,
                          timeout=30).stdout
    total = 0
    for line in text.splitlines():
        if line.startswith("SeaweedFS_s3_request_total{") and f'bucket="{bucket}"' in line and 'type="GET"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def put(s3, bucket: str, key: str, data: bytes) -> None:
    s3.put_object(bucket, key, io.BytesIO(data), len(data))


def test_a_changed_object_is_read_and_an_unchanged_one_is_not(stack, admin, seeded):
    in_test_stack(stack)
    s3 = stack.s3("admin")  # buckets of their own: only the admin identity creates buckets
    for bucket in (KEEP, CHANGE):
        if not s3.bucket_exists(bucket):
            s3.make_bucket(bucket)
    keep = os.urandom(256 * 1024)
    put(s3, KEEP, "unchanged/odd key ü #%.bin", keep)
    put(s3, KEEP, "zero-byte", b"")
    put(s3, CHANGE, "doc.bin", b"version 1")
    try:
        first = cli_json(stack, "backup")
        assert first["ok"] and first["objects"]["counters"]["listed"] >= 3

        # Nothing changed: nothing read from S3, nothing new for restic, no collection exported.
        before = s3_gets(stack, KEEP), s3_gets(stack, CHANGE)
        again = cli_json(stack, "backup")
        oc, orc, vc = again["objects"]["counters"], again["objects"]["restic"], again["vectors"]["counters"]
        assert oc["fetched"] == 0 and oc["unchanged"] == oc["listed"] == first["objects"]["counters"]["listed"]
        assert orc["files_new"] == orc["files_changed"] == 0 and orc["files_unmodified"] >= 3
        # (Collections the app does not name, e.g. ones an earlier forced restore set aside, are
        # exported every run.)
        assert vc["exported"] == vc["no_watermark"] and vc["unchanged"] >= 1, vc
        assert (s3_gets(stack, KEEP), s3_gets(stack, CHANGE)) == before

        # One object rewritten, one document indexed into the seeded collection.
        put(s3, CHANGE, "doc.bin", b"version 2, longer")
        name, data = samples.topic_document(next(iter(samples.TOPICS)), salt="incremental")
        r = admin.upload(seeded["collection"], name, data)
        assert r.status_code in (200, 201), r.text
        wait_indexed(stack, [r.json()["id"]])
        keep_before = s3_gets(stack, KEEP)
        change_before = s3_gets(stack, CHANGE)
        third = cli_json(stack, "backup")
        oc, orc, vc = third["objects"]["counters"], third["objects"]["restic"], third["vectors"]["counters"]
        # Of the objects there before, exactly one (the rewritten) was read again; the rest are
        # the new document's.
        assert oc["unchanged"] == again["objects"]["counters"]["listed"] - 1, oc
        assert oc["fetched"] == oc["listed"] - oc["unchanged"] >= 2, oc
        # restic: the rewritten object and the state file changed, the new document's objects are new.
        assert orc["files_changed"] == 2 and orc["files_new"] == oc["fetched"] - 1, orc
        # Only the collection the document went into.
        assert vc["exported"] - vc["no_watermark"] == 1, vc
        assert vc["unchanged"] == again["vectors"]["counters"]["unchanged"] - 1, vc
        assert s3_gets(stack, KEEP) == keep_before
        assert s3_gets(stack, CHANGE) == change_before + 1

        # The run's manifest carries the new sha256 and the unchanged one forward.
        manifest = job(stack, "manifest", third["run"])["manifest"]
        objs = manifest["components"]["objects"]["buckets"]
        assert objs[CHANGE]["objects"]["doc.bin"]["sha256"] == hashlib.sha256(b"version 2, longer").hexdigest()
        assert objs[KEEP]["objects"]["unchanged/odd key ü #%.bin"]["sha256"] == hashlib.sha256(keep).hexdigest()
        assert objs[KEEP]["objects"]["zero-byte"]["size"] == 0
    finally:
        for bucket in (KEEP, CHANGE):
            if s3.bucket_exists(bucket):
                for obj in s3.list_objects(bucket, recursive=True, include_version=True):
                    s3.remove_object(bucket, obj.object_name, version_id=obj.version_id)
                s3.remove_bucket(bucket)


IF_CHANGED = "incr-ifchanged-test"
# Other writers on a shared test stack (autovacuum's ANALYZE of what earlier tests wrote, the
# worker's retries) commit a transaction now and then, and the comparison rightly calls that a
# change. An attempt one of them spoiled is repeated from a new full run, at most this often.
ATTEMPTS = 3
NOISE = "transactions committed since"  # before the comparison, or during it


def scheduled_run(stack, change, want: str | None) -> dict:
    """``change()``, then a scheduled run: its summary, once it stored nothing (``want`` None) or
    stored a run for the reason ``want``. Any other answer fails at once: only another writer's
    commit is repeated (after a full run, so the next attempt compares with a quiet record)."""
    for attempt in range(ATTEMPTS):
        change(attempt)
        result = cli_json(stack, "backup", "--if-changed")
        reason = (result.get("if_changed") or {}).get("changed", "")
        if (result.get("unchanged") is True) if want is None else (want in reason):
            return result
        assert reason.startswith("Postgres") and NOISE in reason and NOISE not in (want or ""), (want, result)
        cli_json(stack, "backup")
    raise AssertionError(f"other writers committed during each of {ATTEMPTS} attempts")


def test_a_scheduled_run_stores_nothing_unless_something_changed(stack, seeded):
    in_test_stack(stack)
    s3 = stack.s3("admin")
    if not s3.bucket_exists(IF_CHANGED):
        s3.make_bucket(IF_CHANGED)
    put(s3, IF_CHANGED, "kept.bin", os.urandom(64 * 1024))
    # Statistics fresh, as on a stack idle at night: fewer of autovacuum's own ANALYZEs.
    stack.psql("ANALYZE")
    try:
        cli_json(stack, "backup")  # an operator's run always stores one
        gets = s3_gets(stack, IF_CHANGED)
        since = metrics(stack)["govstack_backup_last_success_timestamp_seconds"]

        same = scheduled_run(stack, lambda _: None, None)
        # It names the newest complete run, and stored none after it.
        runs = [r["run"] for r in job(stack, "runs")["runs"] if r["complete"] and r.get("kind", "run") == "run"]
        assert max(runs) == same["run"], (runs[-3:], same)
        assert s3_gets(stack, IF_CHANGED) == gets  # no object read
        assert same["objects"]["counters"]["fetched"] == 0 and same["objects"]["counters"]["listed"] >= 1
        # It counts as a successful run: the backup stays fresh for the alerts.
        assert metrics(stack)["govstack_backup_last_success_timestamp_seconds"] > since

        stored = {}
        for change, why in (
            # A committed transaction, even one that leaves the data as it was.
            (lambda _: stack.psql("CREATE TABLE ifchanged_probe (x int); DROP TABLE ifchanged_probe"),
             "transactions committed since"),
            # A sequence moves without a transaction id.
            (lambda _: stack.psql("SELECT nextval(pg_get_serial_sequence('public.collections', 'id'))"),
             "a sequence moved"),
            # An object written beside the database (no row names it).
            (lambda attempt: put(s3, IF_CHANGED, "new.bin", b"new object %d" % attempt), "objects changed"),
        ):
            previous = stored.get("run", same["run"])
            stored = scheduled_run(stack, change, why)
            assert not stored.get("unchanged") and stored["run"] != previous, stored
        # The last run stored the new object (the comparison downloaded it; the run then found it).
        assert stored["if_changed"]["objects"]["counters"]["fetched"] == 1
        manifest = job(stack, "manifest", stored["run"])["manifest"]
        assert manifest["components"]["objects"]["buckets"][IF_CHANGED]["objects"]["new.bin"]["size"] == 12
        assert scheduled_run(stack, lambda _: None, None)["run"] >= stored["run"]  # and now it is current
    finally:
        for obj in s3.list_objects(IF_CHANGED, recursive=True, include_version=True):
            s3.remove_object(IF_CHANGED, obj.object_name, version_id=obj.version_id)
        s3.remove_bucket(IF_CHANGED)
