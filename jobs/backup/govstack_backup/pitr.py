"""pgBackRest from the ``pgbackrest`` sidecar: the stanza kept in step with the
cluster, base backups on their schedule, ``verify``, and freshness metrics.

The sidecar runs as Postgres' uid with the data directory mounted read-only
and Postgres' unix socket shared (pgBackRest reads the files itself and
connects only over the socket), so pgBackRest works here exactly as on the
database host. WAL is pushed by Postgres' own archive_command, in its
container; both go through the image's wrapper ``govstack-pgbackrest``,
which passes the repository secrets from their files as pgBackRest's
environment (never an argv, never the container's environment).
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from govstack_backup import metrics

WRAPPER = "/usr/local/bin/govstack-pgbackrest"
PSQL = ("psql", "-X", "-q", "-tA", "-h", "/var/run/postgresql", "-U", "postgres", "-d", "postgres")

# `pgbackrest info` status codes (2.45, command/info/info.c) that mean "no stanza yet".
NO_STANZA = {1: "missing stanza path", 3: "missing stanza data"}

METRICS = {
    "govstack_pgbackrest_last_backup_timestamp_seconds": (
        "gauge", "End of the newest base backup (full, diff or incr) of the current cluster (0 = none)."),
    "govstack_pgbackrest_last_full_timestamp_seconds": (
        "gauge", "End of the newest full base backup of the current cluster (0 = none)."),
    "govstack_pgbackrest_last_failure_timestamp_seconds": (
        "gauge", "End of the last failed pgBackRest job: backup, verify or stanza upkeep (0 = never)."),
    "govstack_pgbackrest_failures_total": ("counter", "Failed pgBackRest jobs since the metrics file was created."),
    "govstack_pgbackrest_last_verify_timestamp_seconds": (
        "gauge", "End of the last `pgbackrest verify` that found the repository sound (0 = never)."),
    "govstack_pgbackrest_backups": ("gauge", "Base backups of the current cluster in the repository."),
}


class PitrError(RuntimeError):
    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def _tail(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])


def pgbackrest(stanza: str, *args: str, timeout: float = 6 * 3600, check: bool = True,
               console: str = "warn") -> subprocess.CompletedProcess:
    proc = subprocess.run([WRAPPER, f"--stanza={stanza}", f"--log-level-console={console}", *args],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise PitrError(f"pgbackrest {args[-1] if args else ''} failed (exit {proc.returncode}): "
                        f"{_tail(proc.stderr or proc.stdout)}")
    return proc


def info(stanza: str) -> dict[str, Any]:
    """The stanza's entry of ``pgbackrest info --output=json``."""
    out = pgbackrest(stanza, "--output=json", "info", timeout=600).stdout
    entries = json.loads(out or "[]")
    for entry in entries:
        if entry.get("name") == stanza:
            return entry
    return {"name": stanza, "status": {"code": 1, "message": "missing stanza path"}, "db": [], "backup": []}


def cluster() -> dict[str, str]:
    """The running cluster's system identifier and major version, over the socket."""
    proc = subprocess.run([*PSQL, "-c", "SELECT system_identifier, current_setting('server_version_num')::int / 10000 "
                                        "FROM pg_control_system()"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise PitrError(f"Postgres does not answer on its socket: {_tail(proc.stderr)}", "postgres-down")
    system_id, version = proc.stdout.strip().split("|")
    return {"system_id": system_id, "version": version}


def current_db(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The repository's record of the newest cluster (the highest db id)."""
    dbs = entry.get("db") or []
    return max(dbs, key=lambda db: db["id"]) if dbs else None


def backups_of(entry: dict[str, Any], db_id: int | None) -> list[dict[str, Any]]:
    return [b for b in entry.get("backup") or [] if b.get("database", {}).get("id") == db_id and not b.get("error")]


def state(stanza: str) -> dict[str, Any]:
    """Where the stanza stands against the running cluster (what `ensure` would change)."""
    entry = info(stanza)
    code = entry.get("status", {}).get("code", 99)
    result: dict[str, Any] = {"stanza": stanza, "status": entry.get("status", {}).get("message")}
    if code in NO_STANZA:
        return {**result, "ok": False, "stanza_exists": False, "matches_cluster": False, "backups": 0}
    db = current_db(entry)
    running = cluster()
    matches = db is not None and str(db.get("system-id")) == running["system_id"] and \
        str(db.get("version")) == running["version"]
    count = len(backups_of(entry, db["id"] if db else None)) if matches else 0
    return {**result, "ok": matches and count > 0, "stanza_exists": True, "matches_cluster": matches,
            "backups": count, "system_id": running["system_id"]}


def ensure(stanza: str, metrics_file: str | None) -> dict[str, Any]:
    """Idempotent: the stanza exists and describes the running cluster (stanza-upgrade
    after a restore into a new cluster: the old cluster's backups stay restorable),
    archiving works (`check`), and the cluster has a full backup to recover from."""
    changed: list[str] = []
    try:
        current = state(stanza)
        if not current["stanza_exists"]:
            pgbackrest(stanza, "stanza-create", timeout=600)
            changed.append("stanza-create")
        elif not current["matches_cluster"]:
            pgbackrest(stanza, "stanza-upgrade", timeout=600)
            changed.append("stanza-upgrade")
        # Proves archive_command works end to end: switches WAL and waits for the segment.
        pgbackrest(stanza, "check", timeout=600)
        if not state(stanza)["backups"]:
            pgbackrest(stanza, "--type=full", "backup", console="info")
            changed.append("backup --type=full")
    except (PitrError, subprocess.TimeoutExpired) as exc:
        record(stanza, metrics_file, failed=True)
        raise PitrError(str(exc), getattr(exc, "kind", "error")) from None
    record(stanza, metrics_file)
    return {"ok": True, "stanza": stanza, "changed": changed, **state(stanza)}


def backup(stanza: str, kind: str, metrics_file: str | None) -> dict[str, Any]:
    started = time.time()
    try:
        proc = pgbackrest(stanza, f"--type={kind}", "backup", console="info")
    except (PitrError, subprocess.TimeoutExpired) as exc:
        record(stanza, metrics_file, failed=True)
        raise PitrError(str(exc), "backup-failed") from None
    entry = record(stanza, metrics_file)
    newest = max(backups_of(entry, (current_db(entry) or {}).get("id")), key=lambda b: b["timestamp"]["stop"],
                 default={})
    return {"ok": True, "stanza": stanza, "type": kind, "label": newest.get("label"),
            "duration_s": round(time.time() - started, 3), "size_bytes": newest.get("info", {}).get("size"),
            "repository_bytes": newest.get("info", {}).get("repository", {}).get("delta"),
            "log": _tail(proc.stdout, 2)}


def verify(stanza: str, metrics_file: str | None) -> dict[str, Any]:
    """`pgbackrest verify`: every file of the repository read and checked, and the WAL
    of every backup present without gaps."""
    try:
        proc = pgbackrest(stanza, "verify", console="info", check=False)
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess([], 1, "", "verify timed out")
    ok = proc.returncode == 0
    record(stanza, metrics_file, failed=not ok, verified=ok)
    return {"ok": ok, "stanza": stanza, "log": _tail(proc.stdout + proc.stderr, 5)}


def record(stanza: str, metrics_file: str | None, *, failed: bool = False,
           verified: bool = False) -> dict[str, Any]:
    """Rewrite the textfile from the repository's info (and this job's outcome); the
    repository's entry, or {} when it cannot be read."""
    try:
        entry = info(stanza)
    except (PitrError, subprocess.TimeoutExpired, ValueError):
        entry = {}
        failed = True
    if not metrics_file:
        return entry
    db = current_db(entry) if entry else None
    done = backups_of(entry, db["id"]) if db else []
    now = time.time()

    def newest(kinds: tuple[str, ...]) -> float:
        return float(max((b["timestamp"]["stop"] for b in done if b["type"] in kinds), default=0))

    def update(previous: dict[str, float]) -> dict[str, float]:
        values = {name: float(previous.get(name, 0.0)) for name in METRICS}
        values["govstack_pgbackrest_last_backup_timestamp_seconds"] = newest(("full", "diff", "incr"))
        values["govstack_pgbackrest_last_full_timestamp_seconds"] = newest(("full",))
        values["govstack_pgbackrest_backups"] = float(len(done))
        if failed:
            values["govstack_pgbackrest_last_failure_timestamp_seconds"] = now
            values["govstack_pgbackrest_failures_total"] += 1
        if verified:
            values["govstack_pgbackrest_last_verify_timestamp_seconds"] = now
        return values

    metrics.rewrite(metrics_file, METRICS, update)
    return entry
