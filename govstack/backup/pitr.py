"""`govstack restore --to-time T | --to-latest`: Postgres back to a moment, from pgBackRest.

The same safety properties as a restore of a backup run (govstack/backup/ops.py):
nothing live is touched until the restored data is verified, the swap is a
rename, and the database it replaces is kept.

1. Preflight, touching nothing: the pgbackrest sidecar answers, the repository
   holds a base backup of the cluster from before T, T is in the past.
2. The moment made reachable: a commit on the live cluster (so that a commit
   after T exists: recovery to a time stops at the first commit after it, and
   Postgres refuses a recovery whose WAL ends before its target) and a WAL
   switch, then a bounded wait until the archiver has archived that segment.
3. Scratch: ``pgbackrest restore --type=time`` into a new directory beside the
   data, in a one-off container of the Postgres image (no network, the
   repository read-only), and a scratch Postgres on it that replays WAL to T
   and promotes. It archives nothing (archive_mode=off): the live cluster's
   archive never sees its timeline.
4. Verified: recovery stopped at T (the last replayed commit is at or before T,
   and Postgres' log names the first commit after it).
5. Cleanup paused (as a restore of a run does), writers stopped (api and
   worker of both colors on every app host, the backup job); the database
   copied from the scratch Postgres into ``<db>_restore`` of the live cluster
   (roles first, then pg_dump | pg_restore in one transaction), every
   table's row count and content checksum and every sequence compared between
   the two; then swapped in by rename, the replaced database kept as
   ``<db>_pre_restore_<time>``.
6. Writers restarted; the scratch container and directory removed (kept for
   inspection when a step after 3 fails). The command then writes the
   reconciliation report of a restore (govstack/reconcile/): the rows whose
   object or vectors are missing, the objects and vectors no restored row names.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from govstack.backup.plan import PITR_SECRET, PITR_SERVICE, PITR_UID, PitrContainerPaths, pitr_paths, stanza
from govstack.backup.remote import BackupError, BackupHost
from govstack.commands import SUPERUSER, docker_exec, last_json, psql, q, words
from govstack.secrets import secret_path
from govstack.settings.catalog import PITR_OFFSITE_SECRETS

# Every user table's row count and content checksum, in one statement: the
# order-independent sum (mod 2^64) of the first 64 bits of md5(row::text), the
# formula of the backup job's manifest (jobs/backup/govstack_backup/manifest.py).
TABLE_CHECKSUMS_SQL = (
    "SELECT n.nspname || '.' || c.relname, (xpath('/row/n/text()', x))[1]::text, "
    "(xpath('/row/s/text()', x))[1]::text "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, "
    "LATERAL query_to_xml(format('SELECT count(*) AS n, coalesce(sum((''x'' || substr(md5(t::text), 1, 16))"
    "::bit(64)::bigint::numeric), 0) AS s FROM ONLY %I.%I AS t', n.nspname, c.relname), false, true, '') AS x "
    "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1"
)
SEQUENCES_SQL = ("SELECT schemaname || '.' || sequencename, coalesce(last_value::text, '') FROM pg_sequences "
                 "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")
# What Postgres logs when a time target stops recovery (xlogrecovery.c).
_STOPPED = re.compile(r"recovery stopping before (?:commit|abort) of transaction (\d+), time (.+?)$", re.M)
# The scratch Postgres: Postgres' defaults (128 MB shared buffers) are plenty to replay and dump.
SCRATCH_MEMORY = "1g"
TARGET_FORMATS = "'YYYY-MM-DD HH:MM:SS+00' (UTC offset required; fractions of a second allowed)"


def parse_target(text: str, now: datetime | None = None) -> datetime:
    """A restore target: an ISO date and time with an explicit UTC offset, in the past."""
    raw = text.strip()
    normal = re.sub(r"([+-]\d\d)$", r"\1:00", raw.replace("Z", "+00:00").replace("z", "+00:00"))
    try:
        when = datetime.fromisoformat(normal)
    except ValueError:
        raise BackupError(f"--to-time {text!r} is not a time; use {TARGET_FORMATS}", "usage") from None
    if when.tzinfo is None:
        raise BackupError(f"--to-time {text!r} has no UTC offset; use {TARGET_FORMATS}", "usage")
    when = when.astimezone(UTC)
    if when >= (now or datetime.now(UTC)):
        raise BackupError(f"--to-time {text!r} is not in the past", "usage")
    return when


def target_text(when: datetime) -> str:
    """What pgBackRest and Postgres read as recovery_target_time."""
    return when.strftime("%Y-%m-%d %H:%M:%S.%f+00")


class PitrHost:
    """The PITR steps on one stack host, over its remote shell."""

    def __init__(self, stack: BackupHost, source: str = "local") -> None:
        self.stack = stack
        self.settings = stack.settings
        self.source = source
        self.stanza = stanza(stack.settings)
        self.paths = pitr_paths(stack.settings)
        self.container = PitrContainerPaths()
        if not self.settings.pitr_enabled:
            raise BackupError("point-in-time recovery is off on this stack (settings backup.pitr)", "config")
        if source == "offsite" and self.settings.backup.offsite is None:
            raise BackupError("no offsite repository is configured (settings backup.offsite)", "config")

    # -- the sidecar ---------------------------------------------------------------------------
    def job(self, *args: str, timeout: float | None = None) -> dict[str, Any]:
        self.stack.require_service(PITR_SERVICE)
        result = self.stack.sh(self.stack.compose("exec", "-T", PITR_SERVICE, "govstack-backup", "pitr", *args),
                               timeout=timeout)
        answer = last_json(result.stdout)
        if not isinstance(answer, dict):
            raise BackupError(f"govstack-backup pitr {args[0]} gave no answer (exit {result.rc}): {result.tail()}")
        if not answer.get("ok"):
            raise BackupError(answer.get("error") or f"pitr {args[0]} failed", answer.get("kind", "error"))
        return answer

    def info(self) -> dict[str, Any]:
        return self.job("info", timeout=600)

    def backups(self) -> list[dict[str, Any]]:
        """Base backups in the repository, oldest first (every cluster the stanza has known)."""
        return sorted((b for b in self.info().get("backup") or [] if not b.get("error")),
                      key=lambda b: b["timestamp"]["stop"])

    def preflight(self, target: datetime | None) -> dict[str, Any]:
        backups = self.backups()
        if not backups:
            raise BackupError("the pgBackRest repository holds no base backup yet: nothing to restore from "
                              "(`govstack up` takes the first one)", "no-backup")
        if target is not None:
            usable = [b for b in backups if b["timestamp"]["stop"] <= target.timestamp()]
            if not usable:
                oldest = datetime.fromtimestamp(backups[0]["timestamp"]["stop"], UTC)
                raise BackupError(f"no base backup ends before {target_text(target)}: the oldest restorable "
                                  f"moment is {target_text(oldest)}", "too-early")
            return usable[-1]
        return backups[-1]

    # -- the live cluster ------------------------------------------------------------------------
    def archive_now(self, timeout_s: float) -> dict[str, Any]:
        """A commit and a WAL switch on the live cluster, then wait until the archiver has
        archived the switched segment: everything committed so far is in the repository."""
        out = self.stack.psql("SELECT txid_current(); SELECT pg_walfile_name(pg_switch_wal())").split()
        segment = out[-1]
        deadline = time.monotonic() + timeout_s
        while True:
            row = self.stack.psql("SELECT coalesce(last_archived_wal, ''), failed_count, "
                                  "coalesce(last_failed_wal, '') FROM pg_stat_archiver").strip().split("\t")
            if archived_past(row[0], segment):
                return {"segment": segment, "archived_at": datetime.now(UTC).isoformat()}
            if time.monotonic() > deadline:
                raise BackupError(f"WAL segment {segment} was not archived within {timeout_s:.0f}s (last archived "
                                  f"{row[0] or 'none'}, last failed {row[2] or 'none'}): archiving is failing, see "
                                  "the WalArchiveFailing runbook; nothing was changed", "archive-lag")
            time.sleep(1)

    # -- the scratch cluster ---------------------------------------------------------------------
    def _mounts(self, scratch: str, *, repository_writable: bool = False) -> list[str]:
        c = self.container
        repo_mode = "" if repository_writable else ":ro"
        mounts = [f"{scratch}:{c.pgdata}", f"{self.paths.repository}:{c.repository}{repo_mode}",
                  f"{self.paths.config_dir}:{c.config_dir}:ro",
                  f"{secret_path(self.settings, PITR_SECRET)}:/run/secrets/{PITR_SECRET}:ro"]
        if self.source == "offsite":
            mounts += [f"{secret_path(self.settings, name)}:/run/secrets/{name}:ro" for name in PITR_OFFSITE_SECRETS]
        return mounts

    def _docker_run(self, name: str, scratch: str, *args: str, detach: bool = False, entrypoint: str) -> str:
        """A hardened one-off container of the Postgres image on the scratch directory."""
        image = self.server_image()
        network = "none" if self.source == "local" else self.stack.plan.networks["edge"]
        flags = ["-d"] if detach else ["--rm"]
        argv = ["docker", "run", *flags, "--name", name, "--user", f"{PITR_UID}:{PITR_UID}", "--network", network,
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--memory", SCRATCH_MEMORY,
                "--label", f"org.govstack.pitr-scratch={self.settings.project}",
                "--tmpfs", f"/tmp:uid={PITR_UID},gid={PITR_UID},mode=0700"]
        for mount in self._mounts(scratch):
            argv += ["-v", mount]
        return words(*argv, "--entrypoint", entrypoint, image, *args)

    def server_image(self) -> str:
        """The image ID the live Postgres runs: the scratch cluster gets the very same binaries
        and pgBackRest (a tag may have been rebuilt since the container started)."""
        pg = self.stack.require_service("postgres")
        image = self.stack.sh(f"docker inspect -f '{{{{.Image}}}}' {q(pg)}", timeout=60).stdout.strip()
        if not image.startswith("sha256:"):
            raise BackupError(f"cannot read the image of the running Postgres ({pg})", "restore-failed")
        return image

    def restore_scratch(self, scratch: str, name: str, target: datetime | None) -> dict[str, Any]:
        """pgBackRest restore into ``scratch``; a scratch Postgres replays WAL to the target and
        promotes. Returns what recovery reached."""
        s = self.stack
        s.sh(f"rm -rf {q(scratch)} && mkdir -m 700 {q(scratch)} && chown {PITR_UID}:{PITR_UID} {q(scratch)}",
             check=True, timeout=600)
        kind = ["--type=time", f"--target={target_text(target)}", "--target-action=promote"] if target else \
            ["--type=default"]
        repo = ["--repo=2"] if self.source == "offsite" else []
        restore = s.sh(self._docker_run(f"{name}-restore", scratch, f"--stanza={self.stanza}",
                                        "--log-level-console=info", f"--pg1-path={self.container.pgdata}",
                                        *repo, *kind, "--archive-mode=off", "restore",
                                        entrypoint=self.container.command))
        if not restore.ok:
            raise BackupError(f"pgbackrest restore into the scratch directory failed: {restore.tail()}",
                              "restore-failed")
        label = re.search(r"restore backup set (\S+)", restore.stdout + restore.stderr)
        s.sh(f"docker rm -f {q(name)} >/dev/null 2>&1; true", timeout=60)
        started = s.sh(self._docker_run(
            name, scratch, "-D", self.container.pgdata, "-c", "listen_addresses=", "-c", "archive_mode=off",
            "-c", "hot_standby=off", "-c", f"port={self.stack.plan.ports['postgres']}", detach=True,
            entrypoint="postgres"))
        if not started.ok:
            raise BackupError(f"the scratch Postgres did not start: {started.tail()}", "restore-failed")
        self._wait_promoted(name)
        logs = s.sh(f"docker logs {q(name)} 2>&1 | tail -n 200", timeout=60).stdout
        stopped = _STOPPED.findall(logs)
        replayed = self.scratch_sql(name, "SELECT coalesce(to_char(pg_last_xact_replay_timestamp() AT TIME ZONE "
                                          "'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00'), '')", "postgres").strip()
        reached = {
            "backup_set": label.group(1) if label else None,
            "last_replayed_commit": replayed or None,
            "stopped_before_commit_at": target_text(_pg_time(stopped[-1][1])) if stopped else None,
            "stopped_before_xid": stopped[-1][0] if stopped else None,
        }
        if target is not None and replayed and _pg_time(replayed) > target:
            raise BackupError(f"recovery replayed a commit at {replayed}, after the target {target_text(target)}",
                              "verify-failed")
        return reached

    def _wait_promoted(self, name: str) -> None:
        deadline = time.monotonic() + self.settings.backup.timeout_s
        while True:
            running = self.stack.sh(f"docker inspect -f '{{{{.State.Running}}}}' {q(name)}", timeout=60).stdout
            if running.strip() != "true":
                tail = self.stack.sh(f"docker logs {q(name)} 2>&1 | grep -E 'FATAL|PANIC|ERROR' | tail -n 3",
                                     timeout=60).stdout.strip().replace("\n", " | ")
                raise BackupError(f"the scratch Postgres stopped during recovery: {tail or 'see docker logs ' + name}",
                                  "restore-failed")
            probe = self.stack.sh(f"docker exec {q(name)} psql -X -tAc 'select pg_is_in_recovery()' -U {SUPERUSER} "
                                  "-d postgres 2>/dev/null", timeout=60)
            if probe.ok and probe.stdout.strip() == "f":
                return
            if time.monotonic() > deadline:
                raise BackupError("the scratch Postgres did not finish recovery in time", "timeout")
            time.sleep(1)

    def scratch_sql(self, name: str, sql: str, database: str) -> str:
        result = self.stack.sh(f"printf '%s\\n' {q(sql)} | {docker_exec(name, *psql(database, rows=True))}",
                               timeout=self.settings.backup.timeout_s)
        if not result.ok:
            raise BackupError(f"psql in the scratch Postgres failed: {result.tail()}")
        return result.stdout

    def remove_scratch(self, name: str, scratch: str) -> None:
        self.stack.sh(f"docker rm -f {q(name)} >/dev/null 2>&1; rm -rf {q(scratch)}", timeout=600)


def archived_past(last_archived: str, segment: str) -> bool:
    """``last_archived`` (pg_stat_archiver.last_archived_wal) is ``segment`` or later. Its
    name may be a backup label or history file (``<segment>.<offset>.backup``): those say
    nothing about the segment itself. Names order as timeline, then position."""
    name = last_archived[:24]
    return name > segment or (name == segment and len(last_archived) == 24)


def _pg_time(text: str) -> datetime:
    """A timestamptz as Postgres prints it (``2026-01-02 03:04:05.6+00``), in UTC."""
    return datetime.fromisoformat(re.sub(r"([+-]\d\d)$", r"\1:00", text.strip())).astimezone(UTC)


def checksums(rows: str) -> dict[str, dict[str, Any]]:
    tables = {}
    for line in rows.splitlines():
        if line.strip():
            name, count, total = line.split("\t")
            tables[name] = {"rows": int(count), "checksum": f"{int(total) & ((1 << 64) - 1):016x}"}
    return tables


def sequences(rows: str) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in rows.splitlines() if "\t" in line)


def compare(source: dict[str, dict[str, Any]], copy: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for table in sorted(set(source) | set(copy)):
        want, got = source.get(table), copy.get(table)
        if want is None or got is None:
            problems.append(f"table {table}: only in the {'copy' if want is None else 'restored cluster'}")
        elif want != got:
            problems.append(f"table {table}: {got['rows']} rows / {got['checksum']} in the copy, "
                            f"{want['rows']} rows / {want['checksum']} restored")
    return problems


def copy_scratch_in(stack: BackupHost, pitr: PitrHost, name: str) -> dict[str, Any]:
    """The recovered cluster's roles (passwords from the host's secrets), then its database
    into ``<db>_restore`` of the live cluster in one transaction, compared table by table
    and sequence by sequence. The scratch database's name and timings; raises BackupError
    with the live database untouched."""
    from govstack.backup.ops import new_scratch_database, set_role_passwords

    db = stack.settings.postgres.database
    pg = stack.require_service("postgres")
    t0 = time.monotonic()
    # Existing roles make CREATE ROLE fail harmlessly: no ON_ERROR_STOP here.
    stack.sh(f"{docker_exec(name, 'pg_dumpall', '--globals-only', '--no-role-passwords', '-U', SUPERUSER)} "
             f"| grep -v -E '^(CREATE|ALTER) ROLE postgres( |;)' "
             f"| {docker_exec(pg, *psql(SUPERUSER, on_error_stop=False))} >/dev/null 2>&1; true")
    set_role_passwords(stack)
    scratch = new_scratch_database(stack)
    dump = docker_exec(name, "pg_dump", "-Fc", "-Z0", "-U", SUPERUSER, "-d", db)
    restore = docker_exec(pg, "pg_restore", "-U", SUPERUSER, "-d", scratch, "--single-transaction", "--no-password")
    result = stack.sh(f"{dump} | {restore}", timeout=stack.settings.backup.timeout_s)
    if not result.ok:
        stack.psql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)', check=False)
        raise BackupError(f"copying the recovered database into {scratch} failed: {result.tail()}", "restore-failed")
    restored_s = time.monotonic() - t0
    source_tables = checksums(pitr.scratch_sql(name, TABLE_CHECKSUMS_SQL, db))
    copied_tables = checksums(stack.psql(TABLE_CHECKSUMS_SQL, scratch))
    problems = compare(source_tables, copied_tables)
    source_seqs = sequences(pitr.scratch_sql(name, SEQUENCES_SQL, db))
    copied_seqs = sequences(stack.psql(SEQUENCES_SQL, scratch))
    problems += [f"sequence {n}: {copied_seqs.get(n)!r} in the copy, {v!r} recovered"
                 for n, v in sorted(source_seqs.items()) if copied_seqs.get(n) != v]
    if problems:
        raise BackupError(f"the copy does not match the recovered cluster: {problems[:5]} (left as {scratch} for "
                          f"inspection; {db} untouched)", "verify-failed")
    tables = {n: {**t, "expected": source_tables[n]} for n, t in copied_tables.items()}
    return {"scratch": scratch, "tables": tables, "restore_s": round(restored_s, 3)}


def restore_to(stack: BackupHost, target: datetime | None, *, source: str = "local", stamp: str | None = None,
               restart_app: bool = True, app_hosts: list[BackupHost] | None = None) -> dict[str, Any]:
    """Postgres to ``target`` (None: the newest WAL the archive holds). A report; raises BackupError,
    the live database untouched unless the message says otherwise."""
    from govstack.backup.ops import pause_and_stop_writers, swap_database_in
    from govstack.faults import crash_at
    from govstack.reconcile import ops as reconcile

    started = time.monotonic()
    pitr = PitrHost(stack, source)
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for service in (*stack.plan.data_services, PITR_SERVICE):
        stack.require_service(service)
    base = pitr.preflight(target)
    label = f"pitr:{target_text(target) if target else 'latest'}"
    report: dict[str, Any] = {
        "kind": "point-in-time", "run": label, "target": target_text(target) if target else "latest",
        "source": source, "started_at": stamp, "base_backup": base.get("label"), "components": {},
    }
    # Everything up to now archived: the target is reachable (and for --to-latest, "latest" is now).
    try:
        report["archived"] = pitr.archive_now(timeout_s=max(120, 4 * stack.settings.backup.pitr.archive_timeout_s))
    except BackupError:
        if target is None:
            raise
        # The live cluster need not be up for a moment long past: recovery says if WAL is missing.
        report["archived"] = None

    scratch_dir = f"{stack.settings.paths.pitr_scratch_prefix}{stamp.lower()}"
    name = f"{stack.settings.project}-{scratch_dir.rsplit('/', 1)[1]}"
    t_restore = time.monotonic()
    swapped = False
    try:
        report["recovery"] = pitr.restore_scratch(scratch_dir, name, target)
        report["recovery_s"] = round(time.monotonic() - t_restore, 3)
        reached = report["recovery"].get("last_replayed_commit")
        report["snapshot_time"] = reached or report["target"]
        pause, writers, t_stop = pause_and_stop_writers(stack, report, label, ("postgres",), stamp, app_hosts)
        try:
            copy = copy_scratch_in(stack, pitr, name)
            reconcile.pause_cleanup(stack.psql, copy["scratch"], pause)
            kept = swap_database_in(stack, copy["scratch"], stamp)
            swapped = True
            crash_at("restore_after_swap")
            tables = copy["tables"]
            report["components"]["postgres"] = {
                "ok": True, "database": stack.settings.postgres.database, "kept_previous_as": kept,
                "tables": tables, "table_count": len(tables), "rows": sum(t["rows"] for t in tables.values()),
                "problems": [], "restore_s": copy["restore_s"],
            }
        finally:
            stack.sh(stack.compose("start", "backup"), timeout=180)
            stack.wait_healthy(stack.containers(stack.settings.project, "backup"), timeout_s=120)
            # Nothing swapped: the app serves the untouched database again. Swapped: it serves the restored one.
            if restart_app or not swapped:
                writers.start()
                report["writers_restarted"] = len(writers)
            report["outage_s"] = round(time.monotonic() - t_stop, 3)
            report["writers"] = writers.by_host()
    except BackupError as exc:
        if "recovery" in report:
            raise BackupError(f"{exc}; the recovered cluster is kept in {scratch_dir} for inspection (`govstack "
                              "report storage --apply --drop-leftovers` removes it)", exc.kind) from exc
        raise
    finally:
        if not swapped and "recovery" in report:
            # Recovered but not swapped in: the scratch cluster stays for inspection (its container stopped).
            stack.sh(f"docker stop {q(name)} >/dev/null 2>&1; true", timeout=120)
            report["scratch_left"] = scratch_dir
        else:
            pitr.remove_scratch(name, scratch_dir)
    report["restore_s"] = round(time.monotonic() - t_restore, 3)
    report["total_s"] = round(time.monotonic() - started, 3)
    report["ok"] = True
    return report


def explain(report: dict[str, Any]) -> str:
    recovery = report.get("recovery") or {}
    return json.dumps({k: recovery.get(k) for k in ("last_replayed_commit", "stopped_before_commit_at")})
