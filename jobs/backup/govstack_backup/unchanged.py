"""A scheduled run that finds nothing changed since the last complete run stores nothing.

Every complete run of the configured repository (objects mirror mode) ends by writing a
record on the cache volume: its snapshots, and a key of each thing it stored, taken where
the run read it:

- Postgres: inside the run's own snapshot, the next transaction id (``pg_current_snapshot()``'s
  xmax) with no transaction in progress, the cluster (system identifier, timeline, postmaster
  start) and every sequence's value. Any committed change of a table, a role or a schema
  takes a transaction id; a sequence moves without one, so the values are compared
  themselves. Not the WAL position: with data checksums on, reading a table writes WAL
  (hint bits), so the WAL moves after every run that changed nothing.
- Objects and vectors: the sha256 of the mirror's and the vectors export's state files,
  which name every object (ETag, size, sha256) and every collection (signature, digest).
  Computing them now is the same listing an incremental run does, nothing is downloaded.
- The deploy ledger's sha256 (without the lines of `govstack backup` itself), the job's version
  and its whole configuration.

``govstack-backup run --if-changed`` (the schedule's command) compares all of it, then the
Postgres key once more (nothing committed while it looked). Only when every part is equal,
and every snapshot of that run is still in the repository, does it store nothing: the last
run holds exactly the data of now, and the run reports it as current. Anything else, or
any doubt (no record, a damaged one, a remote repository, a transaction in progress when
the record was taken), is a full run. The check still runs on its own schedule
(``check_schedule``), prune on its own (``prune_schedule``), and the offsite copy of that
run is made again if the offsite repository lost it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from datetime import UTC, datetime
from typing import Any

from govstack_backup import __version__
from govstack_backup.config import Config
from govstack_backup.files import read_json, write_json_atomic
from govstack_backup.restic import Restic

FORMAT = 1


def repository_key(restic: Restic) -> str | None:
    """A local repository's identity: its path and its ``config`` file (a repository made again
    at the same path has a new one). None: a remote repository, or none there yet."""
    if not restic.is_local():
        return None
    try:
        with open(os.path.join(restic.repository, "config"), "rb") as fh:
            config = fh.read()
    except OSError:
        return None
    return hashlib.sha256(restic.repository.encode() + b"\0" + config).hexdigest()[:16]


def record_path(cfg: Config, restic: Restic) -> str | None:
    key = repository_key(restic)
    return None if key is None else os.path.join(cfg.cache_dir, f"govstack-lastrun-{key}.json")


def config_digest(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode()).hexdigest()


def ledger_digest(ledger: bytes | None) -> str | None:
    """The deploy ledger's sha256 without the lines of ``govstack backup`` itself: they describe
    the backups, not the stack (each is written after its run, so no run holds its own), and
    counting them would make every run an operator starts change the data of the next one."""
    if ledger is None:
        return None
    kept = []
    for line in ledger.split(b"\n"):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not (isinstance(entry, dict) and entry.get("action") == "backup"):
            kept.append(line)
    return hashlib.sha256(b"\n".join(kept)).hexdigest()


def sequences_digest(sequences: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sequences, sort_keys=True).encode()).hexdigest()


def postgres_key(conn: Any, sequences: dict[str, str]) -> dict[str, Any]:
    """The key of the database's state as ``conn``'s transaction sees it (see the module doc): in
    the run's REPEATABLE READ transaction, its own snapshot (``pg_current_snapshot`` returns the
    active one); in a transaction of its own, the cluster's now. ``quiet``: no transaction held
    an id then, so nothing that commits later can hide below xmax. Each query is one that cannot
    fail (an error would end the run's snapshot transaction)."""
    xmin, xmax, started, in_recovery, may_read_control = conn.execute(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, pg_snapshot_xmax(pg_current_snapshot())::text, "
        "pg_postmaster_start_time()::text, pg_is_in_recovery(), "
        "has_function_privilege('pg_control_system()', 'EXECUTE')").fetchone()
    system_identifier = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0] \
        if may_read_control else None
    timeline = None if in_recovery else conn.execute(
        "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").fetchone()[0]
    return {"xmax": xmax, "quiet": xmin == xmax and not in_recovery, "system_identifier": system_identifier,
            "timeline": timeline, "postmaster_start": started, "sequences_sha256": sequences_digest(sequences)}


def same_postgres(recorded: dict[str, Any], now: dict[str, Any]) -> str | None:
    """None when ``now`` is the recorded state; else why not."""
    if not recorded.get("quiet"):
        return "a transaction was in progress when the last run took its snapshot"
    if now["xmax"] != recorded.get("xmax"):
        return f"transactions committed since (next transaction id {recorded.get('xmax')} -> {now['xmax']})"
    for name in ("system_identifier", "timeline", "postmaster_start"):
        if now[name] != recorded.get(name):
            return f"{name.replace('_', ' ')} changed ({recorded.get(name)} -> {now[name]})"
    if now["sequences_sha256"] != recorded.get("sequences_sha256"):
        return "a sequence moved"
    return None


def write_record(path: str, restic: Restic, *, run: str, manifest_snapshot: str, snapshots: dict[str, str],
                 bytes_total: int, cfg: Config, postgres: dict[str, Any], objects_sha256: str, vectors_sha256: str,
                 ledger_sha256: str | None, offsite: str | None) -> None:
    """The last complete run of this repository (written when everything else of it succeeded).
    restic reports short snapshot ids; the record keeps the full ones (the snapshot file names), so
    a later snapshot sharing a short id cannot stand in for a forgotten one."""
    full = full_snapshot_ids(restic, [manifest_snapshot, *snapshots.values()])
    write_json_atomic(path, {
        "format": FORMAT, "run": run, "manifest_snapshot": full[manifest_snapshot],
        "snapshots": {name: full[short] for name, short in snapshots.items()},
        "bytes": bytes_total, "job_version": __version__, "config_sha256": config_digest(cfg), "postgres": postgres,
        "objects_state_sha256": objects_sha256, "vectors_state_sha256": vectors_sha256,
        "ledger_sha256": ledger_sha256, "offsite": offsite,
        "recorded_at": datetime.now(UTC).isoformat(),
    })


def load_record(path: str | None) -> dict[str, Any] | None:
    """The last complete run's record; None when there is none or it is not one this job wrote."""
    data = None if path is None else read_json(path)
    wanted = {"run": str, "manifest_snapshot": str, "snapshots": dict, "bytes": int, "job_version": str,
              "config_sha256": str, "postgres": dict, "objects_state_sha256": str, "vectors_state_sha256": str}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    if not all(isinstance(data.get(k), t) for k, t in wanted.items()):
        return None
    if not all(_snapshot_id(i) for i in (data["manifest_snapshot"], *data["snapshots"].values())):
        return None
    return data


def _snapshot_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def snapshot_ids(record: dict[str, Any]) -> list[str]:
    """Every snapshot of the recorded run: its manifest's and its components'."""
    return sorted({record["manifest_snapshot"], *record["snapshots"].values()})


def full_snapshot_ids(restic: Restic, ids: list[str]) -> dict[str, str]:
    """short or full id -> the one snapshot file of the local repository it names."""
    names = os.listdir(os.path.join(restic.repository, "snapshots"))
    out = {}
    for short in ids:
        found = [name for name in names if name.startswith(short)]
        if len(found) != 1 or not short:
            raise ValueError(f"snapshot {short!r} names {len(found)} snapshots in {restic.repository}")
        out[short] = found[0]
    return out


def missing_snapshots(restic: Restic, ids: list[str]) -> list[str]:
    """Snapshots of ``ids`` whose file is gone from the local repository (forgotten, pruned)."""
    return [i for i in ids if not os.path.isfile(os.path.join(restic.repository, "snapshots", i))]


def stamp_path(cfg: Config, restic: Restic, kind: str) -> str:
    digest = hashlib.sha256(restic.repository.encode()).hexdigest()[:16]
    return os.path.join(cfg.cache_dir, f"govstack-{kind}-{digest}.json")


def check_due(cfg: Config, restic: Restic, now: float | None = None) -> bool:
    """Whether a run that stores nothing runs ``restic check``: when ``check_schedule`` fired
    since the last check of this repository (any run's), or it has none, or none is known."""
    if not cfg.check_schedule:
        return True
    from govstack_backup.schedule import next_fire

    now = time.time() if now is None else now
    try:
        last = float(read_json(stamp_path(cfg, restic, "check"))["checked_at"])  # type: ignore[index]
    except (ValueError, KeyError, TypeError):
        return True
    return next_fire(cfg.check_schedule, datetime.fromtimestamp(last, UTC)).timestamp() <= now


def write_check_stamp(cfg: Config, restic: Restic, at: float) -> None:
    write_json_atomic(stamp_path(cfg, restic, "check"),
                      {"checked_at": at, "at": datetime.fromtimestamp(at, UTC).isoformat()})
