"""Issue 17, object store: least-privilege S3 identities and a versioned bucket, on the deployed
stack's real SeaweedFS (images.seaweedfs_version).

- Each identity of the gateway (settings.catalog.S3_IDENTITIES) may do what it needs and is
  refused the rest: the app reads, writes and lists its bucket only; the backup job reads and
  lists; the restore identity also writes; creating a bucket takes the admin identity. A wrong
  key and an anonymous request are refused.
- Each container holds only its identity's pair: the app's containers the app's, the backup
  service the backup job's (the restore pair is mounted only into `govstack restore`'s one-off
  container), the gateway every pair.
- The documents bucket is versioned by the deploy: an overwritten and then deleted object is
  recovered from its previous version by the app's own identity.
- Objects are encrypted at rest (SSE-S3, the bucket's default set by the deploy): a document's
  unique marker, in an uncompressed PDF content stream, is nowhere in the gateway's files on the
  host, while the same bytes in a bucket without default encryption are found there; the
  download is byte-identical.
- `govstack secret rotate s3_backup_access_key` replaces the backup job's pair without a
  restart: the new pair reads, the old one is refused, the app is untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error

from govstack.catalog import s3_pair
from govstack.settings.catalog import S3_IDENTITIES
from tests.conftest import run_govstack
from tests.e2e.test_app_support import docker

DENIED = "AccessDenied"


def attempt(call) -> str:
    """"ok", or the S3 error code the gateway answered."""
    try:
        call()
        return "ok"
    except S3Error as error:
        return error.code


def put(client: Minio, bucket: str, key: str, data: bytes) -> None:
    client.put_object(bucket, key, io.BytesIO(data), len(data))


def read(client: Minio, bucket: str, key: str, version_id: str | None = None) -> bytes:
    response = client.get_object(bucket, key, version_id=version_id)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


@pytest.fixture
def other_bucket(stack):
    """A second bucket with one object, made and removed by the admin identity."""
    admin = stack.s3("admin")
    name = f"other-{uuid.uuid4().hex[:8]}"
    admin.make_bucket(name)
    put(admin, name, "x.txt", b"not the app's")
    yield name
    for obj in admin.list_objects(name, recursive=True):
        admin.remove_object(name, obj.object_name)
    admin.remove_bucket(name)


def test_the_stack_is_deployed_with_one_identity_per_client(stack):
    assert stack.settings.object_store.kind == "seaweedfs"
    secrets = Path(stack.settings.secrets_dir)
    values = {}
    for identity in S3_IDENTITIES:
        for name in (identity.access_key, identity.secret_key):
            path = secrets / name
            assert path.stat().st_mode & 0o777 == 0o600, name
            values[name] = path.read_text()
    assert len(set(values.values())) == len(values), "two identities share a key"


def test_each_identity_is_refused_outside_its_rights(stack, other_bucket):
    bucket = stack.settings.object_store.bucket
    app, backup, restore, admin = (stack.s3(name) for name in ("app", "backup", "restore", "admin"))
    key = f"probe/{uuid.uuid4().hex}"
    new_bucket = f"made-{uuid.uuid4().hex[:8]}"

    # The app: read, write and list its bucket, nothing else.
    assert attempt(lambda: put(app, bucket, key, b"app")) == "ok"
    assert read(app, bucket, key) == b"app"
    assert key in {o.object_name for o in app.list_objects(bucket, prefix="probe/", recursive=True)}
    assert [b.name for b in app.list_buckets()] == [bucket]
    assert attempt(lambda: read(app, other_bucket, "x.txt")) == DENIED
    assert attempt(lambda: put(app, other_bucket, "y.txt", b"app")) == DENIED
    assert attempt(lambda: list(app.list_objects(other_bucket))) == DENIED
    assert attempt(lambda: app.make_bucket(new_bucket)) == DENIED
    assert attempt(lambda: app.remove_bucket(other_bucket)) == DENIED

    # The backup job: read and list every bucket, never write or delete.
    assert {bucket, other_bucket} <= {b.name for b in backup.list_buckets()}
    assert read(backup, bucket, key) == b"app"
    assert read(backup, other_bucket, "x.txt") == b"not the app's"
    assert attempt(lambda: put(backup, bucket, key, b"backup")) == DENIED
    assert attempt(lambda: backup.remove_object(bucket, key)) == DENIED
    assert attempt(lambda: backup.make_bucket(new_bucket)) == DENIED
    assert attempt(lambda: backup.remove_bucket(other_bucket)) == DENIED

    # The restore identity: puts objects back, but makes and removes no bucket.
    assert attempt(lambda: put(restore, other_bucket, "restored.txt", b"back")) == "ok"
    assert attempt(lambda: restore.make_bucket(new_bucket)) == DENIED
    assert attempt(lambda: restore.remove_bucket(other_bucket)) == DENIED

    # Strangers.
    access, _ = s3_pair(stack.settings, "app")
    wrong = Minio(stack.forward("seaweedfs", stack.plan.ports["seaweedfs_s3"]), secure=False,
                  access_key=Path(stack.settings.secrets_dir, access).read_text().strip(), secret_key="x" * 40,
                  region=stack.settings.object_store.region)
    assert attempt(lambda: read(wrong, bucket, key)) in ("SignatureDoesNotMatch", DENIED)
    anonymous = Minio(stack.forward("seaweedfs", stack.plan.ports["seaweedfs_s3"]), secure=False,
                      region=stack.settings.object_store.region)
    assert attempt(lambda: read(anonymous, bucket, key)) == DENIED

    # Only the admin identity makes buckets.
    assert attempt(lambda: admin.make_bucket(new_bucket)) == "ok"
    admin.remove_bucket(new_bucket)
    app.remove_object(bucket, key)


def _secret_names(stack, service: str) -> set[str]:
    container = stack.service_container(service)
    out = docker("exec", container, "ls", "/run/secrets").stdout
    return set(out.split())


def test_each_container_holds_only_its_identitys_keys(stack):
    pairs = {identity.name: {identity.access_key, identity.secret_key} for identity in S3_IDENTITIES}
    every = set().union(*pairs.values())
    assert _secret_names(stack, "seaweedfs") & every == every
    for service in ("api", "worker"):
        assert _secret_names(stack, service) & every == pairs["app"], service
    assert _secret_names(stack, "backup") & every == pairs["backup"]
    # Every other container of the stack (monitoring, edge, exporters, Chroma, Postgres): no pair,
    # neither mounted nor in its environment.
    rows = docker("ps", "--format", '{{.ID}} {{.Label "com.docker.compose.project"}} '
                  '{{.Label "com.docker.compose.service"}}').stdout.split("\n")
    holders = {"seaweedfs", "api", "worker", "backup"}
    others = [row.split() for row in rows if len(row.split()) == 3]
    others = [(cid, service) for cid, project, service in others
              if (project == stack.settings.project or project.startswith(f"{stack.settings.project}-"))
              and service not in holders]
    assert {"prometheus", "postgres", "nginx"} <= {service for _, service in others}, others
    secrets = Path(stack.settings.secrets_dir)
    values = {(secrets / name).read_text().strip() for name in every}
    for cid, service in others:
        inspected = json.loads(docker("inspect", cid).stdout)[0]
        mounted = {Path(m["Source"]).name for m in inspected["Mounts"]} | {
            Path(m["Destination"]).name for m in inspected["Mounts"]}
        assert not mounted & every, (service, mounted & every)
        environment = "\n".join(inspected["Config"]["Env"] or [])
        assert not any(value in environment for value in values), service


def test_a_deleted_object_comes_back_from_its_previous_version(stack):
    bucket = stack.settings.object_store.bucket
    app = stack.s3("app")
    key = f"versioned/{uuid.uuid4().hex}"
    put(app, bucket, key, b"first")
    time.sleep(1.1)  # listings give seconds: the two versions' times differ
    put(app, bucket, key, b"second")
    app.remove_object(bucket, key)
    assert attempt(lambda: app.stat_object(bucket, key)) == "NoSuchKey"

    versions = list(app.list_objects(bucket, prefix=key, include_version=True))
    markers = [v for v in versions if v.is_delete_marker]
    kept = sorted((v for v in versions if not v.is_delete_marker), key=lambda v: v.last_modified)
    assert len(markers) == 1 and [read(app, bucket, key, v.version_id) for v in kept] == [b"first", b"second"]

    # Recovery: the latest version before the delete, copied over the delete marker.
    app.copy_object(bucket, key, CopySource(bucket, key, version_id=kept[-1].version_id))
    assert read(app, bucket, key) == b"second"
    for version in app.list_objects(bucket, prefix=key, include_version=True):
        app.remove_object(bucket, key, version_id=version.version_id)


def test_the_bucket_keeps_the_lifecycle_rules_the_settings_name(stack):
    """The deploy's rules, read back live with the admin identity: earlier versions expire after
    object_store.noncurrent_version_days, incomplete uploads are aborted after abort_multipart_days."""
    o = stack.settings.object_store
    rules = {rule.rule_id: rule for rule in stack.s3("admin").get_bucket_lifecycle(o.bucket).rules}
    expiring = [r for r in rules.values() if r.noncurrent_version_expiration]
    aborting = [r for r in rules.values() if r.abort_incomplete_multipart_upload]
    assert len(expiring) == len(aborting) == 1, rules
    assert expiring[0].status == aborting[0].status == "Enabled"
    assert expiring[0].noncurrent_version_expiration.noncurrent_days == o.noncurrent_version_days
    assert aborting[0].abort_incomplete_multipart_upload.days_after_initiation == o.abort_multipart_days
    # A client of the stack's own may not change them: only the admin pair, which no container holds.
    assert attempt(lambda: stack.s3("backup").delete_bucket_lifecycle(o.bucket)) == DENIED


def test_a_drifted_bucket_is_set_again_by_the_next_up(stack):
    """Versioning suspended, the lifecycle rules and the default encryption removed by hand (the
    admin pair): the next `up`, which reads all three in one command (facts.S3BucketConfig), sets
    them again; the `up` after it changes nothing."""
    from minio.versioningconfig import SUSPENDED, VersioningConfig

    from tests.e2e.test_deploy import changed_operations

    o = stack.settings.object_store
    admin = stack.s3("admin")
    operation = f"Bucket {o.bucket}:"
    try:
        admin.set_bucket_versioning(o.bucket, VersioningConfig(SUSPENDED))
        admin.delete_bucket_lifecycle(o.bucket)
        admin.delete_bucket_encryption(o.bucket)
        assert admin.get_bucket_versioning(o.bucket).status == SUSPENDED
        assert admin.get_bucket_lifecycle(o.bucket) is None and admin.get_bucket_encryption(o.bucket) is None
        repaired = run_govstack("up", "-i", stack.inventory)
        assert repaired.returncode == 0, repaired.stderr[-2000:]
        assert [name for name in changed_operations(repaired.stdout + repaired.stderr) if operation in name]
    finally:
        # Whatever failed above, the bucket leaves this test as the deploy makes it.
        if admin.get_bucket_versioning(o.bucket).status != "Enabled":
            run_govstack("up", "-i", stack.inventory)
    assert admin.get_bucket_versioning(o.bucket).status == "Enabled"
    assert admin.get_bucket_encryption(o.bucket).rule.sse_algorithm == "AES256"
    rules = admin.get_bucket_lifecycle(o.bucket).rules
    assert sorted((r.noncurrent_version_expiration or r.abort_incomplete_multipart_upload) is not None
                  for r in rules) == [True, True]
    assert {r.noncurrent_version_expiration.noncurrent_days for r in rules
            if r.noncurrent_version_expiration} == {o.noncurrent_version_days}
    again = run_govstack("up", "-i", stack.inventory)
    assert again.returncode == 0, again.stderr[-2000:]
    assert changed_operations(again.stdout + again.stderr) == []


def _files_holding(stack, marker: bytes) -> list[str]:
    found = subprocess.run(["grep", "-rlaF", marker.decode(), stack.plan.data_path("seaweedfs")],
                           capture_output=True, text=True, timeout=300)
    assert found.returncode in (0, 1), found.stderr
    return found.stdout.split()


def marked_pdf(marker: bytes) -> bytes:
    """A PDF whose content stream is not compressed (the marker is there as plain bytes), padded
    with binary bytes past what SeaweedFS would inline or gzip."""
    stream = b"BT /F1 12 Tf 72 712 Td (" + marker + b") Tj ET"
    return (b"%PDF-1.4\n1 0 obj << /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream
            + b"\nendstream\nendobj\n%" + bytes(range(256)) * 40 + b"\n%%EOF\n")


def test_objects_are_encrypted_at_rest_and_download_identical(stack, other_bucket):
    bucket = stack.settings.object_store.bucket
    app, admin = stack.s3("app"), stack.s3("admin")
    assert admin.get_bucket_encryption(bucket).rule.sse_algorithm == "AES256"
    marker = f"GOVSTACK-MARKER-{uuid.uuid4().hex}".encode()
    document = marked_pdf(marker)
    key = f"encrypted/{uuid.uuid4().hex}.pdf"
    app.put_object(bucket, key, io.BytesIO(document), len(document), content_type="application/pdf")
    # The control: the same bytes where no default encryption applies are found on disk.
    admin.put_object(other_bucket, "plain.pdf", io.BytesIO(document), len(document), content_type="application/pdf")
    try:
        holding = _files_holding(stack, marker)
        assert holding, "the control copy's marker is not on disk: the grep proves nothing"
        assert all(f"/{other_bucket}_" in path or f"/{other_bucket}/" in path for path in holding), holding
        assert app.stat_object(bucket, key).size == len(document)
        assert read(app, bucket, key) == document
    finally:
        for version in app.list_objects(bucket, prefix=key, include_version=True):
            app.remove_object(bucket, key, version_id=version.version_id)


def test_the_backup_identity_rotates_without_a_restart(stack):
    bucket = stack.settings.object_store.bucket
    secrets = Path(stack.settings.secrets_dir)
    access_name, secret_name = s3_pair(stack.settings, "backup")
    old = ((secrets / access_name).read_text().strip(), (secrets / secret_name).read_text().strip())
    gateway = stack.service_container("seaweedfs")
    started = docker("inspect", "-f", "{{.State.StartedAt}}", gateway).stdout.strip()
    key = f"rotation/{uuid.uuid4().hex}"
    put(stack.s3("app"), bucket, key, b"still here")

    result = run_govstack("secret", "rotate", access_name, "--lock-wait", "120", "-i", stack.inventory, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    new = ((secrets / access_name).read_text().strip(), (secrets / secret_name).read_text().strip())
    assert new[0] != old[0] and new[1] != old[1]

    endpoint = stack.forward("seaweedfs", stack.plan.ports["seaweedfs_s3"])
    region = stack.settings.object_store.region
    with_old = Minio(endpoint, access_key=old[0], secret_key=old[1], secure=False, region=region)
    assert attempt(lambda: read(with_old, bucket, key)) in ("InvalidAccessKeyId", DENIED)
    assert read(stack.s3("backup"), bucket, key) == b"still here"
    assert attempt(lambda: put(stack.s3("backup"), bucket, key, b"x")) == DENIED
    # The backup service reads the switched file per run; the app's pair never changed.
    assert _secret_names(stack, "backup") >= {access_name, secret_name}
    seen = docker("exec", stack.service_container("backup"), "sha256sum", f"/run/secrets/{access_name}").stdout
    assert seen.split()[0] == hashlib.sha256((secrets / access_name).read_bytes()).hexdigest()
    assert read(stack.s3("app"), bucket, key) == b"still here"
    assert docker("inspect", "-f", "{{.State.StartedAt}}", gateway).stdout.strip() == started
    stack.s3("app").remove_object(bucket, key)
