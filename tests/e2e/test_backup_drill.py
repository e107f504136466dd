# ruff: noqa: F811  (pytest fixtures are imported from backup_support and used as arguments)
"""The backup service on the deployed stack, a backup run, and the disaster-recovery
drill: real documents of every type, indexed, destroyed and restored, equal."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from govstack.backup.plan import host_paths
from govstack.backup.render import render_crontab
from govstack.runbook import run_runbook, stack_environment
from tests.conftest import REPO_ROOT
from tests.e2e.backup_support import (  # noqa: F401 - fixtures
    DRILL_QUERIES,
    admin,
    cli,
    cli_json,
    compose,
    in_test_stack,
    job,
    metrics,
    remove_aside,
    running_ids,
    seeded,
    stack_host,
)
from tests.e2e.test_object_store import _files_holding, marked_pdf, read

RUNBOOKS = REPO_ROOT / "runbooks"
EXACT_METRICS = (
    "govstack_backup_last_success_timestamp_seconds",
    "govstack_backup_last_duration_seconds",
    "govstack_backup_last_size_bytes",
    "govstack_backup_failures_total",
)


def test_backup_service_runs_the_rendered_schedule_unprivileged(stack):
    paths = host_paths(stack.settings)
    crontab = Path(paths.crontab).read_text()
    assert crontab == render_crontab(stack.plan)
    b = stack.settings.backup
    line = f"{b.schedule} govstack-backup run" + (" --if-changed" if b.skip_unchanged else "")
    assert f"{line}\n" in crontab
    cid = stack.service_container("backup")
    info = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True, check=True).stdout)[0]
    assert info["State"]["Health"]["Status"] == "healthy"
    assert info["Config"]["User"] == "10001:10001" and info["HostConfig"]["CapDrop"] == ["ALL"]
    assert not any("docker.sock" in m["Source"] for m in info["Mounts"])
    env = " ".join(info["Config"]["Env"])
    for name in ("restic_password", "postgres_backup_password", "s3_secret_key"):
        secret = Path(stack.settings.secrets_dir, name).read_text().strip()
        assert secret not in env and secret not in " ".join(info["Config"]["Cmd"] or [])
    # The scheduler reads the same file the host rendered.
    inside = compose(stack, "exec", "-T", "backup", "cat", "/etc/govstack-backup/crontab").stdout
    assert inside == crontab


def test_the_in_container_scheduler_runs_the_job_on_time(stack, tmp_path):
    """The service's own scheduler, in a one-off container whose crontab fires every minute."""
    conf = tmp_path / "conf"
    conf.mkdir()
    config = json.loads(Path(host_paths(stack.settings).config_file).read_text())
    config["schedule_file"] = "/etc/schedule-test/crontab"
    (conf / "backup.json").write_text(json.dumps(config))
    (conf / "crontab").write_text("* * * * * govstack-backup run\n")
    for path in (conf, *conf.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    name = f"{stack.settings.project}-schedule-test"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    # No metrics file yet when no backup has run on this stack (this test may run first).
    metrics_file = Path(host_paths(stack.settings).metrics_file)
    before = metrics(stack)["govstack_backup_last_success_timestamp_seconds"] if metrics_file.exists() else 0
    compose(stack, "run", "-d", "--no-deps", "--name", name, "-v", f"{conf}:/etc/schedule-test:ro", "backup",
            "--config", "/etc/schedule-test/backup.json", "schedule")
    try:
        deadline = time.monotonic() + 240
        logs = ""
        while "finished with exit code" not in logs:
            assert time.monotonic() < deadline, f"the scheduler ran nothing in time:\n{logs[-2000:]}"
            time.sleep(5)
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout
        assert "schedule '* * * * *': govstack-backup run" in logs
        assert "finished with exit code 0" in logs, logs[-3000:]
        assert metrics(stack)["govstack_backup_last_success_timestamp_seconds"] > before
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_a_backup_run_is_verified_listed_and_exported_as_metrics(stack, seeded):
    before = time.time()
    summary = cli_json(stack, "backup")
    # The deploy ledger rides in every run beside the data (issue 17: who changed the platform survives the host).
    components = {"postgres", "postgres_globals", "objects", "vectors", "ledger"}
    assert summary["ok"] and set(summary["snapshots"]) == components
    values = metrics(stack)
    for name in EXACT_METRICS:
        assert name in values
    assert values["govstack_backup_last_success_timestamp_seconds"] >= before - 1
    assert values["govstack_backup_last_size_bytes"] == summary["bytes"] > 0
    assert 0 < values["govstack_backup_last_duration_seconds"] <= time.time() - before + 1
    runs = cli_json(stack, "backup", "--list")
    assert any(run["run"] == summary["run"] and run["complete"] for run in runs)
    listing = cli(stack, "backup", "--list")
    assert summary["run"] in listing.stdout and "complete" in listing.stdout
    # The run names the app schema it was taken under (which app versions can serve it restored).
    entry = job(stack, "manifest", summary["run"])
    newest = stack.psql("SELECT max(version) FROM schema_migrations")[0][0]
    assert newest and entry["manifest"]["components"]["postgres"]["schema_version"] == newest


def test_drill_destroys_restores_and_proves_everything_equal(stack, seeded):
    """The dr-drill runbook as an operator runs it, every block in order (announce, drill, verify,
    clean up): one drill serves the runbook's check and this test's, which reads its evidence."""
    in_test_stack(stack)
    apps_before = running_ids(stack, stack.app_project)
    evidence_dir = Path(host_paths(stack.settings).evidence)
    earlier = set(evidence_dir.glob("drill-*.json"))
    env = {**stack_environment(stack.inventory), "GOVSTACK__BACKUP__DRILL_QUERIES": json.dumps(DRILL_QUERIES)}
    # An object whose bytes would show on disk if stored in plaintext (the control that the grep
    # finds such a marker is in test_object_store.py): after the drill put it back into an empty
    # object store, it must still be encrypted there, and read back identical.
    bucket = stack.settings.object_store.bucket
    marker = f"GOVSTACK-DRILL-MARKER-{uuid.uuid4().hex}".encode()
    document, key = marked_pdf(marker), f"drill/{uuid.uuid4().hex}.pdf"
    stack.s3("app").put_object(bucket, key, io.BytesIO(document), len(document), content_type="application/pdf")
    printed = _Tee()
    try:
        result = run_runbook(RUNBOOKS / "dr-drill.md", env, out=printed)
        assert result.executed >= 4 and result.manual == 0, result
        (json_file,) = set(evidence_dir.glob("drill-*.json")) - earlier
        md_file = json_file.with_suffix(".md")
        ev = json.loads(json_file.read_text())
        assert ev["ok"], json.dumps(ev["results"], indent=1)
        assert f"drill {ev['drill_id']}: PASS" in printed.text and f"evidence {json_file}, {md_file}" in printed.text
        res = ev["results"]
        assert res["postgres"]["ok"] and res["postgres"]["problems"] == []
        tables = ev["checksums"]["tables"]
        assert {"public.documents", "public.chunks", "public.collections"} <= set(tables)
        assert any(name.startswith("public.audit_logs_") and t["rows"] > 0 for name, t in tables.items())
        assert all(t["equal"] for t in tables.values())
        assert tables["public.documents"]["rows"] >= len(seeded["ids"])
        assert res["objects"]["ok"] and res["objects"]["verified"] == res["objects"]["expected"] >= 5
        assert res["objects"]["missing"] == res["objects"]["mismatched"] == 0
        coll = f"default_database/govstack_{seeded['collection']}"
        assert ev["checksums"]["collections"][coll]["equal"] and ev["checksums"]["collections"][coll]["count"] >= 5
        assert res["vectors"]["ok"]
        assert res["topk"]["ok"] and res["topk"]["differences"] == []
        assert ev["topk_before"][f"{seeded['collection']} | vector | {DRILL_QUERIES[0]}"], "vector search found nothing"
        assert res["consistency"]["missing_count"] == 0
        assert ev["timings"]["rto_s"] > 0 and ev["rpo"]["data_age_s"] >= 0
        assert ev["rpo"]["schedule_max_gap_s"] == 24 * 3600
        assert {"restic", "pg_dump", "postgres_server", "minio_sdk"} <= set(ev["versions"])
        # The point-in-time stage: exactly the markers committed by T came back.
        pitr = res["pitr"]
        assert pitr["ok"] and pitr["missing"] == [] and pitr["extra"] == [], pitr
        assert 0 < pitr["markers_committed_by_target"] == pitr["markers_restored"] < pitr["markers_written"]
        assert pitr["last_replayed_commit"] <= pitr["target"] < pitr["stopped_before_commit_at"]
        assert pitr["rpo"]["rpo_s"] is not None and pitr["rpo"]["newest_archived_wal"]
        assert "RPO achieved by WAL archiving" in md_file.read_text()
        assert not stack.psql("SELECT 1 FROM pg_namespace WHERE nspname = 'govstack_drill'")  # markers gone
        # The evidence, for an auditor (the runbook's Verify step prints its head).
        md = md_file.read_text()
        assert md.startswith(f"# Disaster-recovery drill {ev['drill_id']}: PASS") and "RTO" in md and "RPO" in md
        assert md.splitlines()[0] in printed.text
        # Both files filed in the backup repository (this stack has no offsite; the offsite filing is
        # test_backup_failures.py's), each read back before it counted.
        filed = re.findall(r"^filed (\S+) \(sha256 ([0-9a-f]{64})\): local snapshot [0-9a-f]+, offsite none",
                           printed.text, re.MULTILINE)
        assert filed == [(json_file.name, hashlib.sha256(json_file.read_bytes()).hexdigest()),
                         (md_file.name, hashlib.sha256(md_file.read_bytes()).hexdigest())], printed.text[-3000:]
        # The destroyed data was moved aside, not deleted; the runbook's clean-up listed it, then removed it.
        aside_line = next(line for line in printed.text.splitlines()
                          if line.startswith("- data directories set aside by drills:"))
        assert re.search(re.escape(ev["set_aside"]) + r" \((?!0 B)", aside_line), aside_line
        assert not Path(ev["set_aside"]).exists()
        # The stack serves again: new containers (restarted), healthy, same documents.
        apps_after = running_ids(stack, stack.app_project)
        assert set(apps_after) == set(apps_before)
        ids = ",".join(str(i) for i in seeded["ids"])
        rows = stack.psql(f"SELECT count(*) FROM documents WHERE id IN ({ids}) AND is_indexed")
        assert int(rows[0][0]) == len(seeded["ids"])
        assert all(s.endswith("(healthy)") for s in _statuses(stack))
        # The restored bucket is the deployed one: versioned, encrypted, the same bytes.
        admin_s3 = stack.s3("admin")
        assert admin_s3.get_bucket_versioning(bucket).status == "Enabled"
        assert admin_s3.get_bucket_encryption(bucket).rule.sse_algorithm == "AES256"
        assert read(stack.s3("app"), bucket, key) == document
        assert _files_holding(stack, marker) == []
    finally:
        remove_aside(stack)
        for version in stack.s3("app").list_objects(bucket, prefix=key, include_version=True):
            stack.s3("app").remove_object(bucket, key, version_id=version.version_id)


class _Tee(io.StringIO):
    """The runbook's output, shown as it runs and kept for the assertions."""

    def write(self, text: str) -> int:
        sys.stdout.write(text)
        return super().write(text)

    @property
    def text(self) -> str:
        return self.getvalue()


def _statuses(stack) -> list[str]:
    out = subprocess.run(["docker", "ps", "--filter", f"label=com.docker.compose.project={stack.settings.project}",
                          "--format", "{{.Status}}"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]
