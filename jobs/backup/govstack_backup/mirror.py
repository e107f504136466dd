"""Objects, incrementally: a local mirror of every bucket on the backup volume.

Each run lists the buckets and compares every object's (ETag, size,
Last-Modified) with the state file of the previous run; only new and changed
objects are downloaded, removed ones are deleted. restic then backs the
mirror directory up, and its own change detection (mtime, ctime, inode,
size) skips every file this run did not write: an unchanged run reads no
object and stores nothing new.

Layout below the mirror root (``backup.json`` ``mirror_dir``)::

    data/<h[:2]>/<h>   one object; h = sha256(bucket NUL key): any key, also
                       "../x", "a//b", "/" or 1000 bytes long, is a safe name
    state.json         per object: etag, size, last_modified, sha256,
                       content type, user metadata, file mtime; restores read it
    tmp/               downloads in progress (removed at the start of a run)
    .lock              flock: one mirror update at a time, across containers

Crash safety: an object is written to ``tmp/``, hashed as it arrives, then
renamed into ``data/``; ``state.json`` is written (temp + fsync + rename) only
after every file it names is on disk (``sync``). A crash anywhere leaves the
previous state with files it may not describe: those fail the state's
(size, mtime) check or have no entry, so the next run downloads them again,
and files no entry names are swept. restic only ever reads renamed, complete
files, and restores only what ``state.json`` names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from minio.error import S3Error

from govstack_backup.manifest import BucketDigest

STATE = "state.json"
DATA = "data"
TMP = "tmp"
LOCK = ".lock"
FORMAT = 1
CHUNK = 1 << 20
_MISSING = ("NoSuchKey", "NoSuchObject", "NotFound", "NoSuchBucket")


class MirrorError(RuntimeError):
    pass


def object_name(bucket: str, key: str) -> str:
    """The file name of (bucket, key): hex only, whatever the key holds."""
    return hashlib.sha256(bucket.encode() + b"\0" + key.encode("utf-8", "surrogatepass")).hexdigest()


def relpath(bucket: str, key: str) -> str:
    name = object_name(bucket, key)
    return f"{DATA}/{name[:2]}/{name}"


def _epoch(value: Any) -> float:
    """Last-Modified as seconds: a datetime (listing) or an HTTP date (GET headers)."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        return parsedate_to_datetime(value).timestamp()
    return float(value.timestamp())


def _etag(value: Any) -> str:
    return str(value or "").strip('"')


def _user_metadata(headers: Any) -> dict[str, str]:
    return {k.lower()[len("x-amz-meta-"):]: v for k, v in headers.items() if k.lower().startswith("x-amz-meta-")}


@dataclass
class Counters:
    listed: int = 0
    unchanged: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    deleted: int = 0
    vanished: int = 0
    swept: int = 0
    repaired: int = 0  # entries in the state whose file was missing or altered

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Fetch:
    bucket: str
    key: str
    size: int
    result: dict[str, Any] | None = None
    vanished: bool = False
    error: BaseException | None = None


@dataclass
class Update:
    """What one mirror update saw and did."""

    state: dict[str, Any]
    counters: Counters
    vanished: list[str] = field(default_factory=list)

    def manifest_part(self) -> dict[str, Any]:
        """The manifest's objects part: per bucket count, bytes, digest and key -> {sha256, size}."""
        out: dict[str, Any] = {"format": "mirror", "buckets": {}, "vanished": self.vanished,
                               "counters": self.counters.as_dict()}
        for bucket, entries in self.state["buckets"].items():
            digest = BucketDigest()
            objs = {}
            for key in sorted(entries):
                e = entries[key]
                objs[key] = {"sha256": e["sha256"], "size": e["size"]}
                digest.add(key, e["sha256"], e["size"])
            out["buckets"][bucket] = {"count": digest.count, "bytes": digest.bytes, "digest": digest.hexdigest(),
                                      "objects": objs}
        return out


class Mirror:
    def __init__(self, root: str, *, transfers: int = 4, min_free_bytes: int = 0,
                 log: Callable[[str], None] | None = None) -> None:
        if transfers < 1:
            raise MirrorError("transfers must be at least 1")
        self.root = root
        self.transfers = transfers
        self.min_free_bytes = min_free_bytes
        self.log = log or (lambda _message: None)

    # -- files ---------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def load_state(self) -> dict[str, Any]:
        try:
            with open(self.path(STATE), encoding="utf-8") as fh:
                state = json.load(fh)
            if state.get("format") != FORMAT or not isinstance(state.get("buckets"), dict):
                raise ValueError("unknown format")
            return state
        except FileNotFoundError:
            return {"format": FORMAT, "buckets": {}}
        except (OSError, ValueError) as exc:
            # Every file is then re-checked against S3: a lost state costs one cold run, not a backup.
            self.log(f"mirror: {self.path(STATE)} is unreadable ({exc}); rebuilding the mirror from S3")
            return {"format": FORMAT, "buckets": {}}

    def write_state(self, state: dict[str, Any]) -> None:
        data = (json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        with contextlib.suppress(OSError), open(self.path(STATE), "rb") as fh:
            if fh.read() == data:  # unchanged: left alone, so restic finds it unmodified too
                return
        tmp = self.path(f".{STATE}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path(STATE))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.root)

    @contextlib.contextmanager
    def locked(self, wait_s: float = 900):
        os.makedirs(self.root, exist_ok=True)
        fh = open(self.path(LOCK), "a")  # noqa: SIM115 - held for the update
        deadline = time.monotonic() + wait_s
        try:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise MirrorError(f"the objects mirror {self.root} is locked by another backup run") from None
                    time.sleep(1)
            yield
        finally:
            fh.close()

    def _fresh_file(self, rel: str, entry: dict[str, Any]) -> bool:
        try:
            st = os.stat(self.path(rel))
        except OSError:
            return False
        return st.st_size == entry["size"] and st.st_mtime_ns == entry["mtime_ns"]

    # -- the update ----------------------------------------------------------------------------
    def update(self, mc: Any, bucket_names: Iterable[str],
               fault: Callable[[str, str], None] | None = None) -> Update:
        """Bring the mirror to the buckets' current state; returns the new state and counters.
        ``fault(stage, key)``: a test hook called at "downloaded" (temp file complete, not renamed)."""
        with self.locked():
            return self.update_locked(mc, list(bucket_names), fault)

    def update_locked(self, mc: Any, bucket_names: list[str],
                      fault: Callable[[str, str], None] | None = None) -> Update:
        """``update`` for a caller that holds ``locked()`` (and keeps it while restic reads the mirror)."""
        shutil.rmtree(self.path(TMP), ignore_errors=True)  # a crashed run's partial downloads
        os.makedirs(self.path(TMP), mode=0o700, exist_ok=True)
        os.makedirs(self.path(DATA), mode=0o700, exist_ok=True)
        old = self.load_state()["buckets"]
        counters = Counters()
        new: dict[str, dict[str, Any]] = {}
        todo: list[_Fetch] = []
        for bucket in bucket_names:
            before = old.get(bucket, {})
            entries = new[bucket] = {}
            seen: set[str] = set()
            for obj in mc.list_objects(bucket, recursive=True):
                key = obj.object_name
                seen.add(key)
                counters.listed += 1
                prev = before.get(key)
                listed = (_etag(obj.etag), int(obj.size or 0), _epoch(obj.last_modified))
                if prev is not None and (prev["etag"], prev["size"], prev["last_modified"]) == listed:
                    if self._fresh_file(relpath(bucket, key), prev):
                        entries[key] = prev
                        counters.unchanged += 1
                        continue
                    counters.repaired += 1
                todo.append(_Fetch(bucket, key, listed[1]))
            counters.deleted += len(before.keys() - seen)
        self._check_space(todo)
        vanished = self._fetch_all(mc, todo, new, counters, fault)
        # Every file the new state names is on disk before the state says so.
        os.sync()
        state = {"format": FORMAT, "buckets": {b: dict(sorted(e.items())) for b, e in new.items()}}
        self.write_state(state)
        counters.swept = self.sweep(state)
        return Update(state=state, counters=counters, vanished=vanished)

    def _check_space(self, todo: list[_Fetch]) -> None:
        needed = sum(f.size for f in todo) + self.min_free_bytes
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        if needed > free:
            raise MirrorError(f"no space left for the objects mirror {self.root}: {len(todo)} new or changed "
                              f"objects need {_mb(needed - self.min_free_bytes)} plus the "
                              f"{_mb(self.min_free_bytes)} kept free (backup.mirror_min_free_mb), "
                              f"{_mb(free)} free")

    def _fetch_all(self, mc: Any, todo: list[_Fetch], new: dict[str, dict[str, Any]], counters: Counters,
                   fault: Callable[[str, str], None] | None) -> list[str]:
        stop = threading.Event()

        def work(item: _Fetch) -> _Fetch:
            if stop.is_set():
                return item
            try:
                item.result = self.fetch(mc, item.bucket, item.key, fault)
                item.vanished = item.result is None
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the pool stops
                item.error = exc
                stop.set()
            return item

        vanished = []
        with ThreadPoolExecutor(max_workers=self.transfers) as pool:
            done = list(pool.map(work, todo))
        for item in done:
            if item.error is not None:
                raise item.error
        for item in done:
            if item.vanished:  # deleted since the listing: not part of this state
                vanished.append(f"{item.bucket}/{item.key}")
                counters.vanished += 1
                continue
            if item.result is None:
                continue
            new[item.bucket][item.key] = item.result
            counters.fetched += 1
            counters.fetched_bytes += item.result["size"]
        return vanished

    def fetch(self, mc: Any, bucket: str, key: str, fault: Callable[[str, str], None] | None = None
              ) -> dict[str, Any] | None:
        """One object into the mirror (temp + hash + rename); its state entry, or None when it is gone."""
        try:
            resp = mc.get_object(bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise
        rel = relpath(bucket, key)
        name = os.path.basename(rel)
        tmp = self.path(TMP, f"{name}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        digest, size = hashlib.sha256(), 0
        try:
            try:
                with os.fdopen(fd, "wb") as fh:
                    for chunk in resp.stream(CHUNK):
                        digest.update(chunk)
                        fh.write(chunk)
                        size += len(chunk)
                headers = resp.headers
            finally:
                resp.close()
                resp.release_conn()
            # What was read is what is kept: an object replaced during the run is described by the
            # bytes actually downloaded (its new ETag), so the next run sees it unchanged.
            length = headers.get("Content-Length")
            if length is not None and int(length) != size:
                raise MirrorError(f"{bucket}/{key}: read {size} bytes, the store announced {length}")
            modified = _epoch(headers.get("Last-Modified"))
            mtime_ns = int(modified * 1e9) if modified > 0 else 1
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
            if fault is not None:
                fault("downloaded", key)
            os.makedirs(os.path.dirname(self.path(rel)), mode=0o700, exist_ok=True)
            os.replace(tmp, self.path(rel))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return {"etag": _etag(headers.get("ETag")), "size": size, "last_modified": modified, "mtime_ns": mtime_ns,
                "sha256": digest.hexdigest(),
                "content_type": headers.get("Content-Type") or "application/octet-stream",
                "metadata": _user_metadata(headers)}

    def sweep(self, state: dict[str, Any]) -> int:
        """Delete every file below data/ that the state does not name (removed objects, a crashed
        run's leftovers). Returns how many."""
        keep = {object_name(bucket, key) for bucket, entries in state["buckets"].items() for key in entries}
        removed = 0
        for directory, _dirs, names in os.walk(self.path(DATA)):
            for name in names:
                if name not in keep:
                    os.unlink(os.path.join(directory, name))
                    removed += 1
        return removed


def index(state: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """file name -> (bucket, key, state entry): how a restore maps the snapshot's files back."""
    return {object_name(bucket, key): (bucket, key, entry)
            for bucket, entries in state["buckets"].items() for key, entry in entries.items()}


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
