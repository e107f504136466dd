"""Objects: every bucket through the S3 API (the minio SDK), as one tar stream.

Each object becomes one tar member (``<bucket>/<key>``) whose PAX headers
carry the exact bucket, key, content type and user metadata, so a restore
puts back what the app wrote, byte for byte and header for header. The
stream goes straight into restic: no spool on disk, flat memory, and restic's
content-defined chunking deduplicates unchanged objects between runs.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from minio import Minio
from minio.error import S3Error

from govstack_backup import mirror
from govstack_backup.config import read_secret
from govstack_backup.manifest import BucketDigest, compare_objects

PAX_PREFIX = "GOVSTACK."
# A restore holds objects up to this size in memory to upload them in parallel (bounded by
# 2 x transfers of them in flight); larger ones stream from the snapshot one at a time.
IN_MEMORY_MAX = 16 << 20
_MISSING = ("NoSuchKey", "NoSuchObject", "NotFound", "NoSuchBucket")
CHUNK = 1 << 20


def client(s3: dict[str, Any], *, restore: bool = False) -> Minio:
    """The backup identity (read and list), or with ``restore`` the restore identity, whose key
    files only `govstack restore`'s one-off container has (config ``restore_*_key_file``; a
    config from before it had them restores with the backup pair, as then)."""
    prefix = "restore_" if restore and "restore_access_key_file" in s3 else ""
    return Minio(
        s3["endpoint"],
        access_key=read_secret(s3[f"{prefix}access_key_file"]),
        secret_key=read_secret(s3[f"{prefix}secret_key_file"]),
        secure=bool(s3.get("secure")),
        region=s3.get("region") or "us-east-1",
    )


def buckets(mc: Minio, wanted: list[str] | None = None) -> list[str]:
    names = sorted(b.name for b in mc.list_buckets())
    return [name for name in names if wanted is None or name in wanted]


class HashingReader:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n if n and n > 0 else CHUNK)
        self.sha256.update(data)
        self.size += len(data)
        return data


def _user_metadata(headers: Any) -> dict[str, str]:
    return {k.lower()[len("x-amz-meta-"):]: v for k, v in headers.items() if k.lower().startswith("x-amz-meta-")}


def export(mc: Minio, bucket_names: list[str], out: IO[bytes]) -> dict[str, Any]:
    """Write every object of ``bucket_names`` into ``out`` as a tar stream.
    Returns the objects part of the manifest."""
    result: dict[str, Any] = {"buckets": {}, "vanished": []}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as tar:
        for bucket in bucket_names:
            digest = BucketDigest()
            entries: dict[str, dict[str, Any]] = {}
            for obj in mc.list_objects(bucket, recursive=True):
                key = obj.object_name
                try:
                    resp = mc.get_object(bucket, key)
                except S3Error as exc:
                    if exc.code in _MISSING:  # deleted since the listing: not part of this state
                        result["vanished"].append(f"{bucket}/{key}")
                        continue
                    raise
                try:
                    info = tarfile.TarInfo(f"{bucket}/{key}")
                    info.size = int(resp.headers["Content-Length"])
                    info.mode = 0o600
                    modified = resp.headers.get("Last-Modified")
                    info.mtime = email.utils.parsedate_to_datetime(modified).timestamp() if modified else 0
                    info.pax_headers = {
                        f"{PAX_PREFIX}bucket": bucket,
                        f"{PAX_PREFIX}key": key,
                        f"{PAX_PREFIX}content_type": resp.headers.get("Content-Type") or "application/octet-stream",
                        **{f"{PAX_PREFIX}meta.{k}": v for k, v in _user_metadata(resp.headers).items()},
                    }
                    reader = HashingReader(resp)
                    tar.addfile(info, reader)
                finally:
                    resp.close()
                    resp.release_conn()
                sha = reader.sha256.hexdigest()
                entries[key] = {"sha256": sha, "size": reader.size}
                digest.add(key, sha, reader.size)
            result["buckets"][bucket] = {"count": digest.count, "bytes": digest.bytes,
                                         "digest": digest.hexdigest(), "objects": entries}
    return result


def restore(mc: Minio, stream: IO[bytes], expected: dict[str, Any]) -> dict[str, Any]:
    """Put every object of the tar stream back (buckets created as needed)."""
    made: set[str] = set()
    count = size = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            pax = member.pax_headers
            bucket, key = pax.get(f"{PAX_PREFIX}bucket"), pax.get(f"{PAX_PREFIX}key")
            if not bucket or key is None:
                raise ValueError(f"tar member {member.name!r} has no bucket/key header: not a govstack objects stream")
            if bucket not in made:
                if not mc.bucket_exists(bucket):
                    mc.make_bucket(bucket)
                made.add(bucket)
            meta_prefix = f"{PAX_PREFIX}meta."
            metadata = {k[len(meta_prefix):]: v for k, v in pax.items() if k.startswith(meta_prefix)}
            body = tar.extractfile(member)
            mc.put_object(bucket, key, body, member.size,
                          content_type=pax.get(f"{PAX_PREFIX}content_type") or "application/octet-stream",
                          metadata=metadata or None, part_size=64 * CHUNK)
            count += 1
            size += member.size
    for bucket in expected.get("buckets", {}):  # empty buckets have no member
        if bucket not in made and not mc.bucket_exists(bucket):
            mc.make_bucket(bucket)
    return {"objects": count, "bytes": size}


def restore_mirror(mc: Minio, restic: Any, snapshot: str, expected: dict[str, Any],
                   transfers: int = 4) -> dict[str, Any]:
    """Put back the objects of a mirror snapshot (jobs/backup/govstack_backup/mirror.py): its
    state file names each file's bucket, key, content type and metadata; the data directory
    comes out of restic as one tar stream; uploads run ``transfers`` at a time."""
    root = expected["mirror_dir"].strip("/")
    state = json.loads(restic.read_bytes(snapshot, f"{root}/{mirror.STATE}"))
    by_name = mirror.index(state)
    for bucket in sorted(set(expected.get("buckets", {})) | set(state["buckets"])):
        if not mc.bucket_exists(bucket):
            mc.make_bucket(bucket)
    count = size = 0
    slots = threading.BoundedSemaphore(2 * transfers)
    errors: list[BaseException] = []

    def put(bucket: str, key: str, entry: dict[str, Any], body: IO[bytes], length: int) -> None:
        mc.put_object(bucket, key, body, length, content_type=entry.get("content_type") or "application/octet-stream",
                      metadata=entry.get("metadata") or None, part_size=64 * CHUNK)

    def done(future: Future) -> None:
        slots.release()
        if future.exception() is not None:
            errors.append(future.exception())  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=transfers) as pool, \
            restic.dump(snapshot, f"{root}/{mirror.DATA}") as stream, \
            tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if errors:
                break
            found = by_name.get(os.path.basename(member.name)) if member.isfile() else None
            if found is None:  # a directory, or a stray file the state does not name
                continue
            bucket, key, entry = found
            body = tar.extractfile(member)
            assert body is not None
            if member.size <= IN_MEMORY_MAX:
                data = body.read()
                slots.acquire()
                pool.submit(put, bucket, key, entry, io.BytesIO(data), len(data)).add_done_callback(done)
            else:
                put(bucket, key, entry, body, member.size)
            count += 1
            size += member.size
    if errors:
        raise errors[0]
    return {"objects": count, "bytes": size}


def _sha256_of(mc: Minio, bucket: str, key: str) -> tuple[str, str, int]:
    resp = mc.get_object(bucket, key)
    try:
        digest, size = hashlib.sha256(), 0
        for chunk in resp.stream(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    finally:
        resp.close()
        resp.release_conn()
    return key, digest.hexdigest(), size


def read_back(mc: Minio, bucket: str, transfers: int = 1) -> Iterator[tuple[str, str, int]]:
    """(key, sha256, size) of every object in the bucket, as stored now, in key order
    (``transfers`` reads at a time)."""
    if not mc.bucket_exists(bucket):
        return
    keys = (obj.object_name for obj in mc.list_objects(bucket, recursive=True))
    if transfers <= 1:
        for key in keys:
            yield _sha256_of(mc, bucket, key)
        return
    with ThreadPoolExecutor(max_workers=transfers) as pool:
        yield from pool.map(lambda key: _sha256_of(mc, bucket, key), list(keys))


def verify(mc: Minio, expected: dict[str, Any], transfers: int = 1) -> dict[str, Any]:
    """Every object of the manifest, re-read from the store and compared."""
    result = {}
    for bucket, entry in sorted(expected.get("buckets", {}).items()):
        digest = BucketDigest()

        def observed(bucket: str = bucket, entry: dict = entry,
                     digest: BucketDigest = digest) -> Iterator[tuple[str, str, int]]:
            for key, sha, size in read_back(mc, bucket, transfers):
                if key in entry["objects"]:
                    digest.add(key, sha, size)
                yield key, sha, size

        check = compare_objects(entry["objects"], observed())
        check["digest"] = digest.hexdigest()
        check["digest_expected"] = entry["digest"]
        check["ok"] = check["ok"] and check["digest"] == entry["digest"]
        result[bucket] = check
    return result


def non_empty(mc: Minio, bucket_names: list[str]) -> dict[str, int]:
    """Buckets among ``bucket_names`` that hold at least one object (count capped at 1000)."""
    found = {}
    for bucket in bucket_names:
        if not mc.bucket_exists(bucket):
            continue
        count = 0
        for _ in mc.list_objects(bucket, recursive=True):
            count += 1
            if count >= 1000:
                break
        if count:
            found[bucket] = count
    return found
