"""`govstack drill`: prove the backups by destroying the data and restoring it.

1. Ask the app (its own search API) the fixed queries: the "before" answers.
2. Take a backup run; ask again: the answers must not have moved meanwhile.
3. Stop the writers, stop the data services, move their data directories
   aside (same filesystem: a rename, nothing deleted) and start the services
   on empty directories: the disaster.
4. `restore` everything from the run (no --force: the fresh services must
   count as empty), which verifies every table, object and collection
   against the run's manifest.
5. Start the API alone (the worker would index and move the answers), ask the
   queries again: identical top-k. Then the worker.
6. Write evidence/drill-<time>.json and .md under the backup root.

A drill that fails after step 3 puts the original data directories back and
restarts everything, so the stack ends as it began (the failed restore's
directories are kept next to the originals for inspection).
"""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime
from typing import Any

from govstack.backup import evidence as evidence_mod
from govstack.backup.ops import backup_now, find_run, restore
from govstack.backup.pitr_drill import failed_stage, pitr_stage
from govstack.backup.plan import PITR_SERVICE, backup_settings
from govstack.backup.remote import BackupError, BackupHost
from govstack.commands import docker_exec, last_json, q
from govstack.plan import DATA_DIRS
from govstack.reconcile import ops as reconcile
from govstack.settings.cron import max_gap_seconds

MODES = ("vector", "keyword", "hybrid")

# Runs inside the serving api container: the bootstrap admin key is read
# there, from its secret file, and used against the API on loopback.
_TOPK_SCRIPT = r"""
import json, sys, urllib.error, urllib.request
queries, k = json.loads(sys.argv[1]), int(sys.argv[2])
with open("/run/secrets/app_admin_api_key") as fh:
    key = fh.read().strip()
def call(method, path, body=None):
    req = urllib.request.Request("http://127.0.0.1:8000/api/v1" + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"X-API-Key": key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.load(resp)
out = {}
for coll in sorted(c["name"] for c in call("GET", "/collections")):
    for mode in ("vector", "keyword", "hybrid"):
        for query in queries:
            try:
                res = call("POST", "/search", {"query": query, "collection": coll, "k": k, "mode": mode})
            except urllib.error.HTTPError as exc:
                if exc.code != 409:
                    raise
                # A collection embedded with another model than the one configured refuses
                # vector search the same way before and after: that answer is compared too.
                out[f"{coll} | {mode} | {query}"] = {"refused": 409}
                continue
            out[f"{coll} | {mode} | {query}"] = [[r["document_id"], r["chunk_index"], round(r["score"], 5)]
                                               for r in res["results"]]
print(json.dumps(out, sort_keys=True))
"""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def topk(stack: BackupHost, queries: tuple[str, ...], k: int) -> dict[str, list]:
    api = None
    for color in ("blue", "green"):
        ids = stack.containers(stack.plan.app_project(color), "api")
        if ids:
            api = ids[0]
            break
    if api is None:
        raise BackupError("no api container is running: the drill compares the app's search answers", "not-running")
    result = stack.sh(docker_exec(api, "python3", "-c", _TOPK_SCRIPT, json.dumps(list(queries)), k),
                      timeout=900)
    if not result.ok:
        raise BackupError(f"searching through the app failed: {result.tail()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# Scores are distances computed in float32: the same vectors re-inserted into a new
# index may differ in the last digit (seen: -0.0657 before, -0.06569 after a drill).
SCORE_TOLERANCE = 1e-4


def _same_answer(before: Any, after: Any) -> bool:
    if not (isinstance(before, list) and isinstance(after, list)):
        return before == after
    return len(before) == len(after) and all(
        b[:2] == a[:2] and abs(b[2] - a[2]) <= SCORE_TOLERANCE for b, a in zip(before, after, strict=True)
    )


def compare_topk(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Queries whose answers differ: other documents or chunks, another order, or a score
    further than SCORE_TOLERANCE away."""
    return [key for key in sorted(set(before) | set(after))
            if key not in before or key not in after or not _same_answer(before[key], after[key])]


def _destroy(stack: BackupHost, aside: str) -> list[str]:
    """Stop the data services and move their data directories to ``aside``."""
    services = stack.plan.data_services
    stack.sh(stack.compose("stop", "-t", 60, *services), timeout=300, check=True)
    stack.sh(f"mkdir -p {q(aside)} && chmod 700 {q(aside)}", check=True)
    for service in services:
        uid = DATA_DIRS[service]
        data = stack.plan.data_path(service)
        stack.sh(f"mv {q(data)} {q(aside + '/' + service)} && mkdir -m 700 {q(data)} && chown {uid}:{uid} {q(data)}",
                 timeout=120, check=True)
    return services


def _start_data(stack: BackupHost, services: list[str]) -> None:
    stack.sh(stack.compose("start", *services), timeout=300, check=True)
    stack.wait_healthy([stack.containers(stack.settings.project, s, running_only=False)[0] for s in services])


def _rollback(stack: BackupHost, aside: str, services: list[str]) -> None:
    """Put the original data back: the failed restore's directories go aside too."""
    stack.sh(stack.compose("stop", "-t", 60, *services), timeout=300)
    for service in services:
        data = stack.plan.data_path(service)
        stack.sh(f"mv {q(data)} {q(aside + '/failed-restore-' + service)} && mv {q(aside + '/' + service)} {q(data)}",
                 timeout=120, check=True)
    _start_data(stack, services)


def drill(stack: BackupHost, queries: tuple[str, ...] | None = None, k: int | None = None,
          write_evidence: bool = True) -> dict[str, Any]:
    settings = backup_settings(stack.settings)
    queries = tuple(queries or settings.drill_queries)
    k = k or settings.drill_top_k
    drill_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    timeline: list[tuple[str, str]] = [("drill started", now())]

    for service in (*stack.plan.data_services, "backup"):
        stack.require_service(service)
    database = stack.settings.postgres.database
    paused_before = reconcile.paused_state(stack.psql, database)
    before = topk(stack, queries, k)
    timeline.append((f"top-{k} answers recorded ({len(before)} queries)", now()))
    summary = backup_now(stack)
    timeline.append((f"backup run {summary['run']} complete", now()))
    if compare_topk(before, topk(stack, queries, k)):
        raise BackupError("the app's answers changed while the drill took its backup: something is writing; "
                          "run the drill in a quiet window", "busy")
    entry = find_run(stack, summary["run"])
    manifest = entry["manifest"]

    writers = stack.app_containers()
    apis = [c for c in writers if c in set(_service_ids(stack, "api"))]
    workers = [c for c in writers if c not in apis]
    t_stop = time.monotonic()
    stack.stop(writers)
    # The pgbackrest sidecar reads Postgres' data directory: it stops before the
    # directory moves and starts on the restored one.
    jobs = ["backup", *([PITR_SERVICE] if stack.settings.pitr_enabled else [])]
    stack.sh(stack.compose("stop", "-t", 60, *jobs), timeout=180, check=True)
    aside = f"{stack.paths.drill_aside}/{drill_id}"
    t_destroy = time.monotonic()
    destroyed_at = datetime.now(UTC)
    services = _destroy(stack, aside)
    timeline.append((f"data destroyed: {', '.join(services)} moved to {aside}", now()))
    try:
        _start_data(stack, services)
        timeline.append(("data services running on empty directories", now()))
        report = restore(stack, summary["run"], "all", force=False, restart_app=False)
        if PITR_SERVICE in jobs:
            stack.sh(stack.compose("start", PITR_SERVICE), timeout=180, check=True)
        restore_s = time.monotonic() - t_destroy
        timeline.append((f"restore verified ({report['restore_s']:.1f}s in the restore step)", now()))
        stack.start(apis)
        stack.wait_healthy(apis)
        rto_s = time.monotonic() - t_destroy
        timeline.append(("API healthy on the restored data", now()))
        after = topk(stack, queries, k)
        if paused_before is None and not compare_topk(before, after):
            # The restore paused cleanup; the drill restored its own fresh run and the answers are
            # identical, so there is nothing to reconcile: cleanup runs again as it did before.
            reconcile.clear_pause(stack.psql, database)
            timeline.append(("cleanup resumed: the restored data is the data the drill destroyed", now()))
        stack.start(workers)
        stack.wait_healthy(workers)
        outage_s = time.monotonic() - t_stop
        timeline.append(("workers running; drill complete", now()))
    except BaseException as exc:
        timeline.append((f"FAILED: {exc}; putting the original data back", now()))
        try:
            _rollback(stack, aside, services)
            stack.sh(stack.compose("start", *jobs), timeout=180)
            stack.start(writers)
            stack.wait_healthy(writers)
        except BackupError as rollback_error:
            raise BackupError(f"drill failed ({exc}) and so did putting the data back ({rollback_error}); "
                              f"the original data directories are in {aside}", "rollback-failed") from exc
        raise

    differences = compare_topk(before, after)
    pitr = None
    if stack.settings.pitr_enabled:
        timeline.append(("point-in-time stage started", now()))
        try:
            pitr = pitr_stage(stack, drill_id, timeline)
        except BackupError as exc:
            pitr = failed_stage(str(exc), stack.settings.backup.pitr.archive_timeout_s)
        if pitr["ok"] and paused_before is None:
            # Its restore paused cleanup; it brought back exactly the rows it proved (its markers,
            # dropped since): nothing to reconcile.
            reconcile.clear_pause(stack.psql, database)
        timeline.append((f"point-in-time stage {'passed' if pitr['ok'] else 'FAILED: ' + pitr.get('error', '')}",
                         now()))
    evidence = build_evidence(
        stack, drill_id=drill_id, summary=summary, entry=entry, manifest=manifest, report=report,
        topk_before=before, differences=differences, k=k, timeline=timeline, aside=aside,
        timings={"restore_s": restore_s, "rto_s": rto_s, "outage_s": outage_s,
                 "restore_step_s": report.get("restore_s")},
        destroyed_at=destroyed_at, pitr=pitr,
    )
    if write_evidence:
        base = f"{stack.paths.evidence}/drill-{drill_id}"
        stack.sh(f"mkdir -p {q(stack.paths.evidence)}", check=True)
        stack.write_file(f"{base}.json", evidence_mod.render_json(evidence))
        stack.write_file(f"{base}.md", evidence_mod.render_markdown(evidence))
        evidence["files"] = [f"{base}.json", f"{base}.md"]
        evidence["filed"], filing_error = file_evidence(stack, evidence["files"])
    if not evidence["ok"]:
        missed = [f"{name.upper()} target" for name, target in evidence["objectives"].items() if not target["ok"]]
        raise BackupError(f"drill {drill_id} FAILED ({', '.join(missed) or 'its equality checks'}); "
                          f"evidence: {evidence.get('files')}", "drill-failed")
    if write_evidence and filing_error:
        raise BackupError(f"drill {drill_id} passed, but its evidence could not be filed beside the backups "
                          f"({filing_error}); it is on this host only: {', '.join(evidence['files'])}",
                          "evidence-not-filed")
    return evidence


def file_evidence(stack: BackupHost, files: list[str]) -> tuple[list[dict[str, Any]], str | None]:
    """Each evidence file into the backup repositories (local, and offsite when set), so that
    the proof outlives the host it is about: ``govstack-backup file-evidence``, the file on its
    stdin. Returns what was filed and the first failure's cause (None when all were filed)."""
    filed: list[dict[str, Any]] = []
    for path in files:
        name = path.rsplit("/", 1)[-1]
        result = stack.sh(f"{stack.job('file-evidence', name)} < {q(path)}", timeout=900)
        answer = last_json(result.stdout)
        if not isinstance(answer, dict) or not answer.get("ok"):
            cause = answer.get("error") if isinstance(answer, dict) else result.tail()
            return filed, f"{name}: {cause}"
        filed.append(answer)
    return filed, None


def _service_ids(stack: BackupHost, service: str) -> list[str]:
    ids = []
    for color in ("blue", "green"):
        ids += stack.containers(stack.plan.app_project(color), service)
    return ids


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def build_evidence(stack: BackupHost, *, drill_id: str, summary: dict, entry: dict, manifest: dict, report: dict,
                   topk_before: dict, differences: list[str], k: int, timeline: list, aside: str,
                   timings: dict, destroyed_at: datetime, pitr: dict[str, Any] | None = None) -> dict[str, Any]:
    comps = report["components"]
    pg, objs, vecs = comps["postgres"], comps["objects"], comps["vectors"]
    mpg = manifest["components"]["postgres"]
    tables = {name: {"rows": t["expected"]["rows"], "checksum": t["expected"]["checksum"],
                     "restored_checksum": t.get("checksum"),
                     "equal": t.get("checksum") == t["expected"]["checksum"] and t.get("rows") == t["expected"]["rows"]}
              for name, t in pg["tables"].items()}
    buckets = {name: {"count": manifest["components"]["objects"]["buckets"][name]["count"],
                      "digest": c["digest_expected"], "restored_digest": c["digest"],
                      "equal": c["digest"] == c["digest_expected"]}
               for name, c in objs["buckets"].items()}
    collections = {name: {"count": c["expected_count"], "digest": c["expected_digest"],
                          "restored_count": c.get("count"), "restored_digest": c.get("digest"),
                          "max_embedding_difference": c.get("max_difference"),
                          "equal": c.get("digest") == c["expected_digest"] and c.get("count") == c["expected_count"]
                          and not c.get("over_tolerance") and not c.get("missing")}
                   for name, c in vecs["collections"].items()}
    streams = {}
    for comp in manifest["components"].values():
        streams.update(comp.get("streams", {}))
    schedule = backup_settings(stack.settings).schedule
    results = {
        "postgres": {"ok": bool(pg.get("ok")), "tables": pg["table_count"], "rows": pg["rows"],
                     "problems": pg.get("problems", [])},
        "objects": {"ok": bool(objs.get("ok")), "buckets": len(buckets),
                    "expected": sum(c["expected"] for c in objs["buckets"].values()),
                    "verified": sum(c["verified"] for c in objs["buckets"].values()),
                    "missing": sum(c["missing_count"] for c in objs["buckets"].values()),
                    "mismatched": sum(c["mismatched_count"] for c in objs["buckets"].values())},
        "vectors": {"ok": bool(vecs.get("ok")), "collections": len(collections),
                    "vectors": sum(c["count"] for c in collections.values()),
                    "max_embedding_difference": max((c["max_embedding_difference"] or 0.0
                                                     for c in collections.values()), default=0.0),
                    "problems": vecs.get("problems", [])},
        "topk": {"ok": not differences, "k": k, "queries": len(topk_before), "differences": differences},
        "consistency": manifest.get("consistency"),
    }
    settings = backup_settings(stack.settings)
    rpo = {"snapshot_time": mpg["snapshot_time"],
           "destroyed_at": destroyed_at.isoformat(),
           "data_age_s": round((destroyed_at - _parse_time(mpg["snapshot_time"])).total_seconds(), 3),
           "schedule": schedule, "schedule_max_gap_s": max_gap_seconds(schedule)}
    targets = evidence_mod.objectives(timings, rpo, summary["duration_s"], settings.rto_target_s,
                                      settings.rpo_target_s)
    if pitr is not None:
        results["pitr"] = pitr
    ok = all(r["ok"] for name, r in results.items() if name != "consistency") and all(
        target["ok"] for target in targets.values())
    return {
        "format": 1,
        "drill_id": drill_id,
        "ok": ok,
        "project": stack.settings.project,
        "host": socket.gethostname() if stack.host.backend.NAME == "local" else stack.host.backend.hostname,
        "run": entry["run"],
        "manifest_snapshot": entry["snapshots"]["manifest"],
        "repository": summary.get("repository"),
        "timings": {name: round(value, 3) if isinstance(value, float) else value for name, value in timings.items()},
        "rpo": rpo,
        "objectives": targets,
        "backup": {"run": summary["run"], "duration_s": summary["duration_s"], "bytes": summary["bytes"]},
        "results": results,
        "checksums": {"manifest_sha256": summary.get("manifest_sha256"), "tables": tables, "buckets": buckets,
                      "collections": collections, "streams": streams},
        "topk_before": topk_before,
        "versions": {**manifest.get("versions", {}), "postgres_server": mpg.get("server_version")},
        "timeline": timeline,
        "set_aside": aside,
        "kept_previous_database": pg.get("kept_previous_as"),
    }
