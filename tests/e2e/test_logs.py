"""Container logs kept for auditors: one upload's request id traced from the edge through the
API to the worker with `govstack report logs`, and the retention job deleting the daily files
older than logs.retention_days (planted with old dates: nobody waits 90 days)."""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import run_govstack
from tests.e2e.test_app_support import admin, samples, unique, wait_indexed  # noqa: F401 - fixture

# rsyslog reads the engine's files through inotify and flushes each batch: seconds, not minutes.
TRACE_TIMEOUT_S = 90


def report_logs(stack, *args: str) -> list[dict]:
    result = run_govstack("report", "logs", *args, "--json", "-i", stack.inventory, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_one_upload_is_traced_across_nginx_api_and_worker(stack, admin):  # noqa: F811
    collection = unique("logs")
    r = admin.upload(collection, "traced.txt", samples.make_txt(f"Traced upload for {collection}.\n"))
    assert r.status_code in (200, 201), r.text
    # nginx makes the id ($request_id), logs it, and passes it to the app, which answers with it.
    rid = r.headers["X-Request-ID"]
    wait_indexed(stack, [r.json()["id"]])

    deadline = time.monotonic() + TRACE_TIMEOUT_S
    while True:
        lines = report_logs(stack, "--since", "15m", "--request-id", rid)
        services = {line["service"] for line in lines}
        if {"nginx", "api", "worker"} <= services or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert {"nginx", "api", "worker"} <= services, lines
    assert all(line["log"]["request_id"] == rid for line in lines)
    by_service = {line["service"]: line["log"] for line in lines}
    assert by_service["nginx"]["method"] == "POST" and by_service["nginx"]["status"] in (200, 201)
    assert any(line["log"].get("event") == "document indexed" for line in lines if line["service"] == "worker")
    # Oldest first.
    times = [line["time"] for line in lines]
    assert times == sorted(times)

    # --service narrows it; a bad argument is refused by name, exit 2.
    only_worker = report_logs(stack, "--since", "15m", "--request-id", rid, "--service", "worker")
    assert only_worker and {line["service"] for line in only_worker} == {"worker"}
    bad = run_govstack("report", "logs", "--since", "soon", "-i", stack.inventory)
    assert bad.returncode == 2 and "--since 'soon' is not a duration" in bad.stderr


def test_retention_deletes_daily_files_older_than_the_setting(stack):
    s = stack.settings
    days = s.logs.retention_days
    today = datetime.now(UTC).date()
    service_dir = Path(s.paths.logs_dir, unique("planted"))
    service_dir.mkdir(mode=0o750)
    try:
        expired = [today - timedelta(days=days + 1), today - timedelta(days=days + 400)]
        kept = [today - timedelta(days=days), today - timedelta(days=1)]
        for day in expired + kept:
            with gzip.open(service_dir / f"{day.isoformat()}.jsonl.gz", "wt") as fh:
                fh.write('{"log":"planted\\n"}\n')
        other = service_dir / "notes.txt"  # not a daily file: never the job's to delete
        other.write_text("keep")
        result = subprocess.run(["docker", "compose", "-p", s.project, "-f", s.compose_file, "exec", "-T",
                                 "rsyslog", "govstack-logs-prune"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        left = sorted(p.name for p in service_dir.iterdir())
        assert left == sorted([f"{day.isoformat()}.jsonl.gz" for day in kept] + ["notes.txt"])
        for day in expired:
            assert f"{day.isoformat()}.jsonl.gz" in result.stdout
        # Today's files of the running services are untouched.
        assert any(Path(s.paths.logs_dir, "nginx").glob(f"{today.isoformat()}.jsonl.gz"))
    finally:
        for path in service_dir.iterdir():
            path.unlink()
        service_dir.rmdir()
