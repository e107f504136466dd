"""The run manifest and the equality checks a restore and a drill make against it.

Pure functions (no I/O), so the unit tests cover them in milliseconds.

Checksums are chosen so a restore can recompute them from the restored
service alone, with flat memory:

- a table: its row count and the sum, modulo 2^64, of the first 64 bits of
  md5(row::text) over all rows; order-independent, computed by Postgres in one
  sequential scan (``TABLE_CHECKSUM_SQL``).
- a bucket: sha256 over its ``key\\tsha256\\tsize`` lines in key order (S3
  lists keys in order, so the backup and the verify stream it identically).
- a collection: the order-independent sum, modulo 2^64, of the first 64 bits
  of sha256 over each record's canonical JSON (id, embedding dimension,
  metadata, document); Chroma's paging order is an implementation detail.
  Embeddings are compared record by record with a tolerance instead: Chroma
  re-normalises vectors of cosine collections, which moves the last bit of
  some float32 components on a round trip.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

FORMAT = 1
MASK64 = (1 << 64) - 1

# Component streams stored in restic, all tagged with the run: one snapshot each, except that
# with the objects mirror the roles and the ledger are files in the vectors' snapshot (each
# stream's "readback_file" in the manifest names its path there).
FILES = {
    "postgres": "postgres.dump",
    "postgres_globals": "postgres-globals.sql",
    "objects": "objects.tar",
    "vectors": "vectors.jsonl",
    "ledger": "ledger.jsonl",
    "manifest": "manifest.json",
}
COMPONENTS = ("postgres", "objects", "vectors")
# Every snapshot of a backup run carries RUN_TAG; a pre-deploy safety copy of
# Postgres (a release's, before its migrations) carries PRE_DEPLOY_TAG instead
# and a run id starting with PRE_DEPLOY_PREFIX: the two never mix in a listing,
# in `latest` or in a retention policy.
RUN_TAG = "govstack"
PRE_DEPLOY_TAG = "govstack-pre-deploy"
PRE_DEPLOY_PREFIX = "pre-deploy-"

# User tables with storage (partitions included, partitioned parents excluded:
# they hold no rows of their own), in a stable order.
TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1, 2
"""

# {table} is replaced by a quoted "schema"."name" (psycopg.sql.Identifier).
TABLE_CHECKSUM_SQL = (
    "SELECT count(*), "
    "coalesce(sum(('x' || substr(md5(t::text), 1, 16))::bit(64)::bigint::numeric), 0) "
    "FROM ONLY {table} AS t"
)

SEQUENCES_SQL = """
SELECT schemaname, sequencename, coalesce(last_value::text, '')
FROM pg_sequences
WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2
"""


def table_checksum(raw_sum: Any) -> str:
    """Postgres' signed sum, folded into 64 bits, as 16 hex digits."""
    return f"{int(raw_sum) & MASK64:016x}"


class BucketDigest:
    """Streams a bucket's ``key -> (sha256, size)`` entries in key order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0
        self.bytes = 0

    def add(self, key: str, sha256: str, size: int) -> None:
        self._hash.update(f"{key}\t{sha256}\t{size}\n".encode())
        self.count += 1
        self.bytes += size

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def bucket_digest(entries: Mapping[str, Mapping[str, Any]]) -> str:
    digest = BucketDigest()
    for key in sorted(entries):
        digest.add(key, entries[key]["sha256"], entries[key]["size"])
    return digest.hexdigest()


# Largest difference of one embedding component that still counts as equal:
# float32 rounding (one ulp near 1.0 is 6e-8) with a wide margin, far below
# any difference a search could notice.
EMBEDDING_TOLERANCE = 1e-6


def record_json(record_id: str, embedding: Any, metadata: Any, document: Any) -> str:
    dimension = len(embedding) if embedding is not None else None
    return json.dumps([record_id, dimension, metadata, document], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def embedding_difference(a: Any, b: Any) -> float:
    """Largest absolute component difference; inf when the shapes differ."""
    if a is None or b is None:
        return 0.0 if a is b else float("inf")
    if len(a) != len(b):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


class CollectionDigest:
    """Order-independent digest of a collection's records."""

    def __init__(self) -> None:
        self.count = 0
        self._sum = 0

    def add(self, record_id: str, embedding: Any, metadata: Any, document: Any) -> None:
        head = hashlib.sha256(record_json(record_id, embedding, metadata, document).encode()).digest()[:8]
        self._sum = (self._sum + int.from_bytes(head, "big")) & MASK64
        self.count += 1

    def hexdigest(self) -> str:
        return f"{self._sum:016x}"


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON: what the evidence cites."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# -- comparisons: expected (manifest) vs observed (the restored service) ----------------------
def compare_tables(expected: Mapping[str, Mapping[str, Any]], observed: Mapping[str, Mapping[str, Any]]) -> list[str]:
    problems = []
    for table in sorted(set(expected) | set(observed)):
        want, got = expected.get(table), observed.get(table)
        if want is None:
            problems.append(f"table {table}: not in the snapshot ({got['rows']} rows restored)")
        elif got is None:
            problems.append(f"table {table}: missing after restore (snapshot has {want['rows']} rows)")
        elif want["rows"] != got["rows"]:
            problems.append(f"table {table}: {got['rows']} rows, snapshot has {want['rows']}")
        elif want["checksum"] != got["checksum"]:
            problems.append(f"table {table}: content checksum {got['checksum']} != {want['checksum']}")
    return problems


def compare_sequences(expected: Mapping[str, str], observed: Mapping[str, str]) -> list[str]:
    """Sequences are not transactional: pg_dump reads them a moment after the
    snapshot, so under writes the dump may hold a higher value than the
    manifest. Lower would hand out ids that rows already have."""
    def value(text: str | None) -> int:
        return int(text) if text not in (None, "") else 0

    return [
        f"sequence {name}: last_value {observed.get(name)!r}, below the snapshot's {expected[name]!r}"
        for name in sorted(expected)
        if name not in observed or value(observed[name]) < value(expected[name])
    ]


def compare_objects(expected: Mapping[str, Mapping[str, Any]], observed: Iterable[tuple[str, str, int]],
                    limit: int = 20) -> dict[str, Any]:
    """``expected``: key -> {sha256, size}; ``observed``: (key, sha256, size) as read back.
    Objects beyond the snapshot are reported (``extra``), never deleted."""
    seen: set[str] = set()
    mismatched, extra = [], []
    for key, sha256, size in observed:
        want = expected.get(key)
        if want is None:
            extra.append(key)
            continue
        seen.add(key)
        if want["sha256"] != sha256 or want["size"] != size:
            mismatched.append(key)
    missing = sorted(set(expected) - seen)
    return {
        "expected": len(expected),
        "verified": len(seen) - len(mismatched),
        "missing": missing[:limit],
        "missing_count": len(missing),
        "mismatched": mismatched[:limit],
        "mismatched_count": len(mismatched),
        "extra_count": len(extra),
        "ok": not missing and not mismatched,
    }


def compare_collections(expected: Mapping[str, Mapping[str, Any]],
                        observed: Mapping[str, Mapping[str, Any]]) -> list[str]:
    problems = []
    for name in sorted(expected):
        want, got = expected[name], observed.get(name)
        if got is None:
            problems.append(f"collection {name}: missing after restore ({want['count']} vectors in the snapshot)")
        elif want["count"] != got["count"]:
            problems.append(f"collection {name}: {got['count']} vectors, snapshot has {want['count']}")
        elif want["digest"] != got["digest"]:
            problems.append(f"collection {name}: content digest {got['digest']} != {want['digest']}")
    return problems


def run_id_of(tags: Iterable[str]) -> str | None:
    for tag in tags or ():
        if tag.startswith("run:"):
            return tag[4:]
    return None


def group_runs(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """restic snapshots -> run id -> {component: snapshot, "time": …, "complete": bool}.
    A run is complete when its manifest snapshot exists (written last)."""
    runs: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        tags = snap.get("tags") or []
        run = run_id_of(tags)
        # One snapshot may hold several components (the vectors' also holds the roles and the ledger).
        components = [tag[10:] for tag in tags if tag.startswith("component:")]
        if not run or not components:
            continue
        kind = "pre-deploy" if PRE_DEPLOY_TAG in tags else "run"
        entry = runs.setdefault(run, {"run": run, "kind": kind, "snapshots": {}, "time": snap.get("time", "")})
        for component in components:
            entry["snapshots"][component] = snap.get("id")
        entry["time"] = max(entry["time"], snap.get("time", ""))
    for entry in runs.values():
        entry["complete"] = "manifest" in entry["snapshots"]
    return dict(sorted(runs.items()))


def resolve_run(runs: Mapping[str, Mapping[str, Any]], wanted: str) -> str | None:
    """``latest``, a run id, or (a prefix of) any snapshot id of a run -> its run id.
    Only complete runs resolve."""
    complete = {run: entry for run, entry in runs.items() if entry["complete"]}
    if wanted == "latest":
        return max(complete, default=None)
    if wanted in complete:
        return wanted
    if len(wanted) >= 8:
        for run, entry in complete.items():
            if any(str(sid).startswith(wanted) for sid in entry["snapshots"].values()):
                return run
    return None


def retention_args(policy: Mapping[str, int]) -> list[str]:
    """``{"keep_daily": 7, …}`` -> restic forget flags, zero/absent ones left out."""
    order = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
    unknown = set(policy) - set(order)
    if unknown:
        raise ValueError(f"unknown retention key {sorted(unknown)[0]!r}")
    args = []
    for key in order:
        value = int(policy.get(key) or 0)
        if value < 0:
            raise ValueError(f"{key} must be >= 0")
        if value:
            args += [f"--{key.replace('_', '-')}", str(value)]
    if not args:
        raise ValueError("the retention policy keeps nothing; set at least one keep_* above 0")
    return args


def runs_to_forget(plan: Iterable[Mapping[str, Any]], runs: Mapping[str, Mapping[str, Any]], newest: str) -> list[str]:
    """From restic's dry-run plan over manifest snapshots: every snapshot of the runs it
    would remove, plus incomplete runs older than ``newest`` (a verified complete run).
    The newest run is never forgotten, whatever the plan says."""
    remove_runs: set[str] = set()
    for group in plan:
        for snap in group.get("remove") or []:
            run = run_id_of(snap.get("tags") or [])
            if run:
                remove_runs.add(run)
    for run, entry in runs.items():
        if not entry["complete"] and run < newest:
            remove_runs.add(run)
    remove_runs.discard(newest)
    ids: list[str] = []
    for run in sorted(remove_runs):
        for sid in runs.get(run, {}).get("snapshots", {}).values():
            if str(sid) not in ids:  # a snapshot holding several components, once
                ids.append(str(sid))
    return ids
