"""After a restore: pause the cleanup, report what to reconcile (the functions of a StackHost; the
commands are in cli.py).

A restore to an older snapshot leaves objects that no document row names (everything uploaded
since the snapshot, when Postgres is restored alone), rows whose object is missing, and a kept
``<database>_pre_restore_<time>`` that still knows the newer documents. The app's hourly cleanup
would take those objects for orphans, so:

- ``pause_cleanup`` sets the app's ``cleanup_paused`` flag (app_state) in the database *before* the
  restore touches data, and again in the restored database before it is swapped in. The worker
  moves and expires nothing while it is set (app/govstack_app/services/maintenance.py).
- ``collect_reconciliation`` lists objects without rows, rows without objects and the documents
  newer than the snapshot (from the kept database); ``write_reconciliation`` writes it as JSON and
  Markdown (0600) under the reports directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from govstack.commands import SUPERUSER, last_json
from govstack.remote import StackHost

# The app's flag (govstack_app.quarantine.PAUSE_KEY): present = every automatic cleanup is paused.
PAUSE_KEY = "cleanup_paused"
# How many entries of each list the readable report shows (the JSON has them all).
TEXT_LIMIT = 200


# == the pause flag, written as the superuser (the app may be stopped; the scratch database is not
# the app's yet) =================================================================================
def pause_record(*, run: str, components: tuple[str, ...] | list[str], operator: str,
                 report: str | None = None, when: datetime | None = None) -> dict[str, Any]:
    return {
        "since": (when or datetime.now(UTC)).isoformat(timespec="seconds"),
        "by": operator,
        "reason": f"restore of backup run {run} ({', '.join(components)})",
        "run": run,
        "components": list(components),
        **({"report": report} if report else {}),
    }


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_PAUSE_SQL = (
    "SELECT CASE WHEN to_regclass('public.app_state') IS NULL THEN 'absent' ELSE 'set' END;\n"  # noqa: S608
    "SELECT set_config('govstack.pause_value', {value}, false);\n"
    "DO $$ BEGIN IF to_regclass('public.app_state') IS NOT NULL THEN "
    "INSERT INTO public.app_state (key, value, updated_at) "
    f"VALUES ('{PAUSE_KEY}', current_setting('govstack.pause_value'), now()) "
    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now(); END IF; END $$;"
)
_PAUSED_SQL = ("SELECT CASE WHEN to_regclass('public.app_state') IS NULL THEN NULL ELSE "  # noqa: S608
               f"(SELECT value FROM public.app_state WHERE key = '{PAUSE_KEY}') END")


def pause_sql(record: dict[str, Any]) -> str:
    """Set the flag where the app's schema is; a database without it (an empty one, before the
    restore fills it) answers ``absent``. The value travels as one escaped literal (set_config),
    never inside the DO block's dollar quotes."""
    return _PAUSE_SQL.format(value=_literal(json.dumps(record, sort_keys=True)))


def _database_exists(psql: Callable[[str, str], str], database: str) -> bool:
    return bool(psql(f"SELECT 1 FROM pg_database WHERE datname = {_literal(database)}", SUPERUSER).strip())  # noqa: S608


def pause_cleanup(psql: Callable[[str, str], str], database: str, record: dict[str, Any]) -> bool:
    """True when ``database`` now carries the flag; False when it has no app schema (yet)."""
    if not _database_exists(psql, database):
        return False
    out = psql(pause_sql(record), database)
    return out.strip().splitlines()[0].strip() == "set" if out.strip() else False


def paused_state(psql: Callable[[str, str], str], database: str) -> dict[str, Any] | None:
    """The flag as the superuser reads it (the app may be stopped)."""
    if not _database_exists(psql, database):
        return None
    out = psql(_PAUSED_SQL, database).strip()
    if not out:
        return None
    try:
        value = json.loads(out)
    except ValueError:
        return {"reason": out}
    return value if isinstance(value, dict) else {"reason": out}


def clear_pause(psql: Callable[[str, str], str], database: str) -> None:
    psql("DO $$ BEGIN IF to_regclass('public.app_state') IS NOT NULL THEN "  # noqa: S608 - constant key
         f"DELETE FROM public.app_state WHERE key = '{PAUSE_KEY}'; END IF; END $$;", database)


# == the reconciliation report ===================================================================
NEWER_DOCUMENTS_SQL = (
    "SELECT d.id, c.name, d.filename, d.object_name, d.size, d.sha256, "
    "to_char(d.upload_date AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
    "FROM documents d JOIN collections c ON c.id = d.collection_id "
    "WHERE d.upload_date > {since}::timestamptz ORDER BY d.upload_date, d.id"
)


def _rows(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line.strip()]


def newer_documents(data: StackHost, database: str, since: str) -> list[dict[str, Any]]:
    rows = _rows(data.psql(NEWER_DOCUMENTS_SQL.format(since=_literal(since)), database))
    return [{"id": int(r[0]), "collection": r[1], "filename": r[2], "object_name": r[3], "size": int(r[4]),
             "sha256": r[5].strip(), "upload_date": r[6]} for r in rows]


def merge_reconciliation(app_view: dict[str, Any], newer: list[dict[str, Any]], *, restore: dict[str, Any] | None,
                         newer_source: str | None) -> dict[str, Any]:
    """The report: the app's view (objects, rows, quarantine) and the documents newer than the
    snapshot, each with where its bytes are now. Pure."""
    without_rows = {o["key"]: o for o in app_view.get("objects_without_rows", [])}
    quarantined = {e["original"]: e["key"] for e in app_view.get("quarantine", [])}
    registered_elsewhere = {r["object_name"] for r in app_view.get("rows_without_objects", [])}
    for doc in newer:
        key = doc["object_name"]
        if key in without_rows:
            doc["object"] = "in the bucket, no row: adopt it"
            hint = without_rows[key]
            hint.setdefault("collection", None)
            if hint["collection"] is None:  # an older upload: its collection is known from the kept database
                hint["collection_in_kept_database"] = doc["collection"]
            if hint.get("filename") is None:
                hint["filename_in_kept_database"] = doc["filename"]
        elif key in quarantined:
            doc["object"] = f"in the quarantine ({quarantined[key]}): adopt it"
        elif key in registered_elsewhere:
            doc["object"] = "missing (a row names it too)"
        else:
            doc["object"] = "registered or missing"
    return {
        "format": 1,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "restore": restore,
        "bucket": app_view.get("bucket"),
        "cleanup_paused": app_view.get("paused"),
        "counts": {
            "objects": app_view.get("objects"),
            "documents": app_view.get("documents"),
            "objects_without_rows": len(without_rows),
            "rows_without_objects": len(app_view.get("rows_without_objects", [])),
            "documents_newer_than_snapshot": len(newer),
            "quarantined": len(app_view.get("quarantine", [])),
        },
        "objects_without_rows": list(without_rows.values()),
        "rows_without_objects": app_view.get("rows_without_objects", []),
        "documents_newer_than_snapshot": newer,
        "documents_newer_source": newer_source,
        "quarantine": app_view.get("quarantine", []),
        "unrecognised_quarantine_keys": app_view.get("unrecognised_quarantine_keys", []),
    }


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def render_reconciliation(report: dict[str, Any]) -> str:
    """The readable report. Pure."""
    counts, restore = report["counts"], report.get("restore") or {}
    lines = ["# Reconciliation report", "", f"Generated {report['generated_at']}, bucket `{report['bucket']}`."]
    if restore:
        lines += ["", f"Restore of backup run **{restore.get('run')}** ({', '.join(restore.get('components', []))}),"
                  f" database snapshot {restore.get('snapshot_time') or 'unknown'}"
                  + (f"; the replaced database is kept as `{restore['kept_database']}`"
                     if restore.get("kept_database") else "") + "."]
    paused = report.get("cleanup_paused")
    lines += ["", ("**Cleanup is paused** since " + str(paused.get("since")) + f" ({paused.get('reason')}): nothing is "
                   "moved to the quarantine or expired until `govstack cleanup resume`.") if paused
              else "Cleanup is running (not paused)."]
    lines += ["", "| what | count |", "| --- | --- |"]
    lines += [f"| {name.replace('_', ' ')} | {value} |" for name, value in counts.items()]

    def section(title: str, items: list[dict[str, Any]], header: str, row: Callable[[dict[str, Any]], str]) -> None:
        lines.extend(["", f"## {title} ({len(items)})", ""])
        if not items:
            lines.append("none")
            return
        lines.extend([header, "| " + " | ".join("---" for _ in header.strip("|").split("|")) + " |"])
        lines.extend(row(item) for item in items[:TEXT_LIMIT])
        if len(items) > TEXT_LIMIT:
            lines.append(f"\n… and {len(items) - TEXT_LIMIT} more (the JSON report has all of them)")

    section("Objects without a document row", report["objects_without_rows"],
            "| key | size | written | collection | filename | note |",
            lambda o: f"| `{o['key']}` | {_size(o['size'])} | {o.get('last_modified') or ''} | "
                      f"{o.get('collection') or o.get('collection_in_kept_database', '?') + ' (kept database)'} | "
                      f"{o.get('filename') or o.get('filename_in_kept_database') or ''} | "
                      f"{'young: maybe an upload in flight' if o.get('young') else ''} |")
    section("Document rows without their object", report["rows_without_objects"],
            "| id | collection | filename | key | uploaded |",
            lambda r: f"| {r['id']} | {r['collection']} | {r['filename']} | `{r['object_name']}` | "
                      f"{r['upload_date']} |")
    section(f"Documents newer than the snapshot (from {report.get('documents_newer_source') or '-'})",
            report["documents_newer_than_snapshot"],
            "| id then | collection | filename | uploaded | bytes now |",
            lambda d: f"| {d['id']} | {d['collection']} | {d['filename']} | {d['upload_date']} | {d['object']} |")
    section("Quarantine", report["quarantine"], "| key | original | quarantined | size |",
            lambda e: f"| `{e['key']}` | `{e['original']}` | {e['quarantined_at']} | {_size(e['size'])} |")
    lines += ["", "## What to do", "",
              "1. Re-register the objects as documents (idempotent; they are queued for indexing):",
              "   `govstack reconcile adopt --all` (or name keys; `--collection NAME` for objects stored before",
              "   uploads recorded their collection: the table above names it from the kept database).",
              "2. Rows without objects: restore the objects (runbooks/restore-objects.md) or delete those documents.",
              "3. Re-enable cleanup: `govstack cleanup resume` (orphans left then go to the quarantine, never deleted",
              "   before the quarantine retention).", ""]
    return "\n".join(lines)


def collect_reconciliation(app: StackHost, data: StackHost, restore: dict[str, Any] | None = None) -> dict[str, Any]:
    app_view = app_json(app, "reconcile")
    newer: list[dict[str, Any]] = []
    source = None
    since = (restore or {}).get("snapshot_time")
    if since:
        kept = restore.get("kept_database") if restore else None
        database = kept or data.settings.postgres.database
        newer = newer_documents(data, database, since)
        source = f"the kept database {kept}" if kept else "the current database"
    return merge_reconciliation(app_view, newer, restore=restore, newer_source=source)


def report_paths(settings: Any, stamp: str) -> tuple[str, str]:
    base = f"{settings.paths.reports_dir}/reconcile-{stamp}"
    return f"{base}.json", f"{base}.md"


def write_reconciliation(data: StackHost, report: dict[str, Any], stamp: str) -> tuple[str, str]:
    """The JSON and the readable report, 0600 in the reports directory of the restored host."""
    json_path, text_path = report_paths(data.settings, stamp)
    data.write_file(json_path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n", mode="600")
    data.write_file(text_path, render_reconciliation(report), mode="600")
    return json_path, text_path


# == the app's commands, through the serving color ===============================================
def app_json(shell: StackHost, *args: str, timeout: int = 1800) -> dict[str, Any]:
    out = shell.app(*args, timeout=timeout)
    answer = last_json(out)
    if not isinstance(answer, dict):
        raise shell.error(f"govstack-app {args[0]} gave no answer: {out[-300:]}")
    if answer.get("ok") is False:
        raise shell.error(f"govstack-app {args[0]}: {answer.get('error')}")
    return answer


def summary_line(report: dict[str, Any], paths: tuple[str, str]) -> str:
    c = report["counts"]
    return (f"reconciliation report: {paths[0]} (readable: {paths[1]}): {c['objects_without_rows']} objects "
            f"without rows, {c['rows_without_objects']} rows without objects, {c['documents_newer_than_snapshot']} "
            f"documents newer than the snapshot, {c['quarantined']} in the quarantine")


def render_quarantine(out: dict[str, Any]) -> str:
    total = out["total"]
    paused = " (cleanup paused: nothing expires)" if out.get("paused") else ""
    lines = [f"quarantine of bucket {out['bucket']}: {total['objects']} objects, {_size(total['bytes'])}; "
             f"kept {out['retention_days']:g} days{paused}"]
    if out["collections"]:
        lines.append(f"  {'collection':32} {'objects':>8} {'bytes':>10}  {'oldest':25} {'newest':25} first expiry")
    for c in out["collections"]:
        lines.append(f"  {c['collection']:32} {c['objects']:>8} {_size(c['bytes']):>10}  {c['oldest']:25} "
                     f"{c['newest']:25} {c['expires']}")
    if out.get("unrecognised_keys"):
        lines.append(f"  {len(out['unrecognised_keys'])} keys under quarantine/ that cleanup did not write "
                     "(never expired): " + ", ".join(out["unrecognised_keys"][:5]))
    return "\n".join(lines)
