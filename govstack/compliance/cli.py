"""`govstack audit-retention`, `govstack access-review`, `govstack report
residency|storage|counts|privacy|logs|sbom` (registered on the main CLI by govstack/cli.py;
``python -m govstack.compliance`` runs them alone). Every command works
against any inventory host, local or over SSH."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext

import click

from govstack import sbom
from govstack.compliance.ops import (
    ACCESS_REVIEW_SQL,
    ComplianceError,
    ComplianceHost,
    access_review_path,
    apply_storage,
    collect_counts,
    collect_privacy,
    collect_storage,
    render_privacy,
    render_residency,
    render_storage,
    residency_facts,
    residency_report,
    run_audit_retention,
    write_access_review,
)
from govstack.compliance.sbom import collect as collect_sboms
from govstack.inventory import InventoryError, InventoryHost, load_inventory
from govstack.lock import command_lock, lock_wait_option, operator
from govstack.logs import search as log_search
from govstack.settings import SettingsError

DEFAULT_INVENTORY = "inventories/local.py"


def _hosts(inventory: str, host_name: str | None) -> list[InventoryHost]:
    try:
        hosts = load_inventory(inventory)
    except (InventoryError, SettingsError) as error:
        _fail(str(error), 2)
    chosen = [h for h in hosts if host_name in (None, h.name)]
    if not chosen:
        _fail(f"no host {host_name!r} in {inventory}", 2)
    return chosen


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"govstack: {message}", err=True)
    raise SystemExit(code)


inventory_option = click.option("-i", "--inventory", default=DEFAULT_INVENTORY, show_default=True,
                                help="pyinfra inventory file")
host_option = click.option("--host", "host_name", default=None, help="one inventory host (default: every host)")


def _shells(inventory: str, host_name: str | None) -> list[ComplianceHost]:
    return [ComplianceHost(entry) for entry in _hosts(inventory, host_name)]


def _stack_shells(inventory: str, host_name: str | None) -> list[ComplianceHost]:
    """One shell per stack: each all-in-one host, or a split inventory's data host, whose
    app commands (cleanup, the Chroma listing) run on its first app host; --host names the
    data host then."""
    from govstack.roles import ALL_ROLES, TopologyError, plan_fields_for_entry

    hosts = _hosts(inventory, None)
    try:
        roles = {h.name: plan_fields_for_entry(h, hosts).get("roles", ALL_ROLES) for h in hosts}
    except TopologyError as error:
        _fail(str(error), 2)
    if all({"data", "app"} <= roles[h.name] for h in hosts):
        return _shells(inventory, host_name)
    data = [h for h in hosts if "data" in roles[h.name] and host_name in (None, h.name)]
    app = [h for h in hosts if "app" in roles[h.name]]
    if not data or not app:
        _fail(f"no {'data' if not data else 'app'} host{' named ' + host_name if host_name else ''} in {inventory}", 2)
    return [ComplianceHost(data[0], app_entry=app[0])]


@click.command("audit-retention")
@inventory_option
@host_option
@click.option("--months", type=int, default=None,
              help="retention for this run (default: compliance.audit_retention_months)")
@click.option("--dry-run", is_flag=True, help="list what would be dropped, drop nothing")
@click.option("--json", "as_json", is_flag=True)
@lock_wait_option
def audit_retention(inventory: str, host_name: str | None, months: int | None, dry_run: bool, as_json: bool,
                    lock_wait: float) -> None:
    """Drop audit_logs partitions older than the retention (never below the floor)."""
    hosts = _hosts(inventory, None)
    shells = [ComplianceHost(entry) for entry in hosts if host_name in (None, entry.name)]
    if not shells:
        _fail(f"no host {host_name!r} in {inventory}", 2)
    reports = []
    # A dry run changes nothing and takes no lock.
    with nullcontext() if dry_run else command_lock(hosts, "audit-retention", lock_wait):
        for shell in shells:
            try:
                reports.append((shell, run_audit_retention(shell, months, dry_run, actor=f"operator:{operator()}")))
            except ComplianceError as error:
                _fail(str(error), 2 if "refusing" in str(error) else 1)
    for shell, report in reports:
        if as_json:
            click.echo(json.dumps({"host": shell.name, **report}, sort_keys=True))
            continue
        verb = "would drop" if dry_run else "dropped"
        dropped = ", ".join(f"{d['name']} ({d['rows']} rows)" for d in report.get("dropped", [])) or "nothing"
        click.echo(f"{shell.name}: retention {report.get('retention_months')} months (floor "
                   f"{report.get('floor_months')}), cutoff {str(report.get('cutoff', ''))[:19]}: {verb} {dropped}; "
                   f"kept {len(report.get('kept', []))} partitions")


@click.command("access-review")
@inventory_option
@host_option
@click.option("-o", "--output", default=None,
              help="file on the host (default <reports_dir>/access-review-<date>.csv), or - for stdout")
def access_review(inventory: str, host_name: str | None, output: str | None) -> None:
    """The API keys as CSV: name, role, collections (scope), created by, created, last used, active, revoked."""
    for shell in _stack_shells(inventory, host_name):
        try:
            if output == "-":
                click.echo(shell.psql(ACCESS_REVIEW_SQL, shell.settings.postgres.database, csv=True), nl=False)
                continue
            path = output or access_review_path(shell.settings)
            count = write_access_review(shell, path)
        except ComplianceError as error:
            _fail(str(error))
        click.echo(f"{shell.name}: {count} API keys written to {path} (mode 0600, on the host)")


@click.group("report")
def report_group() -> None:
    """Operator reports: residency, storage, privacy, counts, quarantine, sbom."""


@report_group.command("residency")
@inventory_option
@host_option
@click.option("--json", "as_json", is_flag=True)
def report_residency(inventory: str, host_name: str | None, as_json: bool) -> None:
    """Where each kind of data lives and what is encrypted at rest."""
    reports = []
    for entry in _hosts(inventory, host_name):
        try:
            facts = residency_facts(ComplianceHost(entry))
        except Exception as error:  # noqa: BLE001 - an unreachable host still gets its settings-based report
            facts = {"disk_error": str(error), "bucket_sse_error": str(error)}
        reports.append(residency_report(entry, facts))
    click.echo(json.dumps(reports, indent=2) if as_json else render_residency(reports))


@report_group.command("storage")
@inventory_option
@host_option
@click.option("--apply", is_flag=True,
              help="move orphan objects to the quarantine (nothing changes without it; vectors are never deleted)")
@click.option("--drop-leftovers", is_flag=True,
              help="with --apply: also drop databases, collections and directories kept by restores and drills")
@click.option("--min-age", type=float, default=None,
              help="only objects older than this many seconds count as orphans (in-flight uploads are younger); "
                   "default app.orphan_min_age_s")
@click.option("--json", "as_json", is_flag=True)
@lock_wait_option
def report_storage(inventory: str, host_name: str | None, apply: bool, drop_leftovers: bool,
                   min_age: float | None, as_json: bool, lock_wait: float) -> None:
    """Table and index sizes, audit partitions, orphans and leftovers; --apply quarantines orphans."""
    if drop_leftovers and not apply:
        _fail("--drop-leftovers needs --apply", 2)
    # --apply moves objects and may drop leftovers: under the stack lock; the report alone reads only.
    with command_lock(_hosts(inventory, None), "report storage --apply", lock_wait) if apply else nullcontext():
        _report_storage(inventory, host_name, apply, drop_leftovers, min_age, as_json)


def _report_storage(inventory: str, host_name: str | None, apply: bool, drop_leftovers: bool,
                    min_age: float | None, as_json: bool) -> None:
    for shell in _stack_shells(inventory, host_name):
        age = shell.settings.app.orphan_min_age_s if min_age is None else min_age
        try:
            report = collect_storage(shell, age)
            if apply:
                report["applied"] = apply_storage(shell, report, drop_leftovers)
                report["after"] = collect_storage(shell, age)
        except ComplianceError as error:
            _fail(str(error))
        if as_json:
            click.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
            continue
        click.echo(render_storage(report))
        if apply:
            done = report["applied"]
            click.echo(f"applied: {done['orphan_objects_quarantined']} orphan objects moved to the quarantine"
                       + (" (none: cleanup is paused since a restore)" if done.get("cleanup_paused") else "")
                       + (f"; leftovers removed: {json.dumps(done['leftovers_removed'])}"
                          if "leftovers_removed" in done else ""))


@report_group.command("privacy")
@inventory_option
@host_option
@click.option("--since", default="1970-01-01", show_default=True,
              help="first budget period to include (YYYY-MM-DD, UTC)")
@click.option("--json", "as_json", is_flag=True)
def report_privacy(inventory: str, host_name: str | None, since: str, as_json: bool) -> None:
    """The analytics privacy ledger: budget spent per consumer, each release's parameters."""
    from datetime import date

    try:
        date.fromisoformat(since)
    except ValueError:
        _fail(f"--since {since!r} is not a date (YYYY-MM-DD)", 2)
    for shell in _stack_shells(inventory, host_name):
        try:
            report = collect_privacy(shell, since)
        except ComplianceError as error:
            _fail(str(error))
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=str) if as_json else render_privacy(report))


@report_group.command("counts")
@inventory_option
@host_option
def report_counts(inventory: str, host_name: str | None) -> None:
    """Rows per table, objects per bucket, vectors per collection (JSON), to compare two copies."""
    out = {}
    for shell in _stack_shells(inventory, host_name):
        try:
            out[shell.name] = collect_counts(shell)
        except ComplianceError as error:
            _fail(str(error))
    click.echo(json.dumps(out if len(out) != 1 else next(iter(out.values())), indent=2, sort_keys=True))


@report_group.command("logs")
@inventory_option
@host_option
@click.option("--since", required=True, help="how far back: 30m, 2h, 7d, 1h30m (the kept daily files, UTC)")
@click.option("--service", "services", multiple=True,
              help="a Compose service (nginx, api, worker, ...); repeat for several (default: every one)")
@click.option("--request-id", default=None, help="only the lines of this request (nginx' $request_id, "
                                                 "the app's X-Request-ID)")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="at most this many lines (the newest)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def report_logs(inventory: str, host_name: str | None, since: str, services: tuple[str, ...],
                request_id: str | None, limit: int, as_json: bool) -> None:
    """Find lines in the kept container logs (<stack_root>/logs), e.g. one request across nginx, api and worker."""
    from datetime import UTC, datetime

    try:
        span = log_search.parse_duration(since)
        wanted = [log_search.check_service(name) for name in services]
        rid = log_search.check_request_id(request_id) if request_id is not None else None
    except log_search.LogSearchError as error:
        _fail(str(error), 2)
    now = datetime.now(UTC)
    start = now - span
    days = log_search.days_between(start, now)
    for shell in _shells(inventory, host_name):
        if not shell.settings.logs.enabled:
            click.echo(f"govstack: {shell.name}: logs.enabled is false: no container logs are kept", err=True)
            continue
        command = log_search.read_command(shell.settings.paths.logs_dir, wanted, days, rid)
        try:
            result = shell.sh(command, timeout=600, check=True)
        except ComplianceError as error:
            _fail(str(error))
        found = log_search.search(result.stdout.splitlines(), since=start, services=wanted, request_id=rid)
        entries = found.entries[-limit:]
        for entry in entries:
            record = {"host": shell.name, **entry.as_dict()}
            click.echo(json.dumps(record, default=str) if as_json else log_search.render(entry))
        dropped = len(found.entries) - len(entries)
        click.echo(f"{shell.name}: {len(entries)} lines" + (f" (the newest; {dropped} older not shown)"
                   if dropped else "") + (f"; {found.skipped} unreadable lines skipped" if found.skipped else ""),
                   err=True)


@report_group.command("sbom")
@inventory_option
@host_option
@click.option("--image", "image", default=None, help="one image's SBOM as stored in it, e.g. govstack/postgres:15")
@click.option("--summary", is_flag=True, help="image<TAB>type:name@version lines instead of CycloneDX JSON")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default="-", show_default=True,
              help="file on this machine, or - for stdout")
def report_sbom(inventory: str, host_name: str | None, image: str | None, summary: bool, output: str) -> None:
    """CycloneDX SBOMs of the stack's offline images, checked against their labels."""
    collected: dict[tuple[str, str], sbom.ImageSbom] = {}
    texts: dict[str, str] = {}
    without: dict[str, list[str]] = {}
    shells = _shells(inventory, host_name)
    for shell in shells:
        try:
            for tag, image_id, labels, text in collect_sboms(shell, image):
                if text is None:
                    without.setdefault(tag, []).append(shell.name)
                    continue
                document = sbom.checked_sbom(tag, labels, text)
                entry = collected.setdefault((tag, image_id), sbom.ImageSbom(tag, image_id, labels, document, []))
                entry.hosts.append(shell.name)
                texts.setdefault(tag, text)
        except (ComplianceError, sbom.SbomError) as error:
            _fail(str(error))
    for tag in sorted(without):
        click.echo(f"govstack: {tag} (on {', '.join(without[tag])}) carries no SBOM: built before SBOMs or "
                   "an immutable app release built before them; the next build of it gets one", err=True)
    if image is not None:
        if not collected:
            _fail(f"{image} carries no SBOM (label {sbom.SBOM_SHA_LABEL} or file {sbom.SBOM_PATH} missing)")
        if len({key for key in collected if key[0] == image}) > 1:
            _fail(f"{image} differs between hosts: {', '.join(sorted(h for e in collected.values() for h in e.hosts))}"
                  " (report each with --host)")
    entries = list(collected.values())
    if summary:
        result = sbom.summary(entries, sorted(without))
    elif image is not None:
        result = texts[image]
    else:
        result = sbom.dumps(sbom.combined_document(shells[0].settings.project, entries, missing=without))
    if output == "-":
        sys.stdout.write(result)
        return
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(result)
    written = sorted({tag for tag, _ in collected})
    click.echo(f"{len(written)} image SBOMs written to {output}: {', '.join(written)}", err=True)


def register(main_group: click.Group) -> None:
    """Add audit-retention, access-review and report (residency, storage, privacy, counts, sbom) to the main CLI."""
    main_group.add_command(audit_retention)
    main_group.add_command(access_review)
    main_group.add_command(report_group)


@click.group()
def _standalone() -> None:
    """The compliance commands alone (the main CLI registers them too)."""


register(_standalone)

def standalone() -> None:
    _standalone(prog_name=f"{sys.executable} -m govstack.compliance")
