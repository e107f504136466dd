"""One backup run, start to end:

1. Postgres: export a snapshot; checksum every table in it; stream
   ``pg_dump --snapshot`` and the roles (``pg_dumpall --globals-only``) into restic.
2. Objects: list every bucket *after* the database snapshot (a row is
   committed only after its object is written, so every row of the snapshot
   finds its object), stream them as a tar; then prove, still inside the
   snapshot, that every object a row names was captured.
3. Vectors: every Chroma collection as paged JSONL.
4. Read every stream this run added back from the repository and compare its
   sha256 (a snapshot that added no data was read back by the run that stored it).
5. The manifest, last: a run with a manifest is complete and verified.
6. ``restic check --read-data-subset``; retention (forget) only when the
   check passed, and prune when its schedule is due (``prune_due``); then the
   offsite copy.
7. Freshness metrics, success or failure alike.

Any failure stops the run, exits non-zero, and prunes nothing.

With ``if_changed`` (``run --if-changed``, the schedule's runs), ``_current_run`` first compares
the data of now with the last complete run (unchanged.py); when nothing changed, the run stores
nothing and reports that run as current.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from govstack_backup import __version__, metrics, mirror, objects, postgres, unchanged, vectors
from govstack_backup.config import Config
from govstack_backup.files import read_json, write_if_changed, write_json_atomic
from govstack_backup.manifest import (
    FILES,
    FORMAT,
    PRE_DEPLOY_PREFIX,
    PRE_DEPLOY_TAG,
    RUN_TAG,
    group_runs,
    manifest_digest,
    retention_args,
    runs_to_forget,
)
from govstack_backup.restic import Restic, ResticError

LOCK = "/tmp/govstack-backup.lock"


class BackupFailed(RuntimeError):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


def log(message: str) -> None:
    print(f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')} govstack-backup: {message}", file=sys.stderr, flush=True)


def local_repo(cfg: Config, repository: str | None = None) -> Restic:
    return Restic(repository or cfg.repository, cfg.password_file, cfg.cache_dir, cfg.host_tag)


def offsite_repo(cfg: Config) -> Restic | None:
    if cfg.offsite is None:
        return None
    o = cfg.offsite
    return Restic(o.repository, cfg.password_file, cfg.cache_dir, cfg.host_tag, label="offsite",
                  s3_keys=(o.access_key_file, o.secret_key_file), s3_region=o.region)


class RunLock:
    """One run (or restore) at a time in this container: the scheduler's and
    an operator's `govstack backup` share the container's /tmp. ``wait_s``:
    how long to wait for a run in progress (a pre-deploy copy waits)."""

    def __init__(self, wait_s: float = 0) -> None:
        self.wait_s = wait_s

    def __enter__(self) -> RunLock:
        self.fh = open(LOCK, "w")  # noqa: SIM115 - held for the run
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self.fh.close()
                    raise BackupFailed("lock", "another backup run is in progress in this container") from None
                time.sleep(1)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _pump(source: Any, sink: Any) -> None:
    for chunk in iter(lambda: source.read(1 << 20), b""):
        sink.write(chunk)


def versions(cfg: Config, restic: Restic, chroma_api: str | None = None) -> dict[str, str]:
    return {
        "govstack_backup": __version__,
        "restic": restic.version(),
        "pg_dump": postgres.tool_version("pg_dump"),
        "python": platform.python_version(),
        "minio_sdk": _dist_version("minio"),
        "psycopg": _dist_version("psycopg"),
        **({"chroma_api": chroma_api} if chroma_api else {}),
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def run_backup(cfg: Config, *, repository: str | None = None, check_subset: str | None = None,
               if_changed: bool = False) -> dict[str, Any]:
    """One run; returns its summary. Raises BackupFailed (metrics recorded either way).
    ``if_changed``: store nothing when nothing changed since the last complete run (unchanged.py)."""
    started = time.time()
    summary: dict[str, Any] = {"ok": False}
    try:
        with RunLock():
            current = _current_run(cfg, check_subset, started) if if_changed and repository is None else None
            if current is not None and current.get("ok"):
                summary = current
            else:
                summary = _run(cfg, repository, check_subset, started)
                if current is not None:
                    # Why this run stored: what the comparison found (its downloads count here).
                    summary["if_changed"] = current
    except BackupFailed as exc:
        summary = {"ok": False, "step": exc.step, "error": str(exc)}
        raise
    except KeyboardInterrupt:
        summary = {"ok": False, "step": "interrupted", "error": "interrupted (the container is stopping)"}
        raise BackupFailed("interrupted", "the run was interrupted") from None
    finally:
        finished = time.time()
        if cfg.metrics_file and repository is None:
            try:
                metrics.record(cfg.metrics_file, ok=bool(summary.get("ok")), finished_at=finished,
                               duration_s=finished - started, size_bytes=int(summary.get("bytes", 0)))
            except OSError as exc:  # a metrics problem must not hide the run's own result
                log(f"cannot write {cfg.metrics_file}: {exc}")
    return summary


def _step(name: str):
    class _Step:
        def __enter__(self) -> None:
            self.t0 = time.monotonic()
            log(f"{name} …")

        def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
            if exc is None:
                log(f"{name} done in {time.monotonic() - self.t0:.1f}s")
                return False
            if isinstance(exc, BackupFailed | KeyboardInterrupt):
                return False
            raise BackupFailed(name, str(exc) or type(exc).__name__) from exc

    return _Step()


def _run(cfg: Config, repository: str | None, check_subset: str | None, started: float) -> dict[str, Any]:
    restic = local_repo(cfg, repository)
    run_id = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
    tags = [RUN_TAG, f"run:{run_id}"]
    manifest: dict[str, Any] = {"format": FORMAT, "run": run_id, "project": cfg.project,
                                "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
                                "components": {}}
    with _step("repository"):
        if restic.ensure():
            log(f"created the restic repository {restic.repository}")

    chroma = vectors.Chroma(cfg.chroma["url"], cfg.chroma.get("tenant", "default_tenant"))
    mc = objects.client(cfg.s3)
    streams: dict[str, dict[str, Any]] = {}

    with _step("postgres snapshot"):
        snap = postgres.Snapshot(cfg.pg)
    # Mirror mode: the roles and the ledger become files beside the vectors export, stored in
    # the vectors' snapshot (see backup_vectors_dir), not two stdin snapshots of their own.
    files: dict[str, bytes] | None = {} if cfg.mirror_dir else None
    try:
        manifest["components"]["postgres"] = backup_postgres(cfg, restic, snap, tags, streams, files)
        # Inside the snapshot the dump read: the key `run --if-changed` compares the database with.
        pg_key = unchanged.postgres_key(snap.conn, manifest["components"]["postgres"]["sequences"])

        with _step("objects"):
            bucket_names = objects.buckets(mc, cfg.s3.get("buckets"))
            if cfg.mirror_dir:
                streams["objects"] = backup_objects_mirror(cfg, restic, mc, bucket_names, [*tags, "component:objects"])
            else:
                streams["objects"] = restic.backup_stream(
                    FILES["objects"], [*tags, "component:objects"], lambda w: objects.export(mc, bucket_names, w))
            manifest["components"]["objects"] = streams["objects"].pop("produced")

        if cfg.object_refs:
            with _step("consistency"):
                captured = {key for entry in manifest["components"]["objects"]["buckets"].values()
                            for key in entry["objects"]}
                rows = 0
                missing = []
                for ref in snap.references(cfg.object_refs):
                    rows += 1
                    if ref not in captured:
                        missing.append(ref)
                manifest["consistency"] = {"object_refs": cfg.object_refs, "rows": rows,
                                           "missing_objects": missing[:100], "missing_count": len(missing)}
                if missing:
                    log(f"warning: {len(missing)} rows name objects deleted during the run, e.g. {missing[0]}")
        watermarks = _vector_watermarks(cfg, snap.conn)
    finally:
        snap.close()

    ledger = _read_ledger(cfg.ledger_file)
    with _step("vectors"):
        if files is not None:
            if ledger is not None:
                files["ledger"] = ledger
            component_tags = [f"component:{name}" for name in ("vectors", *files)]
            streams.update(backup_vectors_dir(cfg, restic, chroma, watermarks, [*tags, *component_tags], files))
        else:
            streams["vectors"] = restic.backup_stream(
                FILES["vectors"], [*tags, "component:vectors"], lambda w: vectors.export(chroma, w))
        manifest["components"]["vectors"] = streams["vectors"].pop("produced")

    if ledger is not None:
        manifest["components"]["ledger"] = {"lines": ledger.count(b"\n")}
    if ledger is not None and files is None:
        with _step("ledger"):
            streams["ledger"] = restic.backup_stream(FILES["ledger"], [*tags, "component:ledger"],
                                                     lambda w: w.write(ledger))

    for name, stream in streams.items():
        stream.pop("produced", None)
        target = manifest["components"].setdefault(name.split("_")[0], {})
        target.setdefault("streams", {})[name] = stream

    read_back: list[str] = []
    if cfg.readback:
        with _step("read back"):
            verified_file = _verified_file(cfg, restic)
            verified = _load_verified(verified_file)
            read_back = _read_back(restic, streams, verified)
            if verified_file is not None:
                _write_verified(verified_file, verified)
            skipped = [name for name in streams if name not in read_back]
            if skipped:
                log(f"read back: {', '.join(skipped)} unchanged (stored and read back before)")

    total = sum(stream["bytes"] for stream in streams.values())
    manifest.update({
        "finished_at": datetime.now(UTC).isoformat(),
        "duration_s": round(time.time() - started, 3),
        "bytes": total,
        "versions": versions(cfg, restic, manifest["components"]["vectors"].get("chroma_api_version")),
    })
    manifest_bytes = (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()
    with _step("manifest"):
        stored = restic.backup_stream(FILES["manifest"], [*tags, "component:manifest"],
                                      lambda w: w.write(manifest_bytes))

    _check(cfg, restic, check_subset)

    with _step("retention"):
        forgotten = apply_retention(restic, cfg, run_id)
    pruned = []
    if prune_due(cfg, restic, forgotten):
        with _step("prune"):
            prune(cfg, restic)
            pruned.append(restic.label)

    offsite = offsite_repo(cfg) if repository is None else None
    if offsite is not None:
        with _step(f"offsite copy to {offsite.repository}"):
            copy_run(restic, offsite, run_id)
            forgotten_offsite = apply_retention(offsite, cfg, run_id)
        if prune_due(cfg, offsite, forgotten_offsite):
            with _step(f"prune {offsite.repository}"):
                prune(cfg, offsite)
                pruned.append(offsite.label)

    record = unchanged.record_path(cfg, restic) if repository is None and cfg.mirror_dir else None
    if record is not None:
        # Last, once everything above succeeded: what `run --if-changed` compares against.
        unchanged.write_record(
            record, restic, run=run_id, manifest_snapshot=stored["snapshot"],
            snapshots={name: stream["snapshot"] for name, stream in streams.items()}, bytes_total=total, cfg=cfg,
            postgres=pg_key, objects_sha256=streams["objects"]["sha256"], vectors_sha256=streams["vectors"]["sha256"],
            ledger_sha256=unchanged.ledger_digest(ledger),
            offsite=offsite.repository if offsite is not None else None)

    return {
        "ok": True,
        "run": run_id,
        "manifest_snapshot": stored["snapshot"],
        "manifest_sha256": manifest_digest(manifest),
        "snapshots": {name: stream["snapshot"] for name, stream in streams.items()},
        "bytes": total,
        "duration_s": round(time.time() - started, 3),
        "forgotten_snapshots": len(forgotten),
        "pruned": pruned,
        "read_back": read_back,
        # What this run read from S3 and what restic found new: the incremental run's proof.
        "objects": {k: manifest["components"]["objects"][k] for k in ("counters", "restic")
                    if k in manifest["components"]["objects"]},
        "vectors": {k: manifest["components"]["vectors"][k] for k in ("counters", "restic")
                    if k in manifest["components"]["vectors"]},
        "offsite": offsite.repository if offsite is not None else None,
        "repository": restic.repository,
    }


def _check(cfg: Config, restic: Restic, check_subset: str | None) -> None:
    subset = check_subset or cfg.check_read_data_subset
    with _step(f"check --read-data-subset={subset}"):
        started = time.time()
        checked = restic.check(subset)
        if checked.returncode != 0:
            raise BackupFailed("check", f"restic check found errors in {restic.repository}; nothing pruned "
                                        f"({(checked.stdout + checked.stderr).strip().splitlines()[-1:]})")
        unchanged.write_check_stamp(cfg, restic, started)


def _current_run(cfg: Config, check_subset: str | None, started: float) -> dict[str, Any]:
    """``run --if-changed``: the summary of a run that stored nothing, because the last complete
    run holds exactly the data of now (unchanged.py); else ``{"ok": False, "changed": why, …}``
    (something changed, or it cannot be shown that nothing did), and a full run follows."""
    restic = local_repo(cfg)
    if not cfg.mirror_dir:
        return _changed("objects are streamed (no mirror): a change cannot be seen without reading them")
    record = unchanged.load_record(unchanged.record_path(cfg, restic))
    if record is None:
        return _changed("no record of a complete run of this repository")
    t0 = time.monotonic()
    try:
        why, counters = _changed_since(cfg, restic, record)
    except Exception as exc:  # noqa: BLE001 - any doubt is a full run, which reports its own failures
        return _changed(f"the comparison failed ({type(exc).__name__}: {str(exc)[:300]})")
    log(f"compared with run {record['run']} in {time.monotonic() - t0:.1f}s")
    if why is not None:
        return _changed(f"{why} since run {record['run']}", counters)
    log(f"nothing changed since run {record['run']}: nothing stored, that run is current")
    checked = unchanged.check_due(cfg, restic)
    if checked:
        _check(cfg, restic, check_subset)
    pruned = []
    if prune_due(cfg, restic, []):
        with _step("prune"):
            prune(cfg, restic)
            pruned.append(restic.label)
    offsite = offsite_repo(cfg)
    if offsite is not None:
        # The offsite repository may have lost that run (a failed copy is retried by every run).
        with _step(f"offsite copy to {offsite.repository}"):
            copy_run(restic, offsite, record["run"])
    return {
        "ok": True,
        "run": record["run"],
        "unchanged": True,
        "manifest_snapshot": record["manifest_snapshot"],
        "snapshots": record["snapshots"],
        "bytes": record["bytes"],
        "duration_s": round(time.time() - started, 3),
        "checked": checked,
        "forgotten_snapshots": 0,
        "pruned": pruned,
        "read_back": [],
        **counters,
        "offsite": offsite.repository if offsite is not None else None,
        "repository": restic.repository,
    }


def _changed(why: str, counters: dict[str, Any] | None = None) -> dict[str, Any]:
    log(f"if-changed: {why}; a full run")
    return {"ok": False, "changed": why, **(counters or {})}


def _changed_since(cfg: Config, restic: Restic, record: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Why the data of now is not the recorded run's (None: it is), and what the comparison read.
    Cheapest first; the objects and vectors comparison is the incremental run's own update of
    the mirror (a listing, and only what changed downloaded), which the full run then finds done."""
    if record["job_version"] != __version__:
        return f"the job was upgraded ({record['job_version']} -> {__version__})", {}
    if record["config_sha256"] != unchanged.config_digest(cfg):
        return "the backup configuration changed", {}
    gone = unchanged.missing_snapshots(restic, unchanged.snapshot_ids(record))
    if gone:
        return f"{len(gone)} of its snapshots are no longer in the repository ({gone[0][:8]}…)", {}
    if unchanged.ledger_digest(_read_ledger(cfg.ledger_file)) != record.get("ledger_sha256"):
        return "the deploy ledger changed", {}
    conn = postgres.connect(cfg.pg)
    try:
        why = unchanged.same_postgres(record["postgres"], _postgres_now(conn))
        if why is not None:
            return f"Postgres: {why}", {}
        mc = objects.client(cfg.s3)
        chroma = vectors.Chroma(cfg.chroma["url"], cfg.chroma.get("tenant", "default_tenant"))
        m = mirror.Mirror(cfg.mirror_dir, transfers=cfg.transfers, min_free_bytes=cfg.mirror_min_free_bytes, log=log)
        with m.locked():
            update = m.update_locked(mc, objects.buckets(mc, cfg.s3.get("buckets")))
            with open(m.path(mirror.STATE), "rb") as fh:
                objects_sha = hashlib.sha256(fh.read()).hexdigest()
            watermarks = _vector_watermarks(cfg, conn)
            conn.rollback()
            root = f"{cfg.mirror_dir.rstrip('/')}/{VECTORS_SUBDIR}"
            part = vectors.export_dir(chroma, root, watermarks)
            with open(f"{root}/{vectors.DIR_STATE}", "rb") as fh:
                vectors_sha = hashlib.sha256(fh.read()).hexdigest()
        counters = {"objects": {"counters": update.counters.as_dict()}, "vectors": {"counters": part["counters"]}}
        if objects_sha != record["objects_state_sha256"]:
            c = update.counters
            return (f"objects changed ({c.fetched} new or changed, {c.deleted} deleted)", counters)
        if vectors_sha != record["vectors_state_sha256"]:
            return f"vectors changed ({part['counters']['exported']} collections exported)", counters
        # Nothing committed while the objects and vectors were compared either.
        why = unchanged.same_postgres(record["postgres"], _postgres_now(conn))
        if why is not None:
            return f"Postgres, during the comparison: {why}", counters
        return None, counters
    finally:
        conn.close()


def _postgres_now(conn: Any) -> dict[str, Any]:
    conn.rollback()
    try:
        return unchanged.postgres_key(conn, postgres.sequence_values(conn))
    finally:
        conn.rollback()


def _read_ledger(path: str | None) -> bytes | None:
    """The deploy ledger as it is now (None: not configured, or no command has written one yet)."""
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupFailed("ledger", f"cannot read the deploy ledger {path}: {exc.strerror}") from exc


def backup_postgres(cfg: Config, restic: Restic, snap: postgres.Snapshot, tags: list[str],
                    streams: dict[str, dict[str, Any]], files: dict[str, bytes] | None = None) -> dict[str, Any]:
    """The database (``pg_dump --snapshot``) and the roles into restic, one
    snapshot each (added to ``streams``); returns the manifest's postgres part.
    With ``files``, the roles go there instead (stored later as a file)."""
    with _step("postgres checksums"):
        stats = snap.stats()
    with _step("postgres dump"):
        proc = subprocess.Popen(snap.dump_argv(), env=postgres.client_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            streams["postgres"] = restic.backup_stream(
                FILES["postgres"], [*tags, "component:postgres"], lambda w: _pump(proc.stdout, w))
        finally:
            if proc.poll() is None:
                proc.kill()
            err = proc.stderr.read().decode(errors="replace").strip()  # type: ignore[union-attr]
            code = proc.wait()
        if code != 0:
            raise BackupFailed("postgres dump", f"pg_dump exited {code}: {err[-500:]}")
        globals_sql = postgres.dump_globals(cfg.pg)
        if files is not None:
            files["postgres_globals"] = globals_sql
        else:
            streams["postgres_globals"] = restic.backup_stream(
                FILES["postgres_globals"], [*tags, "component:postgres_globals"], lambda w: w.write(globals_sql))
    return {"database": cfg.pg["database"], "snapshot_time": snap.time, "server_version": snap.server_version,
            "schema_version": snap.schema_version(), **stats}


def backup_objects_mirror(cfg: Config, restic: Restic, mc: Any, bucket_names: list[str],
                          tags: list[str]) -> dict[str, Any]:
    """Objects through the mirror: download what changed, then ``restic backup`` of the mirror
    (its data directory and state file), the mirror locked throughout so restic reads one state."""
    assert cfg.mirror_dir
    m = mirror.Mirror(cfg.mirror_dir, transfers=cfg.transfers, min_free_bytes=cfg.mirror_min_free_bytes, log=log)
    with m.locked():
        state_before = _stat_key(m.path(mirror.STATE))
        update = m.update_locked(mc, bucket_names)
        c = update.counters
        log(f"mirror: {c.listed} objects listed, {c.fetched} downloaded ({c.fetched_bytes / 1e6:.1f} MB), "
            f"{c.unchanged} unchanged, {c.deleted} deleted, {c.swept} stray files removed")
        state_file = m.path(mirror.STATE)
        with open(state_file, "rb") as fh:
            state_bytes = fh.read()
        stored = restic.backup_paths([m.path(mirror.DATA), state_file], tags)
    part = update.manifest_part()
    part["mirror_dir"] = cfg.mirror_dir
    part["restic"] = {k: stored[k] for k in ("files_new", "files_changed", "files_unmodified", "data_added")}
    return {
        "snapshot": stored["snapshot"],
        # What the read back compares: the state file (every object's sha256) as restic holds it.
        "file": state_file,
        "readback_file": state_file.lstrip("/"),
        "bytes": sum(entry["bytes"] for entry in part["buckets"].values()),
        "state_bytes": len(state_bytes),
        "sha256": hashlib.sha256(state_bytes).hexdigest(),
        "data_added": stored["data_added"],
        "written": _stat_key(state_file) != state_before,
        "produced": part,
    }


def _stat_key(path: str) -> tuple[int, ...] | None:
    """What restic's change detection looks at (inode, size, mtime, ctime); None: no file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _without_restrict_key(sql: bytes) -> bytes:
    """A pg_dump(all) script without its ``\\restrict``/``\\unrestrict`` lines: Postgres 15.14+
    puts a new random key there on every dump, so two dumps of the same roles differ only in it."""
    return b"\n".join(line for line in sql.split(b"\n") if not line.startswith((b"\\restrict ", b"\\unrestrict ")))


VECTORS_SUBDIR = "vectors"


def _vector_watermarks(cfg: Config, conn: Any) -> dict[str, Any]:
    """database/collection -> the app's indexing watermark, read in ``conn``'s transaction (the
    run's snapshot); {} (every collection exported) when there is none or it cannot be read."""
    wm = cfg.vector_watermark
    if not wm:
        return {}
    try:
        rows = postgres.watermarks(conn, wm["sql"])
    except Exception as exc:  # noqa: BLE001 - a missing watermark costs a full export, not the run
        log(f"vectors: no indexing watermark ({type(exc).__name__}: {str(exc)[:200]}); exporting every collection")
        conn.rollback()
        return {}
    return {vectors.key(wm["database"], name): values for name, values in rows.items()}


RUN_FILES_SUBDIR = "run"


def backup_vectors_dir(cfg: Config, restic: Restic, chroma: vectors.Chroma, watermarks: dict[str, Any],
                       tags: list[str], files: dict[str, bytes] | None = None) -> dict[str, dict[str, Any]]:
    """Vectors incrementally: only collections changed since the last run are exported (one
    JSONL file each, next to the objects mirror), then ``restic backup`` of that directory.

    ``files`` (component -> bytes: the roles, the ledger) are written beside it, each only
    when its content changed, into ``<mirror>/run/``, and stored in the same snapshot: one
    restic process instead of one per stream, and an unchanged file is neither stored nor
    read back again. Returns the streams: "vectors" and one per file."""
    assert cfg.mirror_dir
    files = files or {}
    root = f"{cfg.mirror_dir.rstrip('/')}/{VECTORS_SUBDIR}"
    run_dir = f"{cfg.mirror_dir.rstrip('/')}/{RUN_FILES_SUBDIR}"
    state_file = f"{root}/{vectors.DIR_STATE}"
    with mirror.Mirror(cfg.mirror_dir).locked():
        state_before = _stat_key(state_file)
        part = vectors.export_dir(chroma, root, watermarks)
        c = part["counters"]
        log(f"vectors: {c['exported']} collections exported ({c['records_read']} records), "
            f"{c['unchanged']} unchanged")
        with open(state_file, "rb") as fh:
            state_bytes = fh.read()
        written: dict[str, bool] = {}
        paths = [root]
        if files:
            os.makedirs(run_dir, mode=0o700, exist_ok=True)
            wanted = {name: f"{run_dir}/{FILES[name]}" for name in files}
            # A file this run does not produce (no ledger any more) must not ride along.
            for name in os.listdir(run_dir):
                if f"{run_dir}/{name}" not in wanted.values():
                    os.unlink(f"{run_dir}/{name}")
            for name, data in files.items():
                same = _without_restrict_key if name == "postgres_globals" else None
                written[name], files[name] = write_if_changed(wanted[name], data, same)
            paths.append(run_dir)
        stored = restic.backup_paths(paths, tags)
    part["restic"] = {k: stored[k] for k in ("files_new", "files_changed", "files_unmodified", "data_added")}
    out = {"vectors": {
        "snapshot": stored["snapshot"], "file": state_file, "readback_file": state_file.lstrip("/"),
        "bytes": sum(os.path.getsize(f"{root}/{e['file']}") for e in part["collections"].values()),
        "state_bytes": len(state_bytes), "sha256": hashlib.sha256(state_bytes).hexdigest(),
        "data_added": stored["data_added"], "written": _stat_key(state_file) != state_before, "produced": part}}
    for name, data in files.items():
        path = f"{run_dir}/{FILES[name]}"
        out[name] = {"snapshot": stored["snapshot"], "file": path, "readback_file": path.lstrip("/"),
                     "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                     "data_added": stored["data_added"], "written": written[name]}
    return out


def _read_back(restic: Restic, streams: dict[str, dict[str, Any]],
               verified: dict[str, str] | None = None) -> list[str]:
    """Read back what this run added; returns the streams read. Skipped: a snapshot to which
    restic added no data at all (``data_added`` 0: its root tree and every blob were already
    in the repository, e.g. an unchanged mirror), and a file this run did not write whose
    content was read back from this same repository before (``verified``: file -> sha256 of
    what was last read back from it, updated here; see ``_verified_file``): the check covers it
    since, and each ``restic dump`` costs a key derivation (scrypt) first. A file left
    unchanged is still read back when this repository never gave back that content: another
    repository (``--repository``), one made again, or a run that stored it and then failed."""
    read = []
    for name, stream in streams.items():
        filename = stream.get("readback_file", FILES[name])
        if stream.get("data_added") == 0:
            continue
        # "written": False: a file of a path snapshot this run left untouched, so restic took
        # its content from the parent snapshot without reading it.
        if stream.get("written") is False and verified is not None and verified.get(filename) == stream["sha256"]:
            continue
        read.append(name)
        sha, size = restic.read_sha256(stream["snapshot"], filename)
        want = stream.get("state_bytes", stream["bytes"])
        if (sha, size) != (stream["sha256"], want):
            raise BackupFailed("read back", f"{filename} in snapshot {stream['snapshot']} reads back as "
                                            f"{size} bytes sha256 {sha}, written {want} bytes "
                                            f"sha256 {stream['sha256']}")
        if verified is not None:
            verified[filename] = sha
    return read


def _verified_file(cfg: Config, restic: Restic) -> str | None:
    """Where the sha256 of each file last read back from ``restic``'s repository is kept: the
    cache volume, one file per repository, keyed by its path and its config file (a repository
    made again at the same path has a new config, so nothing counts as read back from it).
    None: a remote repository or no config yet (every file is read back)."""
    key = unchanged.repository_key(restic)
    return None if key is None else os.path.join(cfg.cache_dir, f"govstack-readback-{key}.json")


def _load_verified(path: str | None) -> dict[str, str] | None:
    """None (read back every file) without a place to keep it; {} when it is missing or unreadable."""
    if path is None:
        return None
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        return {}
    return data


def _write_verified(path: str, verified: dict[str, str] | None) -> None:
    write_json_atomic(path, verified or {})


# A pre-deploy copy waits this long for a scheduled run in progress in this
# container (restic's exclusive lock during its check and prune).
PRE_DEPLOY_WAIT_S = 900


def run_pre_deploy(cfg: Config, label: str) -> dict[str, Any]:
    """The safety copy a release takes before its migrations: Postgres alone,
    as a run of its own (tagged PRE_DEPLOY_TAG, never "govstack": scheduled
    runs, `latest` and their retention never see it), with a manifest, so
    `govstack restore --snapshot <run> --component postgres` restores and
    verifies it like any run. Old copies are forgotten by the scheduled runs
    (keep_pre_deploy), so a deploy never takes restic's exclusive lock."""
    started = time.time()
    run_id = f"{PRE_DEPLOY_PREFIX}{datetime.fromtimestamp(started, UTC).strftime('%Y%m%dT%H%M%SZ')}"
    tags = [PRE_DEPLOY_TAG, f"run:{run_id}", f"label:{label}"]
    with RunLock(wait_s=PRE_DEPLOY_WAIT_S):
        restic = local_repo(cfg)
        with _step("repository"):
            restic.ensure()
        streams: dict[str, dict[str, Any]] = {}
        manifest: dict[str, Any] = {"format": FORMAT, "run": run_id, "kind": "pre-deploy", "label": label,
                                    "project": cfg.project,
                                    "started_at": datetime.fromtimestamp(started, UTC).isoformat(), "components": {}}
        with _step("postgres snapshot"):
            snap = postgres.Snapshot(cfg.pg)
        with snap:
            manifest["components"]["postgres"] = backup_postgres(cfg, restic, snap, tags, streams)
        manifest["components"]["postgres"]["streams"] = {
            name: {k: v for k, v in stream.items() if k != "produced"} for name, stream in streams.items()}
        if cfg.readback:
            with _step("read back"):
                _read_back(restic, streams)
        total = sum(stream["bytes"] for stream in streams.values())
        manifest.update({"finished_at": datetime.now(UTC).isoformat(), "duration_s": round(time.time() - started, 3),
                         "bytes": total, "versions": versions(cfg, restic)})
        manifest_bytes = (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()
        with _step("manifest"):
            stored = restic.backup_stream(FILES["manifest"], [*tags, "component:manifest"],
                                          lambda w: w.write(manifest_bytes))
    return {"ok": True, "run": run_id, "kind": "pre-deploy", "label": label, "manifest_snapshot": stored["snapshot"],
            "snapshots": {name: stream["snapshot"] for name, stream in streams.items()}, "bytes": total,
            "duration_s": round(time.time() - started, 3), "repository": restic.repository}


def apply_retention(restic: Restic, cfg: Config, newest: str) -> list[str]:
    """restic's policy over complete runs (their manifest snapshots), applied to
    every snapshot of the runs it drops; the newest ``keep_pre_deploy``
    pre-deploy copies kept likewise. Forgets only: the space comes back at the
    next prune (``prune_due``)."""
    plan = restic.forget_plan(retention_args(cfg.retention), f"{RUN_TAG},component:manifest")
    # One listing for both kinds (each restic process derives the key first).
    listed = restic.snapshots()
    ids = runs_to_forget(plan, group_runs(s for s in listed if RUN_TAG in (s.get("tags") or [])), newest)
    copies = group_runs(s for s in listed if PRE_DEPLOY_TAG in (s.get("tags") or []))
    complete = sorted(run for run, entry in copies.items() if entry["complete"])
    if complete:
        # --keep-last N removes nothing while there are at most N: no need to ask restic.
        plan = restic.forget_plan(["--keep-last", str(cfg.keep_pre_deploy)],
                                  f"{PRE_DEPLOY_TAG},component:manifest") \
            if len(complete) > cfg.keep_pre_deploy else []
        ids += runs_to_forget(plan, copies, complete[-1])
    if ids:
        restic.forget(ids)
        log(f"retention: forgot {len(ids)} snapshots")
    return ids


def _prune_stamp(cfg: Config, restic: Restic) -> str:
    """Where the time of a repository's last prune is kept: the cache volume (persistent,
    the job's own), one file per repository."""
    return unchanged.stamp_path(cfg, restic, "prune")


def prune_due(cfg: Config, restic: Restic, forgotten: list[str], now: float | None = None) -> bool:
    """Whether this run prunes ``restic``'s repository (after its check passed and its
    retention forgot what it drops). Without a ``prune_schedule``: whenever the run forgot
    something. With one: when the schedule fired since the last prune (each prune takes
    restic's exclusive lock and rewrites the index, far more than a run that changed
    nothing costs). The first run with a schedule only notes the time."""
    if not cfg.prune_schedule:
        return bool(forgotten)
    from govstack_backup.schedule import next_fire

    now = time.time() if now is None else now
    stamp = _prune_stamp(cfg, restic)
    try:
        with open(stamp, encoding="utf-8") as fh:
            last = float(json.load(fh)["pruned_at"])
    except (OSError, ValueError, KeyError, TypeError):
        _write_prune_stamp(stamp, now)
        return False
    return next_fire(cfg.prune_schedule, datetime.fromtimestamp(last, UTC)).timestamp() <= now


def _write_prune_stamp(path: str, at: float) -> None:
    write_json_atomic(path, {"pruned_at": at, "at": datetime.fromtimestamp(at, UTC).isoformat()})


def prune(cfg: Config, restic: Restic) -> None:
    """``restic prune`` (exclusive lock: inside the run's lock, after its check passed),
    then the stamp ``prune_due`` reads."""
    started = time.time()
    restic.prune()
    _write_prune_stamp(_prune_stamp(cfg, restic), started)
    log(f"pruned {restic.repository}")


def probe_s3(repository: str, timeout_s: float = 10.0) -> None:
    """Fail fast when an S3 repository's endpoint does not answer TCP: restic
    itself would retry for minutes before saying so."""
    url = urlsplit(repository.removeprefix("s3:"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise BackupFailed("offsite", f"offsite repository {repository} is unreachable "
                                      f"({url.hostname}:{port}: {exc.strerror or exc})") from None


def copy_run(source: Restic, target: Restic, run_id: str) -> None:
    if target.repository.startswith("s3:"):
        probe_s3(target.repository)
    try:
        target.ensure(copy_chunker_from=source)
    except ResticError as exc:
        raise BackupFailed("offsite", str(exc)) from None
    ids = [snap["id"] for snap in source.snapshots(f"run:{run_id}")]
    try:
        target.copy_from(source, ids)
    except ResticError as exc:
        raise BackupFailed("offsite", str(exc)) from None
