"""Compliance jobs and operator reports, as functions of a StackHost (local or
over SSH alike; the data stays on that host and only the answers travel):

- audit retention: drop monthly audit_logs partitions older than
  ``compliance.audit_retention_months`` (never below the floor), by running
  ``govstack-app purge-audit-partitions`` with the serving color's
  configuration. The worker runs the same function hourly
  (app/govstack_app/retention.py).
- access review: the API keys as CSV (name, role, collections (the key's
  scope, or * for all), created by, created, last used, active, revoked),
  0600 under the reports directory.
- residency: where each kind of data lives and what is encrypted at rest,
  from the settings plus the few facts only the host knows.
- storage: table and index sizes, audit partitions and when the retention
  drops them, orphan objects and vectors, leftovers of restores and drills;
  applying it moves orphan objects to the quarantine (the app's own cleanup,
  paused after a restore) and deletes no vector.
- counts: rows, objects and vectors, to compare two copies of the data.
- privacy: the analytics service's privacy-budget ledger for auditors: epsilon
  spent per consumer and period, every release with its mechanism's
  parameters, every refusal (read by the analytics service's own role, in its
  container: ``govstack-app privacy-report``).
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from typing import Any

from govstack.catalog import s3_pair
from govstack.commands import SUPERUSER, docker_exec, last_json, printf_lines, psql, q
from govstack.inventory import InventoryHost
from govstack.remote import RemoteError, StackHost, stack_plan, testinfra_host
from govstack.secrets import secret_path
from govstack.settings import Settings
from govstack.settings.catalog import S3_IDENTITIES

# Restores and drills keep what they replace, under these names (govstack/backup).
PRE_RESTORE_DATABASE = "{database}_pre_restore_%"
SCRATCH_DATABASE = "{database}_restore"
PRE_RESTORE_COLLECTION = "__pre_restore_"
DRILL_ASIDE = ".drill-aside"


class ComplianceError(RemoteError):
    """A step failed; the message is for the operator."""


class ComplianceHost(StackHost):
    """The stack on one inventory host, as the compliance commands reach it."""

    error_class = ComplianceError

    def __init__(self, entry: InventoryHost, app_entry: InventoryHost | None = None) -> None:
        self.entry = entry
        super().__init__(testinfra_host(entry.name, entry.data), stack_plan(entry.settings), name=entry.name)
        # A split inventory: this is the data host, and the app's commands run on an app host.
        self.app_host = ComplianceHost(app_entry) if app_entry is not None and app_entry.name != entry.name else None

    def app(self, *args: str, timeout: float = 900) -> str:
        if self.app_host is not None:
            return self.app_host.app(*args, timeout=timeout)
        return super().app(*args, timeout=timeout)

    def app_python(self, script: str, *args: str, timeout: float = 300) -> Any:
        if self.app_host is not None:
            return self.app_host.app_python(script, *args, timeout=timeout)
        return super().app_python(script, *args, timeout=timeout)


def _now() -> datetime:
    return datetime.now(UTC)


# == audit retention ============================================================================
def run_audit_retention(shell: ComplianceHost, months: int | None = None, dry_run: bool = False,
                        actor: str = "operator") -> dict[str, Any]:
    policy = shell.settings.compliance
    months = policy.audit_retention_months if months is None else months
    floor = policy.audit_retention_floor_months
    if months < floor:
        raise ComplianceError(f"refusing a retention of {months} months: the floor is {floor} months "
                              "(compliance.audit_retention_floor_months)")
    args = ["purge-audit-partitions", "--months", str(months), "--floor", str(floor), "--actor", actor]
    out = shell.app(*args, *(["--dry-run"] if dry_run else []))
    report = last_json(out)
    if not isinstance(report, dict):
        raise ComplianceError(f"govstack-app purge-audit-partitions gave no answer: {out[-300:]}")
    if not report.get("ok"):
        raise ComplianceError(f"audit retention failed: {report.get('error')}")
    return report


# == access review ==============================================================================
ACCESS_REVIEW_COLUMNS = ("name", "role", "collections", "created_by", "created", "last_used", "active", "revoked")
# last_used_at is refreshed at most once a minute per key (the app's lookup). collections: the
# key's scope, space-separated, or * for every collection.
ACCESS_REVIEW_SQL = (
    "SELECT name, role, coalesce(array_to_string(collections, ' '), '*') AS collections, "
    "coalesce(created_by, '') AS created_by, "
    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created, "
    "coalesce(to_char(last_used_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '') AS last_used, "
    "CASE WHEN is_active THEN 'true' ELSE 'false' END AS active, "
    "coalesce(to_char(revoked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '') AS revoked "
    "FROM api_keys ORDER BY name"
)


def access_review_path(settings: Settings, when: datetime | None = None) -> str:
    return f"{settings.paths.reports_dir}/access-review-{(when or _now()).strftime('%Y-%m-%d')}.csv"


def write_access_review(shell: ComplianceHost, path: str) -> int:
    """Write the CSV on the host (the key list never leaves it); the number of keys."""
    pg = shell.require_service("postgres")
    directory = path.rsplit("/", 1)[0] or "/"
    export = f"{printf_lines(ACCESS_REVIEW_SQL)} | {docker_exec(pg, *psql(shell.settings.postgres.database, csv=True))}"
    shell.out(
        f"umask 077 && mkdir -p {q(directory)} && chmod 700 {q(directory)} && "
        f"{export} > {q(path + '.partial')} && "
        f"chmod 600 {q(path + '.partial')} && mv {q(path + '.partial')} {q(path)}",
        timeout=300,
    )
    lines = shell.out(f"wc -l < {q(path)}", timeout=30).strip()
    return max(int(lines or 1) - 1, 0)


# == residency ==================================================================================
# Checked on SeaweedFS 4.48 itself: it implements SSE-S3 (a key-encryption key from s3.sse.kek
# or s3.sse.key in security.toml), SSE-C and SSE-KMS; a bucket's default encryption applies
# SSE-S3 to every object written to it. Versioning (PutBucketVersioning) and lifecycle rules
# (PutBucketLifecycleConfiguration) are kept by the gateway; `weed server` does not apply the
# rules itself (the entrypoint runs `weed shell s3.lifecycle.run-shard` daily).
SEAWEEDFS_SSE = (
    "SeaweedFS {version} SSE-S3: each object under its own AES-256 key, wrapped by a key-encryption key derived "
    "(HKDF-SHA256) from the secret s3_sse_key, which is not stored beside the data; objects written before the "
    "bucket's default encryption was set stay unencrypted until rewritten"
)
SEAWEEDFS_NO_SSE = (
    "SeaweedFS {version} implements S3 server-side encryption (SSE-S3), but this bucket has no default encryption, "
    "so its objects are stored unencrypted in the volume files"
)


def _bucket_config_script(settings: Settings) -> tuple[str, tuple[str, ...]]:
    """The backup service's ``bucket-config --check`` with the admin pair on its stdin."""
    o = settings.object_store
    access, secret = s3_pair(settings, "admin")
    argv = ("govstack-backup", "bucket-config", o.bucket, "--noncurrent-days", str(o.noncurrent_version_days),
            "--abort-multipart-days", str(o.abort_multipart_days), "--encrypt", "--check")
    return (f"{{ cat {q(secret_path(settings, access))}; echo; cat {q(secret_path(settings, secret))}; echo; }}",
            argv)


def disk_encryption_fact(shell: ComplianceHost, path: str) -> dict[str, Any]:
    """Whether a dm-crypt (LUKS) device lies under the filesystem that holds ``path``."""
    out = shell.sh(
        f"src=$(findmnt -n -o SOURCE --target {q(path)} | head -n 1); echo \"source=$src\"; "
        "lsblk -n -s -o TYPE \"$src\" 2>/dev/null | tr -d ' ' | sort -u | tr '\\n' ' '", timeout=30,
    ).stdout
    lines = out.strip().splitlines()
    source = lines[0].removeprefix("source=") if lines else ""
    types = lines[1].split() if len(lines) > 1 else []
    return {"source": source, "crypt": "crypt" in types, "types": types}


def residency_facts(shell: ComplianceHost) -> dict[str, Any]:
    """What only the host knows: disk encryption under the data directory, the bucket's default SSE."""
    facts: dict[str, Any] = {}
    try:
        facts["disk"] = disk_encryption_fact(shell, shell.settings.data_dir)
    except ComplianceError as error:
        facts["disk_error"] = str(error)
    s = shell.settings
    if s.object_store.kind == "seaweedfs":
        try:
            keys, argv = _bucket_config_script(s)
            answer = last_json(shell.out(f"{keys} | {docker_exec(shell.require_service('backup'), *argv)}",
                                         timeout=120))
            if not isinstance(answer, dict) or not answer.get("ok"):
                raise ComplianceError(f"bucket-config answered {answer}")
            facts["bucket_sse"] = {"bucket": s.object_store.bucket, "sse": answer.get("encryption"),
                                   "rules": answer.get("rules", {})}
        except ComplianceError as error:
            facts["bucket_sse_error"] = str(error)
    return facts


def _disk(declared: bool | None, facts: dict[str, Any]) -> tuple[str, str]:
    """(yes/no/unknown, how that is known) for the host disk under the data directory."""
    if declared is not None:
        return ("yes" if declared else "no"), "declared in compliance.disk_encrypted"
    disk = facts.get("disk")
    if disk and disk.get("crypt"):
        return "yes", f"dm-crypt (LUKS) under {disk['source']}, detected"
    if disk:
        return "no", (f"no dm-crypt under {disk['source'] or 'the data directory'}, detected; a volume the "
                      "provider encrypts cannot be seen from inside: declare it in compliance.disk_encrypted")
    return "unknown", f"the host could not be asked ({facts.get('disk_error', 'no answer')})"


def residency_report(entry: InventoryHost, facts: dict[str, Any]) -> dict[str, Any]:
    """Where each kind of data lives on one host and what is encrypted at rest. Pure: settings + facts."""
    s = entry.settings
    policy = s.compliance
    plan = stack_plan(s)
    disk_state, disk_how = _disk(policy.disk_encrypted, facts)
    disk = f"{disk_state} (host disk)"
    backup = s.backup
    backup_root = s.paths.backups_dir
    items: list[dict[str, str]] = [
        {"data": "document records, API keys (hashed), audit log, text chunks", "store": "PostgreSQL",
         "where": plan.data_path("postgres"), "encrypted_at_rest": disk,
         "note": "PostgreSQL has no built-in encryption at rest"},
    ]
    if s.analytics.enabled:
        items.append({"data": "usage events (pseudonymous actor, minute, collection, latency and score buckets; "
                      "no query text, no key name), analytics releases and the privacy ledger",
                      "store": "PostgreSQL (schema analytics)", "where": plan.data_path("postgres"),
                      "encrypted_at_rest": disk,
                      "note": f"events deleted after {s.analytics.events_retention_days} days; released only as "
                      "differentially private aggregates (runbooks/privacy-analytics.md)"})
    if s.object_store.kind == "seaweedfs":
        sse = facts.get("bucket_sse")
        encrypted = bool(sse and sse.get("sse"))
        if encrypted:
            objects = f"yes: bucket default {sse['sse']} (SeaweedFS SSE-S3)"
        else:
            objects = "no SSE"
            if "bucket_sse_error" in facts:
                objects += f" (the bucket could not be asked: {facts['bucket_sse_error']})"
        o = s.object_store
        versions = (f"versioned: earlier versions of overwritten or deleted objects kept {o.noncurrent_version_days} "
                    f"days, incomplete uploads aborted after {o.abort_multipart_days} days")
        items.append({"data": "original files (objects)", "store": f"SeaweedFS {s.images.seaweedfs_version} S3",
                      "where": plan.data_path("seaweedfs"), "encrypted_at_rest": f"{objects}; {disk}",
                      "note": f"bucket {o.bucket}, {versions}; "
                      + (SEAWEEDFS_SSE if encrypted else SEAWEEDFS_NO_SSE).format(version=s.images.seaweedfs_version)})
    else:
        items.append({"data": "original files (objects)", "store": "external S3 endpoint",
                      "where": f"{s.object_store.endpoint} bucket {s.object_store.bucket}",
                      "encrypted_at_rest": "as the external store is configured (not managed here)", "note": ""})
    items += [
        {"data": "embeddings and chunk text", "store": f"Chroma {s.images.chroma_version}",
         "where": plan.data_path("chroma"), "encrypted_at_rest": disk, "note": "SQLite and HNSW files"},
    ]
    if backup.enabled:
        items.append({"data": "backups: database dump, every object, every vector; each release's pre-deploy "
                      "copy of the database", "store": "restic repository",
                      "where": f"{backup_root}/restic", "encrypted_at_rest": "yes, always: restic encrypts every "
                      "blob (AES-256-CTR + Poly1305-AES)",
                      "note": "its key is the secret restic_password on the same host: keep a copy off the host"})
        offsite = backup.offsite
        if offsite is not None:
            items.append({"data": "offsite copy of the backups", "store": "restic repository on S3",
                          "where": f"{offsite.endpoint}/{offsite.bucket}/{offsite.prefix}",
                          "encrypted_at_rest": "yes, always (restic)", "note": f"region {offsite.region}"})
        items.append({"data": "drill evidence (checksums, top-k search answers with text)", "store": "files",
                      "where": f"{backup_root}/evidence", "encrypted_at_rest": disk, "note": ""})
    items += [
        {"data": "old pre-deploy database dumps, if any", "store": "pg_dump files, mode 0600",
         "where": s.paths.pre_deploy_dumps, "encrypted_at_rest": disk,
         "note": "plain pg_dump, not encrypted by the stack; nothing writes here since pre-deploy copies go to "
                 "restic: delete them once no longer needed"},
        {"data": "secrets (passwords, keys)", "store": "files, mode 0600", "where": s.secrets_dir,
         "encrypted_at_rest": disk, "note": "readable by root on the host"},
        {"data": "access reviews", "store": "CSV files, mode 0600", "where": s.paths.reports_dir,
         "encrypted_at_rest": disk, "note": ""},
        {"data": "container logs (request ids, client addresses, no document content)", "store": "json-file",
         "where": s.logs.docker_containers_dir, "encrypted_at_rest": disk,
         "note": f"rotated at {s.engine.log_max_size} x {s.engine.log_max_file}"},
    ]
    if s.logs.enabled:
        items.append({"data": "container logs kept for audit (the same lines)",
                      "store": "gzip JSON lines, one file per service and UTC day, root only (0640 in 0750)",
                      "where": s.paths.logs_dir, "encrypted_at_rest": disk,
                      "note": f"kept {s.logs.retention_days} days (logs.retention_days), written by rsyslog"})
    if s.monitoring.enabled:
        items.append({"data": "metrics (no document content)", "store": "Prometheus",
                      "where": plan.data_path("prometheus"), "encrypted_at_rest": disk,
                      "note": f"kept {s.monitoring.retention_time}"})
    return {
        "host": entry.name,
        "groups": list(entry.groups),
        "location": policy.location,
        "project": s.project,
        "host_disk_encrypted": disk_state,
        "host_disk_evidence": disk_how,
        "items": items,
        "s3_identities": s3_identities(s),
        "in_transit": (f"clients reach the edge over TLS only ({s.public_url}); inside the host, services talk "
                       f"in plaintext over the internal Docker network {plan.networks['data']} (no route out)"),
    }


def s3_identities(s: Settings) -> list[dict[str, Any]]:
    """Who may do what in the stack's S3 gateway (settings.catalog.S3_IDENTITIES)."""
    if s.object_store.kind != "seaweedfs":
        return [{"name": "app", "actions": "as the external store grants the supplied key pair",
                 "used_by": "the app, the backup job and `govstack restore`",
                 "secrets": "s3_access_key, s3_secret_key"}]
    return [{"name": i.name, "actions": ", ".join(i.actions_for(s.object_store.bucket)),
             "used_by": S3_IDENTITY_USERS[i.name], "secrets": f"{i.access_key}, {i.secret_key}"}
            for i in S3_IDENTITIES]


S3_IDENTITY_USERS = {
    "app": "the API and the worker",
    "backup": "the backup service (every run)",
    "restore": "`govstack restore` only (mounted into its one-off container)",
    "admin": "the deploy's bucket setup only (passed on stdin, mounted nowhere)",
}


def render_residency(reports: list[dict[str, Any]]) -> str:
    lines = ["# Data residency and encryption at rest", ""]
    for r in reports:
        lines += [f"## {r['host']} ({r['location']})", "",
                  f"Stack `{r['project']}`" + (f", groups {', '.join(r['groups'])}" if r["groups"] else "") + ".",
                  "", f"Host disk under the data directory encrypted: **{r['host_disk_encrypted']}** "
                  f"({r['host_disk_evidence']}). Data marked \"(host disk)\" is encrypted at rest only if the host "
                  "disk is.",
                  "", "| data | store | where | encrypted at rest | note |", "| --- | --- | --- | --- | --- |"]
        for item in r["items"]:
            lines.append(f"| {item['data']} | {item['store']} | `{item['where']}` | {item['encrypted_at_rest']} | "
                         f"{item['note']} |")
        lines += ["", "S3 identities (each refused outside its actions; monitoring has none):", "",
                  "| identity | actions | used by | secrets |", "| --- | --- | --- | --- |"]
        lines += [f"| {i['name']} | {i['actions']} | {i['used_by']} | {i['secrets']} |"
                  for i in r.get("s3_identities", [])]
        lines += ["", f"In transit: {r['in_transit']}.", ""]
    return "\n".join(lines)


# == storage ====================================================================================
STORAGE_TABLES_SQL = """
SELECT c.relname,
       CASE WHEN c.relkind = 'p' THEN 'partitioned' WHEN c.relispartition THEN 'partition' ELSE 'table' END,
       greatest(c.reltuples, 0)::bigint,
       coalesce((SELECT sum(pg_table_size(t.relid)) FROM pg_partition_tree(c.oid) t), 0)::bigint,
       coalesce((SELECT sum(pg_indexes_size(t.relid)) FROM pg_partition_tree(c.oid) t), 0)::bigint,
       coalesce((SELECT sum(pg_total_relation_size(t.relid)) FROM pg_partition_tree(c.oid) t), 0)::bigint
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
 ORDER BY 6 DESC, 1
"""
STORAGE_INDEXES_SQL = """
SELECT s.indexrelname, s.relname, pg_relation_size(s.indexrelid)::bigint, s.idx_scan
  FROM pg_stat_user_indexes s
 WHERE s.schemaname = 'public'
 ORDER BY 3 DESC, 1
"""
PARTITIONS_SQL = """
SELECT c.relname,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz,
       greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid)::bigint
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'audit_logs'::regclass
 ORDER BY 2 NULLS FIRST, 1
"""

_CHROMA_SCRIPT = r"""
import json, os, sys
import httpx
base = ("http://%s:%s/api/v2/tenants/default_tenant/databases/default_database/collections"
        % (os.environ["GOVSTACK_CHROMA_HOST"], os.environ["GOVSTACK_CHROMA_PORT"]))
with httpx.Client(timeout=60) as http:
    if sys.argv[1] == "list":
        out, offset = [], 0
        while True:
            page = http.get(base, params={"limit": 100, "offset": offset})
            page.raise_for_status()
            for c in page.json():
                count = http.get("%s/%s/count" % (base, c["id"]))
                count.raise_for_status()
                out.append({"name": c["name"], "count": count.json()})
            if len(page.json()) < 100:
                break
            offset += 100
        print(json.dumps(out))
    else:
        for name in sys.argv[2:]:
            http.delete("%s/%s" % (base, name)).raise_for_status()
        print(json.dumps({"deleted": sys.argv[2:]}))
"""


def _rows(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line.strip()]


def add_months(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    return moment.replace(year=year, month=month + 1, day=min(moment.day, calendar.monthrange(year, month + 1)[1]))


def partition_status(partitions: list[dict[str, Any]], now: datetime, months: int) -> list[dict[str, Any]]:
    """Each audit partition with the moment the retention drops it (its upper bound + the retention)."""
    out = []
    for p in partitions:
        upper = p.get("to")
        drop_at = add_months(upper, months) if upper else None
        status = ("current or future" if upper is None or upper > now
                  else "due: the next retention run drops it" if drop_at <= now
                  else "closed: an archival candidate until the retention drops it")
        out.append({**p, "from": p["from"].isoformat() if p.get("from") else None,
                    "to": upper.isoformat() if upper else None,
                    "dropped_after": drop_at.isoformat() if drop_at else None, "status": status})
    return out


def _ts(text: str) -> datetime | None:
    return datetime.fromisoformat(text.replace(" ", "T")).astimezone(UTC) if text else None


def collect_storage(shell: ComplianceHost, min_age_s: float) -> dict[str, Any]:
    s = shell.settings
    policy = s.compliance
    db = s.postgres.database
    tables = [{"name": r[0], "kind": r[1], "rows_estimate": int(r[2]), "table_bytes": int(r[3]),
               "index_bytes": int(r[4]), "total_bytes": int(r[5])} for r in _rows(shell.psql(STORAGE_TABLES_SQL, db))]
    indexes = [{"name": r[0], "table": r[1], "bytes": int(r[2]), "scans": int(r[3])}
               for r in _rows(shell.psql(STORAGE_INDEXES_SQL, db))]
    now = _now()
    partitions = partition_status(
        [{"name": r[0], "from": _ts(r[1]), "to": _ts(r[2]), "rows_estimate": int(r[3]), "bytes": int(r[4])}
         for r in _rows(shell.psql(PARTITIONS_SQL, db))], now, policy.audit_retention_months)
    database_bytes = int(shell.psql(f"SELECT pg_database_size('{db}')", db).strip() or 0)  # noqa: S608 - validated name
    orphans = last_json(shell.app("cleanup", "--dry-run", "--vectors", "--min-age", str(min_age_s)))
    if not isinstance(orphans, dict):
        raise ComplianceError("govstack-app cleanup --dry-run gave no answer")
    known = {r[0] for r in _rows(shell.psql("SELECT chroma_name FROM collections", db))}
    collections = shell.app_python(_CHROMA_SCRIPT, "list") or []
    leftover_dbs = [{"name": r[0], "bytes": int(r[1])} for r in _rows(shell.psql(
        "SELECT datname, pg_database_size(datname) FROM pg_database "  # noqa: S608 - validated name
        f"WHERE datname LIKE '{PRE_RESTORE_DATABASE.format(database=db)}' "
        f"OR datname = '{SCRATCH_DATABASE.format(database=db)}' ORDER BY 1", SUPERUSER))]
    aside = f"{s.data_dir}/{DRILL_ASIDE}"
    drill_dirs = [{"path": r[1], "bytes": int(r[0])} for r in _rows(shell.out(
        f"[ -d {q(aside)} ] && du -sb {q(aside)}/* 2>/dev/null | tr -s ' \\t' '\\t' || true", timeout=300))]
    # A point-in-time restore that failed after its recovery leaves its scratch cluster for inspection.
    pitr_dirs = [{"path": r[1], "bytes": int(r[0])} for r in _rows(shell.out(
        f"du -sb {q(s.paths.pitr_scratch_prefix)}* 2>/dev/null | tr -s ' \\t' '\\t' || true", timeout=300))]
    data_dirs = {r[1].rsplit("/", 1)[-1]: int(r[0]) for r in _rows(shell.out(
        f"du -sb {q(s.data_dir)}/*/ 2>/dev/null | sed 's#/$##' | tr -s ' \\t' '\\t' || true", timeout=300))}
    return {
        "host": shell.name,
        "min_age_s": min_age_s,
        "database_bytes": database_bytes,
        "tables": tables,
        "indexes": indexes,
        "audit_partitions": partitions,
        "retention_months": policy.audit_retention_months,
        "orphan_objects": orphans.get("orphan_objects", []),
        "orphan_vectors": orphans.get("orphan_vector_documents", {}),
        "cleanup_paused": orphans.get("paused"),
        "collections_without_row": [c for c in collections if c["name"] not in known],
        "leftovers": {
            "databases": leftover_dbs,
            "collections": [c for c in collections if PRE_RESTORE_COLLECTION in c["name"]],
            "drill_aside": drill_dirs,
            "pitr_scratch": pitr_dirs,
        },
        "data_dirs": data_dirs,
    }


def apply_storage(shell: ComplianceHost, report: dict[str, Any], drop_leftovers: bool) -> dict[str, Any]:
    """Move the orphan objects to the quarantine (the app's own cleanup: paused after a restore,
    never a deletion) and, when asked, remove the restore and drill leftovers."""
    done: dict[str, Any] = {}
    if drop_leftovers and report.get("cleanup_paused"):
        raise ComplianceError("cleanup is paused after a restore: the databases and collections it kept are what "
                              "you reconcile with; `govstack reconcile adopt`, then `govstack cleanup resume`, then "
                              "drop the leftovers")
    cleaned = last_json(shell.app("cleanup", "--min-age", str(report["min_age_s"]))) or {}
    done["orphan_objects_quarantined"] = len(cleaned.get("moved", []))
    done["cleanup_paused"] = cleaned.get("paused")
    if drop_leftovers:
        left = report["leftovers"]
        for database in left["databases"]:
            shell.psql(f'DROP DATABASE IF EXISTS "{database["name"]}" WITH (FORCE)', SUPERUSER)
        names = [c["name"] for c in left["collections"]]
        if names:
            shell.app_python(_CHROMA_SCRIPT, "delete", *names)
        aside = f"{shell.settings.data_dir}/{DRILL_ASIDE}/"
        for entry in left["drill_aside"]:
            if not entry["path"].startswith(aside) or "/../" in entry["path"]:
                raise ComplianceError(f"refusing to remove {entry['path']}: not under {aside}")
            shell.out(f"rm -rf --one-file-system {q(entry['path'])}", timeout=1800)
        prefix = shell.settings.paths.pitr_scratch_prefix
        for entry in left.get("pitr_scratch", []):
            name = entry["path"].rsplit("/", 1)[-1]
            if not entry["path"].startswith(prefix) or "/" in entry["path"][len(prefix):]:
                raise ComplianceError(f"refusing to remove {entry['path']}: not a point-in-time scratch directory")
            shell.out(f"docker rm -f {q(shell.settings.project + '-' + name)} >/dev/null 2>&1; "
                      f"rm -rf --one-file-system {q(entry['path'])}", timeout=1800)
        done["leftovers_removed"] = {"databases": [d["name"] for d in left["databases"]], "collections": names,
                                     "drill_aside": [d["path"] for d in left["drill_aside"]],
                                     "pitr_scratch": [d["path"] for d in left.get("pitr_scratch", [])]}
    return done


def _size(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def render_storage(report: dict[str, Any], limit: int = 15) -> str:
    lines = [f"# Storage on {report['host']}", "",
             f"Database {_size(report['database_bytes'])}; data directories: "
             + ", ".join(f"{name} {_size(size)}" for name, size in sorted(report["data_dirs"].items())), "",
             "## Tables (partitioned tables include their partitions)", "",
             "| table | kind | rows (estimate) | table | indexes | total |", "| --- | --- | --- | --- | --- | --- |"]
    for t in [t for t in report["tables"] if t["kind"] != "partition"][:limit]:
        lines.append(f"| {t['name']} | {t['kind']} | {t['rows_estimate']} | {_size(t['table_bytes'])} | "
                     f"{_size(t['index_bytes'])} | {_size(t['total_bytes'])} |")
    lines += ["", "## Largest indexes (scans = 0: never used since the statistics reset)", "",
              "| index | table | size | scans |", "| --- | --- | --- | --- |"]
    for i in report["indexes"][:limit]:
        lines.append(f"| {i['name']} | {i['table']} | {_size(i['bytes'])} | {i['scans']} |")
    lines += ["", f"## Audit partitions (retention {report['retention_months']} months)", "",
              "| partition | from | to | rows (estimate) | size | status | dropped after |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in report["audit_partitions"]:
        lines.append(f"| {p['name']} | {(p['from'] or '')[:10]} | {(p['to'] or '')[:10]} | {p['rows_estimate']} | "
                     f"{_size(p['bytes'])} | {p['status']} | {(p['dropped_after'] or '')[:10]} |")
    vectors = report["orphan_vectors"]
    paused = report.get("cleanup_paused")
    lines += ["", f"## Orphans (older than {report['min_age_s']:g} s; `--apply` moves the objects to the quarantine"
              + (", but cleanup is paused since a restore: `govstack cleanup status`" if paused else "") + ")", "",
              f"- objects with no document row: {len(report['orphan_objects'])}"
              + (f" (e.g. {', '.join(report['orphan_objects'][:5])})" if report["orphan_objects"] else ""),
              f"- vectors of documents that do not exist (never deleted; search ignores them): "
              f"{sum(len(v) for v in vectors.values())} documents"
              + (f" ({'; '.join(f'{c}: {ids[:5]}' for c, ids in vectors.items())})" if vectors else ""),
              f"- Chroma collections with no collection row: {len(report['collections_without_row'])}"
              + (f" ({', '.join(c['name'] + ' ' + str(c['count']) for c in report['collections_without_row'])})"
                 if report["collections_without_row"] else "")]
    left = report["leftovers"]
    lines += ["", "## Left by restores and drills (`--apply --drop-leftovers` removes them)", "",
              "- databases kept by restores: " + (", ".join(f"{d['name']} ({_size(d['bytes'])})"
                                                            for d in left["databases"]) or "none"),
              "- collections set aside by restores: " + (", ".join(f"{c['name']} ({c['count']} vectors)"
                                                                   for c in left["collections"]) or "none"),
              "- data directories set aside by drills: " + (", ".join(f"{d['path']} ({_size(d['bytes'])})"
                                                                      for d in left["drill_aside"]) or "none"),
              "- scratch clusters of failed point-in-time restores: " + (
                  ", ".join(f"{d['path']} ({_size(d['bytes'])})" for d in left.get("pitr_scratch", [])) or "none")]
    return "\n".join(lines) + "\n"


# == privacy (the analytics ledger) ================================================================
def collect_privacy(shell: ComplianceHost, since: str) -> dict[str, Any]:
    """The ledger report, made in the serving color's analytics container (its role reads the ledger)."""
    if not shell.settings.analytics.enabled:
        raise ComplianceError(f"{shell.name}: analytics is not enabled (analytics.enabled)")
    app_side = shell.app_host or shell  # a split inventory: analytics runs on the app hosts
    ids = app_side.containers(app_side.serving_project(), "analytics")
    if not ids:
        raise ComplianceError(f"{app_side.name}: the analytics service of the serving color is not running "
                              "(`govstack up` starts it)")
    report = last_json(app_side.out(f"{docker_exec(ids[0], 'govstack-app', 'privacy-report', '--since', since)}",
                                    timeout=300))
    if not isinstance(report, dict):
        raise ComplianceError("govstack-app privacy-report gave no answer")
    settings = shell.settings.analytics.model_dump(mode="json", exclude={"enabled"})
    return {"host": shell.name, "settings": settings, **report}


def _query_text(query: dict[str, Any]) -> str:
    params = {k: v for k, v in query.items() if k not in ("release", "start", "end") and v is not None}
    extra = " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in sorted(params.items()))
    return f"{query.get('start')}..{query.get('end')}" + (f" {extra}" if extra else "")


def render_privacy(report: dict[str, Any]) -> str:
    a = report["settings"]
    lines = [f"# Privacy budget ledger on {report['host']} (periods from {report['since']})", "",
             f"Every release costs epsilon {a['epsilon_per_release']:g} (discrete Laplace, OpenDP); each consumer "
             f"may spend {a['consumer_epsilon_per_period']:g} and all consumers together "
             f"{a['total_epsilon_per_period']:g} per {a['budget_period']} (UTC), composed sequentially. "
             f"Contribution bound: {a['max_events_per_actor_day']} events per actor and day; groups below "
             f"k = {a['k_threshold']} are suppressed. A repeated question in the same period is answered from "
             "the cache at epsilon 0 (outcome cached).", "",
             "## Budget spent per consumer", "",
             "| period | consumer | epsilon spent | limit | released | cached | refused | first | last |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    totals: dict[str, float] = {}
    for row in report["spent"]:
        period = str(row["period_start"])[:10]
        totals[period] = totals.get(period, 0.0) + float(row["epsilon_spent"])
        lines.append(f"| {period} | {row['consumer']} | {float(row['epsilon_spent']):g} | "
                     f"{a['consumer_epsilon_per_period']:g} | {row['released']} | {row['cached']} | {row['refused']} | "
                     f"{str(row['first'])[:19]} | {str(row['last'])[:19]} |")
    lines += ["", "Total per period: " + (", ".join(f"{p}: {e:g} of {a['total_epsilon_per_period']:g}"
                                                   for p, e in sorted(totals.items())) or "nothing spent"), "",
              "## Releases", "",
              "| id | made | consumer | release | question | epsilon | sensitivity | scale | error bound | k | "
              "suppressed |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["releases"]:
        p = r.get("parameters") or {}
        bound = p.get("error_bound") or {}
        lines.append(f"| {r['id']} | {str(r['created_at'])[:19]} | {r['consumer']} | {r['release']} | "
                     f"{_query_text(r['query'])} | {float(r['epsilon']):g} | {p.get('sensitivity_l1')} | "
                     f"{p.get('scale')} | ±{bound.get('plus_minus')} at {1 - float(bound.get('alpha', 0)):.0%} | "
                     f"{p.get('k_threshold')} | {p.get('suppressed_groups')} of {p.get('groups_in_domain')} |")
    lines += ["", "## Refused (over budget)", ""]
    lines += [f"- {str(r['at'])[:19]} {r['consumer']}: {r['release']} {_query_text(r['query'])}"
              for r in report["refused"]] or ["- none"]
    return "\n".join(lines) + "\n"


# == counts (environment migration check) ========================================================
_OBJECT_COUNT_SCRIPT = r"""
import json
from govstack_app.settings import Settings
from govstack_app.storage import ObjectStore
client = ObjectStore(Settings()).client
out = {}
for bucket in client.list_buckets():
    n = size = 0
    for obj in client.list_objects(bucket.name, recursive=True):
        n += 1
        size += obj.size or 0
    out[bucket.name] = {"objects": n, "bytes": size}
print(json.dumps(out))
"""

# app_state holds operational flags (which color indexes, whether a restore paused cleanup), not
# data: two copies of the same data may differ there.
COUNT_TABLES_SQL = (
    "SELECT format('SELECT %L, count(*) FROM %I.%I', c.relname, n.nspname, c.relname) "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
    "AND c.relname <> 'app_state' ORDER BY c.relname"
)


def collect_counts(shell: ComplianceHost) -> dict[str, Any]:
    """Exact rows per table, objects and bytes per bucket, vectors per collection: what two copies
    of the same data must agree on (host migration, restores)."""
    db = shell.settings.postgres.database
    statements = [line.strip() for line in shell.psql(COUNT_TABLES_SQL, db).splitlines() if line.strip()]
    rows = {r[0]: int(r[1]) for r in _rows(shell.psql(";\n".join(statements) + ";", db))} if statements else {}
    collections = shell.app_python(_CHROMA_SCRIPT, "list") or []
    return {
        "rows": rows,
        "objects": shell.app_python(_OBJECT_COUNT_SCRIPT) or {},
        "vectors": {c["name"]: c["count"] for c in collections},
    }
