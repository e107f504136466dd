"""The objects mirror of the backup job (jobs/backup/govstack_backup/mirror.py) against
an in-memory S3 and a real directory: only new/changed objects are read, removed ones
leave, odd keys stay inside the mirror, a crash at any point is repaired by the next
run, and a restore from the mirror's files puts back bytes, types and metadata."""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import tarfile
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from govstack_backup import mirror, objects
from govstack_backup.manifest import bucket_digest
from minio.error import S3Error

from tests.support.s3_response import S3Response

ODD_KEYS = [
    "../escape.txt", "../../../../etc/passwd", "a/../../b", "/leading-slash", "trailing/", "a//b",
    "dir/with space/ü.bin", "q?x=1#frag%20&y", "tab\tand\nnewline", "." , "..", "x" * 1000,
    "zero-byte",
]


class _Listed:
    def __init__(self, name, etag, size, modified):
        self.object_name, self.etag, self.size, self.last_modified = name, f'"{etag}"', size, modified


class FakeS3:
    """Buckets of key -> (body, content type, metadata, last modified); counts every GET."""

    def __init__(self):
        self.data: dict[str, dict[str, tuple]] = {}
        self.clock = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        self.gets: list[str] = []
        self.before_get = None  # hook(bucket, key): the store changing under the run

    def put(self, bucket, key, body, ctype="application/octet-stream", meta=None):
        self.clock += timedelta(seconds=1)
        self.data.setdefault(bucket, {})[key] = (body, ctype, dict(meta or {}), self.clock)

    # the minio API surface the job uses
    def list_buckets(self):
        return [type("B", (), {"name": name}) for name in self.data]

    def bucket_exists(self, bucket):
        return bucket in self.data

    def make_bucket(self, bucket):
        self.data[bucket] = {}

    def list_objects(self, bucket, recursive=True):
        return [_Listed(k, hashlib.md5(v[0]).hexdigest(), len(v[0]), v[3])  # noqa: S324 - an ETag
                for k, v in sorted(self.data.get(bucket, {}).items())]

    def get_object(self, bucket, key):
        if self.before_get:
            self.before_get(bucket, key)
        self.gets.append(key)
        if key not in self.data.get(bucket, {}):
            raise S3Error(None, "NoSuchKey", "gone", key, "req", "host")
        body, ctype, meta, modified = self.data[bucket][key]
        etag = hashlib.md5(body).hexdigest()  # noqa: S324 - S3's ETag
        headers = {"Content-Length": str(len(body)), "Content-Type": ctype, "ETag": f'"{etag}"',
                   "Last-Modified": email.utils.format_datetime(modified, usegmt=True),
                   **{f"x-amz-meta-{k}": v for k, v in meta.items()}}
        return S3Response(body, headers)

    def put_object(self, bucket, key, body, length, content_type=None, metadata=None, part_size=None):
        data = body.read(length)
        assert len(data) == length
        self.put(bucket, key, data, content_type, metadata)


class FakeRestic:
    """What restore_mirror reads from restic, served from a copy of the mirror directory
    (the "snapshot"): one file's bytes, and a directory as a tar stream."""

    def __init__(self, root: Path):
        self.root = root

    def read_bytes(self, snapshot, filename):
        return (self.root / filename.split("/", 2)[-1]).read_bytes()

    @contextmanager
    def dump(self, snapshot, filename):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(self.root / filename.split("/", 2)[-1], arcname=filename)
        buf.seek(0)
        yield buf


def _store():
    s3 = FakeS3()
    for i, key in enumerate(ODD_KEYS):
        s3.put("documents", key, b"" if key == "zero-byte" else f"body {i} ".encode() * (i + 1),
               "text/plain", {"original-filename": f"h%C3%A9llo-{i}.txt"})
    s3.put("documents", "big.bin", os.urandom(3 << 20), "application/pdf")
    s3.data["empty"] = {}
    return s3


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _run(root, s3, **kw):
    return mirror.Mirror(str(root), transfers=kw.pop("transfers", 3), **kw).update(s3, objects.buckets(s3))


def test_odd_keys_stay_inside_the_mirror_and_round_trip_through_a_restore(tmp_path):
    s3, root = _store(), tmp_path / "mirror"
    update = _run(root, s3)
    assert update.counters.fetched == len(ODD_KEYS) + 1 and update.counters.unchanged == 0
    # Every file is data/<2 hex>/<64 hex> or the state: no key reaches a path of its own.
    for name in _files(root):
        assert name in ("state.json", ".lock") or (name.startswith("data/") and len(name) == 5 + 3 + 64), name
    assert not (tmp_path / "escape.txt").exists() and _files(tmp_path) == {f"mirror/{n}" for n in _files(root)}
    part = update.manifest_part()
    docs = part["buckets"]["documents"]
    assert docs["count"] == len(ODD_KEYS) + 1 and docs["objects"]["zero-byte"]["size"] == 0
    assert docs["objects"]["zero-byte"]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert docs["digest"] == bucket_digest(docs["objects"]) and part["buckets"]["empty"]["count"] == 0

    target = FakeS3()
    put = objects.restore_mirror(target, FakeRestic(root), "snap", {**part, "mirror_dir": "/backups/mirror"},
                                 transfers=3)
    assert put["objects"] == len(ODD_KEYS) + 1
    assert {k: v[:3] for k, v in target.data["documents"].items()} == \
        {k: v[:3] for k, v in s3.data["documents"].items()}
    assert target.data["empty"] == {}
    assert all(check["ok"] for check in objects.verify(target, part, transfers=3).values())


def test_an_unchanged_run_reads_no_object_and_a_changed_one_reads_only_it(tmp_path):
    s3, root = _store(), tmp_path / "mirror"
    first = _run(root, s3)
    stats = {n: os.stat(root / n) for n in _files(root) if n.startswith("data/")}
    state_stat = os.stat(root / "state.json")
    s3.gets.clear()
    again = _run(root, s3)
    assert s3.gets == [] and again.counters.fetched == 0 and again.counters.unchanged == len(ODD_KEYS) + 1
    # Nothing rewritten, the state file neither: restic's change detection (mtime, ctime, inode,
    # size) skips every file.
    stats["state.json"] = state_stat
    for name, st in stats.items():
        now = os.stat(root / name)
        assert (now.st_ino, now.st_mtime_ns, now.st_ctime_ns, now.st_size) == \
            (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    # The manifest's sha256s are carried forward, not recomputed.
    assert again.manifest_part()["buckets"] == first.manifest_part()["buckets"]

    s3.put("documents", "a//b", b"changed")
    s3.put("documents", "new/one", b"new")
    del s3.data["documents"]["../escape.txt"]
    third = _run(root, s3)
    assert sorted(s3.gets) == ["a//b", "new/one"]
    c = third.counters
    assert (c.fetched, c.deleted, c.swept, c.unchanged) == (2, 1, 1, len(ODD_KEYS) - 1)
    objs = third.manifest_part()["buckets"]["documents"]["objects"]
    assert objs["a//b"]["sha256"] == hashlib.sha256(b"changed").hexdigest() and "../escape.txt" not in objs
    assert not (root / mirror.relpath("documents", "../escape.txt")).exists()


def test_an_object_replaced_during_the_run_is_recorded_as_read(tmp_path):
    s3, root = _store(), tmp_path / "mirror"
    _run(root, s3)
    s3.put("documents", "a//b", b"version 2")

    def replace(bucket, key):
        if key == "a//b" and s3.data[bucket][key][0] == b"version 2":
            s3.put(bucket, key, b"version 3, written between the listing and the GET")

    s3.before_get = replace
    update = _run(root, s3)
    entry = update.state["buckets"]["documents"]["a//b"]
    body = b"version 3, written between the listing and the GET"
    assert entry["sha256"] == hashlib.sha256(body).hexdigest() and entry["size"] == len(body)
    assert (root / mirror.relpath("documents", "a//b")).read_bytes() == body
    s3.before_get, s3.gets = None, []
    assert _run(root, s3).counters.fetched == 0 and s3.gets == []  # its new ETag is in the state


def test_an_object_deleted_during_the_run_is_left_out(tmp_path):
    s3, root = _store(), tmp_path / "mirror"
    s3.before_get = lambda bucket, key: s3.data[bucket].pop("big.bin", None) if key == "big.bin" else None
    update = _run(root, s3, transfers=1)
    assert update.vanished == ["documents/big.bin"] and "big.bin" not in update.state["buckets"]["documents"]


def test_a_crash_between_download_and_rename_leaves_the_previous_state_and_is_repaired(tmp_path):
    s3, root = _store(), tmp_path / "mirror"
    _run(root, s3)
    before = (root / "state.json").read_bytes()
    s3.put("documents", "a//b", b"changed")
    s3.put("documents", "new/one", b"new")

    def crash(stage, key):
        if key == "new/one":
            raise KeyboardInterrupt  # the container stopped mid-run

    with pytest.raises(KeyboardInterrupt):
        mirror.Mirror(str(root), transfers=1).update(s3, ["documents", "empty"], fault=crash)
    assert (root / "state.json").read_bytes() == before  # the state never names a half-written file
    assert not (root / mirror.relpath("documents", "new/one")).exists()
    s3.gets.clear()
    update = _run(root, s3)
    assert sorted(s3.gets) == ["a//b", "new/one"] and update.counters.fetched == 2
    assert not list((root / "tmp").iterdir())
    assert (root / mirror.relpath("documents", "a//b")).read_bytes() == b"changed"


def test_a_crash_after_the_renames_before_the_state_is_repaired(tmp_path, monkeypatch):
    s3, root = _store(), tmp_path / "mirror"
    _run(root, s3)
    s3.put("documents", "a//b", b"changed")
    s3.put("documents", "soon-gone", b"x")

    def crash(self, state):
        raise OSError("killed")

    with monkeypatch.context() as m:
        m.setattr(mirror.Mirror, "write_state", crash)
        with pytest.raises(OSError):
            _run(root, s3)
    del s3.data["documents"]["soon-gone"]  # its file is on disk, named by no state
    update = _run(root, s3)
    assert update.counters.fetched == 1 and update.counters.swept == 1  # a//b again (state said older)
    assert not (root / mirror.relpath("documents", "soon-gone")).exists()
    assert update.state["buckets"]["documents"]["a//b"]["sha256"] == hashlib.sha256(b"changed").hexdigest()


def test_an_altered_or_lost_mirror_file_and_a_corrupt_state_are_repaired(tmp_path):
    s3, root = _store(), tmp_path / "mirror"
    _run(root, s3)
    (root / mirror.relpath("documents", "a//b")).write_bytes(b"tampered")
    (root / mirror.relpath("documents", "trailing/")).unlink()
    s3.gets.clear()
    update = _run(root, s3)
    assert sorted(s3.gets) == ["a//b", "trailing/"] and update.counters.repaired == 2
    (root / "state.json").write_text("{not json")
    update = _run(root, s3)
    assert update.counters.fetched == len(ODD_KEYS) + 1  # rebuilt from S3, no backup lost


def test_too_little_free_space_fails_before_any_download(tmp_path):
    s3, root = _store(), tmp_path / "mirror"
    with pytest.raises(mirror.MirrorError, match="no space left for the objects mirror"):
        _run(root, s3, min_free_bytes=1 << 62)
    assert s3.gets == [] and not (root / "state.json").exists()


def test_the_state_file_is_replaced_atomically_and_private(tmp_path):
    s3, root = _store(), tmp_path / "mirror"
    _run(root, s3)
    assert oct(os.stat(root / "state.json").st_mode & 0o777) == "0o600"
    assert json.loads((root / "state.json").read_text())["format"] == mirror.FORMAT
    assert not list(root.glob(".state.json.tmp"))
    with pytest.raises(mirror.MirrorError):
        mirror.Mirror(str(root), transfers=0)
