"""`govstack cleanup status|pause|resume`, `govstack reconcile report|adopt` and `govstack report
quarantine` (registered on the main CLI by govstack/cli.py). The app's commands run with the
serving color's configuration on the first app host; the Postgres reads on the data host (the same
host unless the inventory is split). What changes state (pause, resume, adopt, writing a report)
takes the stack lock (govstack/lock.py) like every other such command; status, the quarantine
listing and dry runs read only and take none."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

import click

from govstack.inventory import InventoryError, InventoryHost, load_inventory
from govstack.lock import command_lock, lock_wait_option, operator
from govstack.reconcile.ops import (
    app_json,
    collect_reconciliation,
    paused_state,
    render_quarantine,
    summary_line,
    write_reconciliation,
)
from govstack.remote import RemoteError, StackHost, stack_plan, testinfra_host
from govstack.settings import SettingsError

DEFAULT_INVENTORY = "inventories/local.py"


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"govstack: {message}", err=True)
    raise SystemExit(code)


inventory_option = click.option("-i", "--inventory", default=DEFAULT_INVENTORY, show_default=True,
                                help="pyinfra inventory file")
host_option = click.option("--host", "host_name", default=None,
                           help="the data host (default: the inventory's; the only host unless it is split)")


def _shell(entry: InventoryHost) -> StackHost:
    return StackHost(testinfra_host(entry.name, entry.data), stack_plan(entry.settings), name=entry.name)


def inventory_hosts(inventory: str) -> list[InventoryHost]:
    try:
        return load_inventory(inventory)
    except (InventoryError, SettingsError) as error:
        _fail(str(error), 2)
        raise


def locked(hosts: list[InventoryHost], command: str, lock_wait: float, *, dry_run: bool = False
           ) -> AbstractContextManager[object]:
    """The stack lock for a command that changes state; a dry run reads only and takes none."""
    return nullcontext() if dry_run else command_lock(hosts, command, lock_wait)


def stack_shells(inventory: str, host_name: str | None,
                 hosts: list[InventoryHost] | None = None) -> tuple[StackHost, StackHost]:
    """(the host that runs the app, the host that runs Postgres): the same host unless the
    inventory is split; --host names the data host then."""
    from govstack.roles import ALL_ROLES, TopologyError, plan_fields_for_entry

    hosts = hosts if hosts is not None else inventory_hosts(inventory)

    def roles(entry: Any) -> frozenset[str]:
        try:
            return plan_fields_for_entry(entry, hosts).get("roles", ALL_ROLES)
        except TopologyError as error:
            _fail(str(error), 2)
            raise

    chosen = [h for h in hosts if host_name in (None, h.name)]
    data = [h for h in chosen if "data" in roles(h)] or chosen
    app = [h for h in hosts if "app" in roles(h)]
    if not data or not app:
        _fail(f"no {'data' if not data else 'app'} host in {inventory}", 2)
    return _shell(app[0]), _shell(data[0])


def _actor() -> str:
    return f"operator:{operator()}"


@click.group("cleanup")
def cleanup_group() -> None:
    """The app's automatic cleanup: status, pause, resume."""


def _describe_pause(paused: dict[str, Any] | None) -> str:
    if not paused:
        return "cleanup is running (not paused)"
    report = f"; reconciliation report: {paused['report']}" if paused.get("report") else ""
    return f"cleanup is paused since {paused.get('since')} by {paused.get('by', '?')}: {paused.get('reason')}{report}"


@cleanup_group.command("status")
@inventory_option
@host_option
@click.option("--json", "as_json", is_flag=True)
def cleanup_status(inventory: str, host_name: str | None, as_json: bool) -> None:
    """Whether automatic cleanup is paused, since when and why."""
    _, data = stack_shells(inventory, host_name)
    try:
        paused = paused_state(data.psql, data.settings.postgres.database)
    except RemoteError as error:
        _fail(str(error))
    click.echo(json.dumps({"paused": paused}, sort_keys=True) if as_json else _describe_pause(paused))


@cleanup_group.command("pause")
@inventory_option
@host_option
@click.option("--reason", required=True, help="why, for the next operator (shown by status and resume)")
@lock_wait_option
def cleanup_pause(inventory: str, host_name: str | None, reason: str, lock_wait: float) -> None:
    """Pause automatic cleanup by hand (a restore does it by itself)."""
    hosts = inventory_hosts(inventory)
    app, _ = stack_shells(inventory, host_name, hosts)
    try:
        with locked(hosts, "cleanup pause", lock_wait):
            out = app_json(app, "cleanup-state", "pause", "--reason", reason, "--actor", _actor())
    except RemoteError as error:
        _fail(str(error))
    click.echo(_describe_pause(out["paused"]))


@cleanup_group.command("resume")
@inventory_option
@host_option
@click.option("--yes", is_flag=True, help="resume without asking")
@click.option("--dry-run", is_flag=True, help="say what resuming would do, change nothing")
@lock_wait_option
def cleanup_resume(inventory: str, host_name: str | None, yes: bool, dry_run: bool, lock_wait: float) -> None:
    """Say what cleanup will do now, then re-enable it."""
    hosts = inventory_hosts(inventory)
    app, data = stack_shells(inventory, host_name, hosts)
    # What it says and what it resumes are read under the lock: no restore can pause again between.
    with locked(hosts, "cleanup resume", lock_wait, dry_run=dry_run):
        _resume(app, data, yes, dry_run)


def _resume(app: StackHost, data: StackHost, yes: bool, dry_run: bool) -> None:
    try:
        paused = paused_state(data.psql, data.settings.postgres.database)
        plan = app_json(app, "cleanup", "--dry-run")
    except RemoteError as error:
        _fail(str(error))
    if not paused:
        click.echo("cleanup is not paused: nothing to resume")
        return
    orphans, expiring = plan.get("orphan_objects", []), plan.get("would_expire", [])
    click.echo(_describe_pause(paused))
    click.echo(f"Resuming lets the worker's hourly cleanup move {len(orphans)} object(s) without a document row "
               f"(older than {plan['min_age_s']:g} s) to the quarantine, where they are kept "
               f"{plan['retention_days']:g} days and can still be adopted, and delete {len(expiring)} quarantine "
               "entr(ies) past that retention. Nothing else is deleted; vectors are never deleted.")
    for key in orphans[:20]:
        click.echo(f"  to quarantine: {key}")
    if len(orphans) > 20:
        click.echo(f"  … and {len(orphans) - 20} more")
    if dry_run:
        return
    if not yes and not click.confirm("Resume cleanup?", default=False):
        _fail("not resumed", 1)
    try:
        app_json(app, "cleanup-state", "resume", "--actor", _actor())
    except RemoteError as error:
        _fail(str(error))
    click.echo("cleanup resumed")


@click.group("reconcile")
def reconcile_group() -> None:
    """Reconcile objects and document rows (after a restore)."""


@reconcile_group.command("report")
@inventory_option
@host_option
@click.option("--json", "as_json", is_flag=True)
@lock_wait_option
def reconcile_report(inventory: str, host_name: str | None, as_json: bool, lock_wait: float) -> None:
    """Write a reconciliation report now (a restore writes one by itself)."""
    hosts = inventory_hosts(inventory)
    app, data = stack_shells(inventory, host_name, hosts)
    try:
        with locked(hosts, "reconcile report", lock_wait):
            report = collect_reconciliation(app, data)
            paths = write_reconciliation(data, report, datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
    except RemoteError as error:
        _fail(str(error))
    if as_json:
        click.echo(json.dumps({**report, "files": list(paths)}, indent=2, sort_keys=True, default=str))
        return
    click.echo(summary_line(report, paths))


@reconcile_group.command("adopt")
@inventory_option
@host_option
@click.argument("keys", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="every object without a row, and every quarantined one")
@click.option("--collection", default=None, help="for objects whose collection is not recorded in their metadata")
@click.option("--min-age", type=float, default=None,
              help="skip objects younger than this many seconds (default: app.orphan_min_age_s)")
@click.option("--dry-run", is_flag=True, help="say what would be registered, change nothing")
@click.option("--json", "as_json", is_flag=True)
@lock_wait_option
def reconcile_adopt(inventory: str, host_name: str | None, keys: tuple[str, ...], everything: bool,
                    collection: str | None, min_age: float | None, dry_run: bool, as_json: bool,
                    lock_wait: float) -> None:
    """Register orphaned or quarantined objects as documents again, queued for indexing."""
    if not keys and not everything:
        _fail("name the object or quarantine keys to adopt, or --all", 2)
    hosts = inventory_hosts(inventory)
    app, _ = stack_shells(inventory, host_name, hosts)
    args = ["adopt", *keys, "--actor", _actor()]
    args += ["--all"] if everything else []
    args += ["--collection", collection] if collection else []
    args += ["--min-age", f"{min_age:g}"] if min_age is not None else []
    args += ["--dry-run"] if dry_run else []
    try:
        with locked(hosts, "reconcile adopt", lock_wait, dry_run=dry_run):
            out = app_json(app, *args)
    except RemoteError as error:
        _fail(str(error))
    if as_json:
        click.echo(json.dumps(out, indent=2, sort_keys=True, default=str))
        return
    verb = "would register" if dry_run else "registered"
    for item in out["adopted"]:
        click.echo(f"{verb} {item['key']} as {item['collection']}/{item['filename']}"
                   + (f" (document {item['id']}, queued for indexing)" if item.get("id") else ""))
    for item in out["skipped"]:
        click.echo(f"skipped {item['key']}: {item['reason']}")
    click.echo(f"{len(out['adopted'])} {verb}, {len(out['skipped'])} skipped")


@click.command("quarantine")
@inventory_option
@host_option
@click.option("--json", "as_json", is_flag=True)
def report_quarantine(inventory: str, host_name: str | None, as_json: bool) -> None:
    """The quarantine per bucket and collection: objects, bytes, oldest, newest, expiry."""
    app, _ = stack_shells(inventory, host_name)
    try:
        out = app_json(app, "quarantine")
    except RemoteError as error:
        _fail(str(error))
    if as_json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    click.echo(render_quarantine(out))


def register(main_group: click.Group, report_group: click.Group) -> None:
    """`govstack cleanup …`, `govstack reconcile …`, and `quarantine` into the main CLI's `report` group."""
    main_group.add_command(cleanup_group)
    main_group.add_command(reconcile_group)
    report_group.add_command(report_quarantine)
