"""The in-container half of a restore: runs, manifests, component streams,
putting objects and vectors back, and checking each restored component
against the run's manifest. The host (`govstack restore`) orders the steps,
stops and restarts the app, and restores Postgres through the server's own
container (superuser over its local socket); see govstack/backup/ on the host.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from govstack_backup import objects, postgres, vectors
from govstack_backup.config import Config
from govstack_backup.job import local_repo, offsite_repo
from govstack_backup.manifest import (
    EMBEDDING_TOLERANCE,
    FILES,
    PRE_DEPLOY_TAG,
    RUN_TAG,
    compare_collections,
    compare_sequences,
    compare_tables,
    group_runs,
    resolve_run,
)
from govstack_backup.restic import Restic, ResticError


class RestoreError(RuntimeError):
    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def repository(cfg: Config, source: str = "local") -> Restic:
    if source == "offsite":
        repo = offsite_repo(cfg)
        if repo is None:
            raise RestoreError("no offsite repository is configured (settings backup.offsite)", "config")
        return repo
    return local_repo(cfg)


def runs(restic: Restic, tag: str = RUN_TAG) -> dict[str, dict[str, Any]]:
    if not restic.exists():
        raise RestoreError(f"restic repository {restic.repository} does not exist yet: no backup was ever made",
                           "no-repository")
    return group_runs(restic.snapshots(tag))


def find_run(restic: Restic, wanted: str) -> dict[str, Any]:
    """The run ``wanted`` names (``latest``, a run id or a snapshot id) with its
    manifest; a pre-deploy copy only by its own run or snapshot id."""
    all_runs = runs(restic)
    run = resolve_run(all_runs, wanted)
    if run is None and wanted != "latest":
        copies = runs(restic, PRE_DEPLOY_TAG)
        run = resolve_run(copies, wanted)
        all_runs = {**all_runs, **copies}
    if run is None:
        complete = [r for r, e in all_runs.items() if e["complete"]]
        hint = f"the newest is {max(complete)}" if complete else "the repository holds no complete run"
        raise RestoreError(f"no backup run or snapshot {wanted!r} in {restic.repository} ({hint}; "
                           "`govstack backup --list` shows them)", "missing-snapshot")
    entry = all_runs[run]
    manifest = json.loads(restic.read_bytes(entry["snapshots"]["manifest"], FILES["manifest"]))
    return {**entry, "manifest": manifest}


def stream_component(restic: Restic, entry: dict[str, Any], name: str, out: Any) -> None:
    """A component's stream; the objects of a mirror run: its directory as a tar (state.json
    names each file's bucket and key)."""
    filename = FILES[name]
    part = entry["manifest"]["components"].get(name) or {}
    if name == "objects" and part.get("format") == "mirror":
        filename = part["mirror_dir"].strip("/")
    if name == "vectors" and part.get("format") == "dir":
        filename = part["dir"].strip("/")
    if name in ("postgres_globals", "ledger"):
        # A file in the vectors' snapshot (mirror runs), or a stdin stream of its own (older runs).
        parent = entry["manifest"]["components"].get(name.split("_")[0]) or {}
        filename = ((parent.get("streams") or {}).get(name) or {}).get("readback_file") or filename
    with restic.dump(entry["snapshots"][name], filename) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            out.write(chunk)
    out.flush()


def state(cfg: Config, manifest: dict[str, Any]) -> dict[str, Any]:
    """What already holds data among the places the run would restore into."""
    comps = manifest["components"]
    found: dict[str, Any] = {}
    if "objects" in comps:  # a pre-deploy copy holds Postgres alone
        found["objects"] = objects.non_empty(objects.client(cfg.s3), sorted(comps["objects"]["buckets"]))
    if "vectors" in comps:
        chroma = vectors.Chroma(cfg.chroma["url"], cfg.chroma.get("tenant", "default_tenant"))
        found["vectors"] = vectors.non_empty(chroma, sorted(comps["vectors"]["collections"]))
    return found


def restore_objects(cfg: Config, restic: Restic, entry: dict[str, Any], force: bool) -> dict[str, Any]:
    expected = entry["manifest"]["components"]["objects"]
    mc = objects.client(cfg.s3, restore=True)
    busy = objects.non_empty(mc, sorted(expected["buckets"]))
    if busy and not force:
        raise RestoreError(f"buckets already hold objects: {busy} (use --force to restore over them)", "non-empty")
    if expected.get("format") == "mirror":
        put = objects.restore_mirror(mc, restic, entry["snapshots"]["objects"], expected, cfg.transfers)
    else:  # runs made before the mirror: one tar stream
        with restic.dump(entry["snapshots"]["objects"], FILES["objects"]) as stream:
            put = objects.restore(mc, stream, expected)
    checks = objects.verify(mc, expected, cfg.transfers)
    return {"restored": put, "buckets": checks, "ok": all(c["ok"] for c in checks.values())}


def restore_vectors(cfg: Config, restic: Restic, entry: dict[str, Any], force: bool) -> dict[str, Any]:
    expected = entry["manifest"]["components"]["vectors"]["collections"]
    chroma = vectors.Chroma(cfg.chroma["url"], cfg.chroma.get("tenant", "default_tenant"))
    suffix = f"__pre_restore_{entry['run']}"
    part = entry["manifest"]["components"]["vectors"]

    @contextlib.contextmanager
    def lines():
        """The run's vectors as one JSONL stream: the stream itself, or an export directory's
        files (a run with the objects mirror) one after another."""
        if part.get("format") == "dir":
            files = [e["file"] for e in expected.values()]
            with restic.dump(entry["snapshots"]["vectors"], part["dir"].strip("/")) as stream:
                yield vectors.lines_of_dir_tar(stream, files)
        else:
            with restic.dump(entry["snapshots"]["vectors"], FILES["vectors"]) as stream:
                yield stream

    with lines() as stream:
        try:
            put = vectors.restore(chroma, stream, force=force, aside_suffix=suffix)
        except vectors.ChromaError as exc:
            kind = "non-empty" if "use --force" in str(exc) else "error"
            raise RestoreError(str(exc), kind) from None
    observed = vectors.observe(chroma, sorted(expected))
    problems = compare_collections(expected, observed)
    with lines() as stream:
        embeddings = vectors.compare_embeddings(chroma, stream)
    for name, check in sorted(embeddings.items()):
        if check["missing"] or check["over_tolerance"]:
            problems.append(f"collection {name}: {check['missing']} records missing, {check['over_tolerance']} "
                            f"embeddings differ by more than {EMBEDDING_TOLERANCE:g}")
    return {"restored": put,
            "collections": {name: {**observed.get(name, {}), **embeddings.get(name, {}),
                                   "expected_count": want["count"], "expected_digest": want["digest"]}
                            for name, want in expected.items()},
            "problems": problems, "ok": not problems}


def verify_postgres(cfg: Config, entry: dict[str, Any], database: str) -> dict[str, Any]:
    expected = entry["manifest"]["components"]["postgres"]
    with postgres.connect(cfg.pg, database) as conn:
        observed = postgres.table_stats(conn)
        sequences = postgres.sequence_values(conn)
    problems = compare_tables(expected["tables"], observed) + compare_sequences(expected["sequences"], sequences)
    return {"database": database, "tables": {name: {**observed.get(name, {}), "expected": want}
                                             for name, want in expected["tables"].items()},
            "table_count": len(expected["tables"]), "rows": sum(t["rows"] for t in expected["tables"].values()),
            "problems": problems, "ok": not problems}


def emit(result: Any) -> None:
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


def error_result(exc: BaseException) -> dict[str, Any]:
    kind = getattr(exc, "kind", "error")
    if isinstance(exc, ResticError | RestoreError):
        return {"ok": False, "kind": kind, "error": str(exc)}
    return {"ok": False, "kind": "error", "error": f"{type(exc).__name__}: {exc}"}
