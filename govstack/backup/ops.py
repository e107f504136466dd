"""`govstack backup` and `govstack restore`, as functions of a testinfra host
and a StackPlan (local or over SSH alike).

Restore order, and why:

1. Preflight, touching nothing: the repository opens with the password, the
   run exists, and the targets are empty (or ``force``). Any failure here
   leaves the stack exactly as it was.
2. Stop the writers (api + worker of both colors, on every app host) and the
   backup scheduler.
3. Objects, then vectors: additive (existing collections are renamed aside,
   objects only added or overwritten with the snapshot's bytes).
4. Postgres last, into a scratch database, verified there, and only then
   swapped in by rename; the database it replaces is kept, renamed.
5. Each component verified against the run's manifest; the app is started
   again only when everything verified (a half-restored app would serve it).

Before step 2 touches anything, the app's automatic cleanup is paused (the
``cleanup_paused`` flag in app_state), and the restored database gets the
same flag before it is swapped in: objects that the restored rows do not
name (everything uploaded since the snapshot) are what the operator
reconciles, so no cleanup may take them for orphans until an operator runs
`govstack cleanup resume` (govstack/reconcile/).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from govstack.backup.plan import BACKUP_ROLE, BACKUP_ROLE_ATTRIBUTES, BACKUP_ROLE_GROUPS, ROLE_SECRET
from govstack.backup.remote import BackupError, BackupHost
from govstack.commands import SUPERUSER, docker_exec, last_json, login_role_sql, psql, q
from govstack.faults import crash_at
from govstack.ledger import operator
from govstack.monitoring.catalog import MONITOR_ROLE, MONITOR_SECRET
from govstack.reconcile import ops as reconcile
from govstack.secrets import secret_path

COMPONENTS = ("postgres", "objects", "vectors")


class Writers:
    """The app's api and worker containers, of both colors, on every host that
    runs them (a split inventory's app hosts, not only the host restored):
    stopped before a restore changes data, started again after it."""

    def __init__(self, stacks: list[BackupHost]) -> None:
        self.found = [(stack, stack.app_containers()) for stack in stacks]

    def __len__(self) -> int:
        return sum(len(ids) for _, ids in self.found)

    def by_host(self) -> dict[str, list[str]]:
        return {stack.name or "@local": ids for stack, ids in self.found if ids}

    def stop(self) -> None:
        for stack, ids in self.found:
            stack.stop(ids)

    def start(self) -> None:
        for stack, ids in self.found:
            stack.start(ids)
        for stack, ids in self.found:
            stack.wait_healthy(ids)


def backup_now(stack: BackupHost, check_subset: str | None = None, *, if_changed: bool = False) -> dict[str, Any]:
    """One backup run in the running backup service; its summary (``unchanged``: nothing changed
    since the last complete run, which it names, and nothing was stored: ``if_changed``)."""
    stack.require_service("backup")
    args = ["run", "--json"] + (["--check-subset", check_subset] if check_subset else []) \
        + (["--if-changed"] if if_changed else [])
    result = stack.sh(stack.job(*args))
    summary = last_json(result.stdout)
    if not result.ok or not summary or not summary.get("ok"):
        cause = (summary or {}).get("error") or result.tail()
        raise BackupError(f"backup failed: {cause}", "backup-failed")
    return summary


def list_runs(stack: BackupHost, source: str = "local") -> list[dict[str, Any]]:
    stack.require_service("backup")
    return stack.job_json("runs", "--from", source, timeout=600)["runs"]


def find_run(stack: BackupHost, snapshot: str, source: str = "local", oneoff: bool = False) -> dict[str, Any]:
    """The run (with manifest) that ``snapshot`` names: latest, a run id or a snapshot id."""
    return stack.job_json("manifest", snapshot, "--from", source, oneoff=oneoff, timeout=600)


# -- postgres ------------------------------------------------------------------------------------
def postgres_contents(stack: BackupHost, database: str) -> dict[str, int] | None:
    """Tables with rows in ``database`` (name -> 1), {} when it exists but holds no row,
    None when it does not exist."""
    exists = stack.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'").strip()  # noqa: S608
    if not exists:
        return None
    # One exact probe per table, in one statement (query_to_xml runs each EXISTS).
    rows = stack.psql(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg\\_toast%' "
        "AND (xpath('/row/e/text()', query_to_xml(format('SELECT EXISTS (SELECT 1 FROM %I.%I) AS e', "
        "n.nspname, c.relname), false, true, '')))[1]::text = 'true' ORDER BY 1",
        database,
    )
    return {line.strip(): 1 for line in rows.splitlines() if line.strip()}


def role_secrets(stack: BackupHost) -> dict[str, str]:
    """Login roles whose passwords the host holds: set again after a restore
    (the dump of the roles carries no passwords)."""
    s = stack.settings
    roles = {s.postgres.owner_user: secret_path(s, "postgres_owner_password"),
             s.postgres.app_user: secret_path(s, "postgres_app_password"), BACKUP_ROLE: secret_path(s, ROLE_SECRET)}
    roles[MONITOR_ROLE] = secret_path(s, MONITOR_SECRET)
    if s.analytics.enabled:
        roles[stack.plan.analytics_role] = secret_path(s, "postgres_analytics_password")
    return roles


def _restore_roles(stack: BackupHost, run: str, source: str) -> None:
    """Roles and memberships from the run, then the passwords from the host's secrets."""
    pg = stack.require_service("postgres")
    # Existing roles make CREATE ROLE fail harmlessly: no ON_ERROR_STOP here.
    stack.sh(
        f"{stack.job('dump', run, 'postgres_globals', '--from', source, oneoff=True)} "
        f"| grep -v -E '^(CREATE|ALTER) ROLE postgres( |;)' "
        f"| {docker_exec(pg, *psql(SUPERUSER, on_error_stop=False))} >/dev/null 2>&1; true",
    )
    set_role_passwords(stack)


def set_role_passwords(stack: BackupHost) -> None:
    """The login roles' passwords from the host's secrets (a dump of the roles carries none)."""
    for role, path in role_secrets(stack).items():
        exists = stack.sh(f"test -s {q(path)}").ok
        if not exists:
            continue
        if role == BACKUP_ROLE:
            stack.psql_script(login_role_sql(role, path, attributes=BACKUP_ROLE_ATTRIBUTES,
                                             member_of=BACKUP_ROLE_GROUPS, connect="postgres"))
            continue
        stack.psql_script(login_role_sql(role, path))


def restore_postgres(stack: BackupHost, entry: dict[str, Any], source: str, stamp: str,
                     pause: dict[str, Any] | None = None) -> dict[str, Any]:
    """Restore into a scratch database, verify it there, pause its cleanup (``pause``), then swap
    it in by rename."""
    db = stack.settings.postgres.database
    pg = stack.require_service("postgres")
    t0 = time.monotonic()
    _restore_roles(stack, entry["run"], source)
    scratch = new_scratch_database(stack)
    # --single-transaction: all of it or none of it (implies --exit-on-error).
    result = stack.sh(
        f"{stack.job('dump', entry['run'], 'postgres', '--from', source, oneoff=True)} "
        f"| {docker_exec(pg, 'pg_restore', '-U', SUPERUSER, '-d', scratch, '--single-transaction', '--no-password')}",
    )
    if not result.ok:
        stack.psql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)', check=False)
        raise BackupError(f"pg_restore into {scratch} failed: {result.tail()}", "restore-failed")
    restored_s = time.monotonic() - t0
    check = stack.job_json("verify-postgres", entry["run"], "--database", scratch, "--from", source, oneoff=True)
    if not check.get("ok"):
        raise BackupError(f"the restored database does not match the snapshot: {check.get('problems')[:5]} "
                          f"(left as {scratch} for inspection; {db} untouched)", "verify-failed")
    if pause is not None:
        reconcile.pause_cleanup(stack.psql, scratch, pause)
    kept = swap_database_in(stack, scratch, stamp)
    return {**check, "database": db, "kept_previous_as": kept, "restore_s": round(restored_s, 3)}


def new_scratch_database(stack: BackupHost) -> str:
    """``<db>_restore``, empty, owned by the schema's owner, connectable by the roles that
    connect to the app's database: where a restore lands before it is verified."""
    s = stack.settings
    db, owner = s.postgres.database, s.postgres.owner_user
    scratch = f"{db}_restore"
    stack.psql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    stack.psql(f'CREATE DATABASE "{scratch}" OWNER "{owner}"')
    # Every login role but the owner connects to the app's database: the app, the backup job,
    # postgres-exporter (without it the exporter lost the database until the next `up`).
    # Only the roles that exist (no monitor role without monitoring).
    connecting = ", ".join(f"'{role}'" for role in role_secrets(stack) if role != owner)
    stack.psql(f'REVOKE ALL ON DATABASE "{scratch}" FROM PUBLIC;\n'
               f"SELECT format('GRANT CONNECT ON DATABASE %I TO %I', '{scratch}', rolname) "  # noqa: S608
               f"FROM pg_roles WHERE rolname IN ({connecting}) \\gexec")
    return scratch


def swap_database_in(stack: BackupHost, scratch: str, stamp: str) -> str | None:
    """The verified ``scratch`` becomes the app's database by rename; the one it replaces is
    kept as ``<db>_pre_restore_<stamp>`` (its name returned; None when there was none)."""
    db = stack.settings.postgres.database
    kept = f"{db}_pre_restore_{stamp.lower()}"
    crash_at("restore_before_swap")
    existed = bool(stack.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip())  # noqa: S608
    # The swap: nothing may be connected to either database. Terminating and renaming in one
    # psql session leaves no gap for a client to reconnect in (postgres-exporter's next scrape
    # did, between two docker execs seconds apart on a loaded host); a rename waits up to 5 s
    # for the terminated sessions to exit.
    terminate = (f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "  # noqa: S608 - validated names
                 f"WHERE datname IN ('{db}', '{scratch}') AND pid <> pg_backend_pid();")
    rename_old = f'ALTER DATABASE "{db}" RENAME TO "{kept}";' if existed else ""
    stack.psql(f'{terminate}\n{rename_old}\nALTER DATABASE "{scratch}" RENAME TO "{db}";')
    return kept if existed else None


# -- the whole restore ----------------------------------------------------------------------------
def preflight(stack: BackupHost, snapshot: str, components: tuple[str, ...], force: bool,
              source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Everything checked before anything is stopped: the run and what the targets hold."""
    for service in stack.plan.data_services:
        stack.require_service(service)
    # The scheduler may be stopped (a drill stops it): then a one-off container answers.
    oneoff = stack.container("backup") is None
    entry = find_run(stack, snapshot, source, oneoff=oneoff)
    held = entry["manifest"]["components"]
    if set(components) - set(held):
        kind = entry.get("kind", "run")
        raise BackupError(f"run {entry['run']} holds {', '.join(sorted(held))} only (a {kind} copy); "
                          f"restore it with --component {' or '.join(sorted(held))}", "usage")
    state = stack.job_json("state", entry["run"], "--from", source, oneoff=oneoff)
    busy: dict[str, Any] = {}
    if "postgres" in components:
        tables = postgres_contents(stack, stack.settings.postgres.database)
        if tables:
            busy["postgres"] = (f"database {stack.settings.postgres.database} has rows in {len(tables)} tables: "
                                f"{', '.join(tables)}")
    if "objects" in components and state.get("objects"):
        busy["objects"] = f"buckets hold objects: {state['objects']}"
    if "vectors" in components and state.get("vectors"):
        busy["vectors"] = f"collections hold vectors: {state['vectors']}"
    if busy and not force:
        reasons = "; ".join(f"{name}: {why}" for name, why in busy.items())
        raise BackupError(
            f"refusing to restore over existing data ({reasons}). --force restores anyway: the current "
            "database is kept renamed, non-empty collections are kept renamed, and objects of the snapshot "
            "overwrite those with the same key", "non-empty")
    return entry, busy


def pause_and_stop_writers(stack: BackupHost, report: dict[str, Any], run: str, components: tuple[str, ...],
                           stamp: str, app_hosts: list[BackupHost] | None) -> tuple[dict[str, Any], Writers, float]:
    """Before a restore touches anything: cleanup paused (no cleanup may take what the restore
    leaves unnamed for orphans), then the writers on every app host and the backup job stopped.
    The pause record, the writers and when they stopped."""
    pause = reconcile.pause_record(run=run, components=components, operator=operator(),
                                   report=reconcile.report_paths(stack.settings, stamp)[0])
    report["cleanup_paused"] = pause
    reconcile.pause_cleanup(stack.psql, stack.settings.postgres.database, pause)
    writers = Writers([stack, *(app_hosts or [])])
    t_stop = time.monotonic()
    writers.stop()
    stack.sh(stack.compose("stop", "-t", 60, "backup"), timeout=180, check=True)
    report["writers_stopped"] = len(writers)
    crash_at("restore_after_stop")
    return pause, writers, t_stop


def restore(stack: BackupHost, snapshot: str = "latest", component: str = "all", force: bool = False,
            source: str = "local", restart_app: bool = True, app_hosts: list[BackupHost] | None = None
            ) -> dict[str, Any]:
    """Stop writers, restore, verify against the run's manifest, restart the app.
    ``app_hosts``: the other hosts whose app containers write (a split
    inventory's app hosts). Returns a report; raises BackupError (the stack
    untouched when it fails in preflight)."""
    components = COMPONENTS if component == "all" else (component,)
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise BackupError(f"unknown component {sorted(unknown)[0]!r}; choose postgres, objects, vectors or all",
                          "usage")
    started = time.monotonic()
    entry, busy = preflight(stack, snapshot, components, force, source)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report: dict[str, Any] = {"run": entry["run"], "source": source, "components": {}, "forced_over": busy,
                              "manifest_snapshot": entry["snapshots"]["manifest"], "started_at": stamp,
                              "snapshot_time": snapshot_time(entry)}
    pause, writers, t_stop = pause_and_stop_writers(stack, report, entry["run"], components, stamp, app_hosts)
    changed = False
    ok = False
    try:
        force_flag = ["--force"] if force else []
        t_restore = time.monotonic()
        if "objects" in components:
            stack.prepare_bucket()
            changed = True
            out = stack.job_json("restore-objects", entry["run"], "--from", source, *force_flag, oneoff=True,
                                 restore_keys=True)
            report["components"]["objects"] = out
            if not out.get("ok"):
                raise BackupError(f"objects do not match the snapshot after restore: {_object_problems(out)}",
                                  "verify-failed")
        if "vectors" in components:
            changed = True
            out = stack.job_json("restore-vectors", entry["run"], "--from", source, *force_flag, oneoff=True)
            report["components"]["vectors"] = out
            if not out.get("ok"):
                raise BackupError(f"vectors do not match the snapshot after restore: {out.get('problems')}",
                                  "verify-failed")
        if "postgres" in components:
            out = restore_postgres(stack, entry, source, stamp, pause)
            changed = True
            report["components"]["postgres"] = out
            crash_at("restore_after_swap")
        report["restore_s"] = round(time.monotonic() - t_restore, 3)
        ok = True
    except BackupError as exc:
        if changed:
            raise BackupError(f"{exc}. Components restored before this step stay restored; the app is left "
                              "stopped so it serves nothing half-restored (`govstack up` starts it)",
                              exc.kind) from exc
        raise
    finally:
        stack.sh(stack.compose("start", "backup"), timeout=180)
        stack.wait_healthy(stack.containers(stack.settings.project, "backup"), timeout_s=120)
        if restart_app and (ok or not changed):
            writers.start()
            report["writers_restarted"] = len(writers)
        elif not ok:
            report["writers_left_stopped"] = writers.by_host()
    report["outage_s"] = round(time.monotonic() - t_stop, 3)
    report["total_s"] = round(time.monotonic() - started, 3)
    report["ok"] = True
    report["writers"] = writers.by_host()
    return report


def snapshot_time(entry: dict[str, Any]) -> str | None:
    """When the run's database snapshot was taken (documents after it are not in the run)."""
    components = (entry.get("manifest") or {}).get("components") or {}
    return (components.get("postgres") or {}).get("snapshot_time") or entry.get("time")


def _object_problems(out: dict[str, Any]) -> str:
    parts = []
    for bucket, check in (out.get("buckets") or {}).items():
        if not check.get("ok"):
            parts.append(f"{bucket}: {check.get('missing_count')} missing, {check.get('mismatched_count')} differ")
    return "; ".join(parts) or json.dumps(out)[:300]
