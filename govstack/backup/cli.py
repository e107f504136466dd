"""`govstack backup`, `govstack restore`, `govstack drill` (registered on the
main CLI by govstack/cli.py). Each works against any inventory host, local or
over SSH; the data never leaves that host.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from govstack.backup.drill import drill as run_drill
from govstack.backup.ops import backup_now
from govstack.backup.ops import list_runs as runs_of
from govstack.backup.ops import restore as run_restore
from govstack.backup.remote import BackupError, BackupHost
from govstack.inventory import InventoryError, load_inventory
from govstack.ledger import append_outcome, begin_attempt, end_attempt, report_interrupted
from govstack.lock import command_lock, lock_wait_option
from govstack.remote import stack_plan, testinfra_host
from govstack.roles import ALL_ROLES, roles_of
from govstack.settings import SettingsError

DEFAULT_INVENTORY = "inventories/local.py"

inventory_option = click.option("-i", "--inventory", default=DEFAULT_INVENTORY, show_default=True,
                                help="pyinfra inventory file")
host_option = click.option("--host", "host_name", default=None,
                           help="inventory host (default: the data host, the first of group data)")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"govstack: {message}", err=True)
    raise SystemExit(code)


def inventory_hosts(inventory: str):
    try:
        return load_inventory(inventory)
    except (InventoryError, SettingsError) as error:
        _fail(str(error), 2)


def _backup_host(entry) -> BackupHost:
    return BackupHost(testinfra_host(entry.name, entry.data), stack_plan(entry.settings), name=entry.name)


def stack_for(inventory: str, host_name: str | None, hosts=None) -> BackupHost:
    """The BackupHost of one inventory host, reached as testinfra reaches it: ``--host``, else
    the data host (the first host of the ``data`` group runs Postgres, S3 and Chroma, and holds
    the backup repository; an all-in-one host is its own data host)."""
    hosts = hosts if hosts is not None else inventory_hosts(inventory)
    split = any(set(h.groups) & ALL_ROLES for h in hosts)
    if host_name is None and len(hosts) > 1 and not split:
        _fail("name one host with --host (the inventory has several, in no group)", 2)
    if host_name is None:
        matches = [h for h in hosts if "data" in roles_of(h.groups)][:1]
    else:
        matches = [h for h in hosts if h.name == host_name]
    if not matches:
        _fail(f"no host {host_name!r}" if host_name else f"no data host in {inventory}", 2)
    entry = matches[0]
    if not entry.settings.backup.enabled:
        _fail(f"{entry.name}: backups are disabled (govstack.backup.enabled)", 2)
    return _backup_host(entry)


def other_app_hosts(hosts, stack: BackupHost) -> list[BackupHost]:
    """A split inventory's app hosts other than ``stack``'s: their api and
    worker write to its database too, so a restore stops them as well."""
    if len(hosts) == 1:
        return []
    return [_backup_host(entry) for entry in hosts if entry.name != stack.name and "app" in roles_of(entry.groups)]


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.command()
@inventory_option
@host_option
@click.option("--list", "list_runs", is_flag=True, help="list the backup runs instead")
@click.option("--from", "source", type=click.Choice(["local", "offsite"]), default="local", show_default=True,
              help="repository to list (with --list)")
@click.option("--check-subset", default=None, help="restic check --read-data-subset for this run, e.g. 100%")
@click.option("--if-changed", is_flag=True,
              help="store nothing when nothing changed since the last complete run (as the schedule's runs do)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@lock_wait_option
def backup(inventory: str, host_name: str | None, list_runs: bool, source: str, check_subset: str | None,
           if_changed: bool, as_json: bool, lock_wait: float) -> None:
    """Run a backup now (the service's schedule runs them too), or list the runs."""
    hosts = inventory_hosts(inventory)
    stack = stack_for(inventory, host_name, hosts)
    try:
        if list_runs:
            runs = runs_of(stack, source)
            if as_json:
                _echo_json(runs)
                return
            for run in runs:
                state = "complete" if run["complete"] else "incomplete"
                click.echo(f"{run['run']}  {run['time'][:19]}  {state:10}  {run.get('kind', 'run'):10}  manifest "
                           f"{(run['snapshots'].get('manifest') or '-')[:8]}")
            return
        with command_lock(hosts, "backup", lock_wait):
            summary = backup_now(stack, check_subset, if_changed=if_changed)
    except BackupError as error:
        _fail(str(error))
    if as_json:
        _echo_json(summary)
    elif summary.get("unchanged"):
        click.echo(f"nothing changed since backup run {summary['run']}: nothing stored, that run is current "
                   f"({summary['duration_s']:.1f}s" + ("; repository checked" if summary.get("checked") else "")
                   + (f"; copied to {summary['offsite']}" if summary.get("offsite") else "") + ")")
    else:
        click.echo(f"backup run {summary['run']}: {summary['bytes']} bytes in {summary['duration_s']:.1f}s, "
                   f"verified; manifest snapshot {summary['manifest_snapshot'][:8]}"
                   + (f"; copied to {summary['offsite']}" if summary.get("offsite") else ""))


@click.command()
@inventory_option
@host_option
@click.option("--snapshot", default=None, help="latest, a run id (govstack backup --list) or a snapshot id")
@click.option("--to-time", "to_time", default=None, metavar="'YYYY-MM-DD HH:MM:SS+00'",
              help="Postgres as it was at that moment (pgBackRest's WAL archive)")
@click.option("--to-latest", is_flag=True, help="Postgres as of the newest archived WAL (pgBackRest)")
@click.option("--component", type=click.Choice(["postgres", "objects", "vectors", "all"]), default=None,
              help="what to restore from a run [default: all]; --to-time/--to-latest restore postgres")
@click.option("--force", is_flag=True, help="restore over existing data (the previous data is kept aside)")
@click.option("--from", "source", type=click.Choice(["local", "offsite"]), default="local", show_default=True,
              help="repository to restore from")
@click.option("--json", "as_json", is_flag=True, help="print the full report as JSON")
@lock_wait_option
def restore(inventory: str, host_name: str | None, snapshot: str | None, to_time: str | None, to_latest: bool,
            component: str | None, force: bool, source: str, as_json: bool, lock_wait: float) -> None:
    """Stop the app (on every app host), restore a backup run (or Postgres to a moment), verify it, restart the
    app."""
    chosen = [name for name, given in (("--snapshot", snapshot), ("--to-time", to_time), ("--to-latest", to_latest))
              if given]
    if len(chosen) != 1:
        _fail("name what to restore: one of --snapshot RUN, --to-time 'YYYY-MM-DD HH:MM:SS+00' or --to-latest"
              + (f" (not {' and '.join(chosen)})" if chosen else ""), 2)
    if snapshot is None:
        if component not in (None, "postgres"):
            _fail(f"{chosen[0]} restores Postgres only (objects and vectors come from backup runs: --snapshot)", 2)
        _restore_to_moment(inventory, host_name, to_time, source, as_json, lock_wait)
        return
    component = component or "all"
    report = _restore_under_lock(
        inventory, host_name, snapshot, component, lock_wait, {"non-empty": 3, "usage": 2},
        lambda stack, app_hosts: run_restore(stack, snapshot, component, force, source, app_hosts=app_hosts))
    if as_json:
        _echo_json(report)
        return
    click.echo(f"restored run {report['run']} ({', '.join(report['components'])}) in {report['restore_s']:.1f}s; "
               f"verified against its manifest; app down for {report['outage_s']:.1f}s")
    kept = (report["components"].get("postgres") or {}).get("kept_previous_as")
    if kept:
        click.echo(f"the previous database is kept as {kept}")
    click.echo("cleanup is paused: no orphan is moved or expired until `govstack cleanup resume`")
    click.echo(report["reconciliation"].get("summary") or report["reconciliation"]["error"])


def _restore_to_moment(inventory: str, host_name: str | None, to_time: str | None, source: str,
                       as_json: bool, lock_wait: float) -> None:
    """`restore --to-time T | --to-latest`: Postgres from pgBackRest (govstack/backup/pitr.py)."""
    from govstack.backup.pitr import parse_target, restore_to

    try:
        target = parse_target(to_time) if to_time is not None else None
    except BackupError as error:
        _fail(str(error), 2)
    what = f"--to-time {to_time}" if to_time is not None else "--to-latest"
    report = _restore_under_lock(
        inventory, host_name, what, "postgres", lock_wait, {"usage": 2},
        lambda stack, app_hosts: restore_to(stack, target, source=source, app_hosts=app_hosts))
    if as_json:
        _echo_json(report)
        return
    recovery = report["recovery"]
    pg = report["components"]["postgres"]
    click.echo(f"restored Postgres to {report['target']} (last commit replayed: "
               f"{recovery.get('last_replayed_commit') or 'none'}; base backup {report['base_backup']}) in "
               f"{report['restore_s']:.1f}s; {pg['table_count']} tables verified against the recovered cluster; "
               f"app down for {report['outage_s']:.1f}s")
    if pg.get("kept_previous_as"):
        click.echo(f"the previous database is kept as {pg['kept_previous_as']}")
    click.echo("cleanup is paused: no orphan is moved or expired until `govstack cleanup resume`")
    click.echo(report["reconciliation"].get("summary") or report["reconciliation"]["error"])


def reconcile_after_restore(inventory: str, host_name: str | None, report: dict) -> dict:
    """Write the reconciliation report of a finished restore. Its failure never fails the restore
    (the data is restored and verified); it says how to write the report again."""
    from govstack.reconcile import ops as reconcile
    from govstack.reconcile.cli import stack_shells
    from govstack.remote import RemoteError

    restore = {"run": report["run"], "components": list(report["components"]),
               "snapshot_time": report.get("snapshot_time"), "started_at": report["started_at"],
               "kept_database": (report["components"].get("postgres") or {}).get("kept_previous_as")}
    try:
        app, data = stack_shells(inventory, host_name)
        collected = reconcile.collect_reconciliation(app, data, restore)
        paths = reconcile.write_reconciliation(data, collected, report["started_at"])
    except (RemoteError, OSError) as error:
        return {"error": f"the reconciliation report could not be written ({error}); "
                         "`govstack reconcile report` writes one"}
    return {"json": paths[0], "text": paths[1], "counts": collected["counts"],
            "summary": reconcile.summary_line(collected, paths)}


def _restore_under_lock(inventory: str, host_name: str | None, what: str, component: str, lock_wait: float,
                        exit_codes: dict[str, int], run: Callable[[Any, list], dict]) -> dict:
    """Every restore's frame (of a run or to a moment): the stack lock on every host, an earlier
    interrupted restore reported, the attempt in every host's ledger (the restore stops writers on
    every app host; a crash leaves the attempt for the next command), the outcome ledgered, then
    the reconciliation report. ``run(stack, other app hosts)`` restores and returns the report;
    a BackupError exits with ``exit_codes[kind]`` (1 otherwise)."""
    hosts = inventory_hosts(inventory)
    stack = stack_for(inventory, host_name, hosts)
    with command_lock(hosts, f"restore {what}", lock_wait):
        for line in report_interrupted(hosts, "restore"):
            click.echo(f"govstack: {line}", err=True)
        for entry in hosts:
            begin_attempt(entry, "restore", what)
        started = time.monotonic()
        try:
            report = run(stack, other_app_hosts(hosts, stack))
        except BackupError as error:
            _ledger_restore(hosts, what, component, started, str(error))
            _fail(str(error), exit_codes.get(error.kind, 1))
        _ledger_restore(hosts, report["run"], component, started, None)
        report["reconciliation"] = reconcile_after_restore(inventory, host_name, report)
    return report


def _ledger_restore(hosts, run: str, component: str, started: float, cause: str | None) -> None:
    for entry in hosts:
        append_outcome(entry, "restore", run, 1 if cause else 0, cause, round(time.monotonic() - started, 1),
                       component=component)
        end_attempt(entry)


@click.command()
@inventory_option
@host_option
@click.option("--json", "as_json", is_flag=True, help="print the evidence as JSON")
@lock_wait_option
def drill(inventory: str, host_name: str | None, as_json: bool, lock_wait: float) -> None:
    """Disaster-recovery drill: back up, destroy the data, restore, prove equality, write evidence."""
    hosts = inventory_hosts(inventory)
    stack = stack_for(inventory, host_name, hosts)
    try:
        with command_lock(hosts, "drill", lock_wait):
            evidence = run_drill(stack)
    except BackupError as error:
        _fail(str(error))
    if as_json:
        _echo_json(evidence)
        return
    t = evidence["timings"]
    targets = evidence["objectives"]
    click.echo(f"drill {evidence['drill_id']}: PASS; RTO {t['rto_s']:.1f}s of {targets['rto']['target_s']}s "
               f"(restore {t['restore_s']:.1f}s), RPO at worst {targets['rpo']['worst_case_s']:.0f}s of "
               f"{targets['rpo']['target_s']}s, data age {evidence['rpo']['data_age_s']:.1f}s; "
               f"evidence: {', '.join(evidence['files'])}")
    offsite = sorted({f["offsite_repository"] for f in evidence.get("filed", []) if f.get("offsite")})
    click.echo(f"evidence filed in the backup repository{' and offsite in ' + ', '.join(offsite) if offsite else ''}"
               " (restic snapshots --tag evidence)")
    click.echo(f"the destroyed data directories were moved to {evidence['set_aside']} (delete them when done)")


@click.group()
def _standalone() -> None:
    """The backup commands alone (the main CLI registers them too)."""


_standalone.add_command(backup)
_standalone.add_command(restore)
_standalone.add_command(drill)

if __name__ == "__main__":
    _standalone(prog_name=f"{sys.executable} -m govstack.backup.cli")
