# ruff: noqa: F811  (pytest fixtures are imported from backup_support and used as arguments)
"""Point-in-time recovery on the deployed stack (pgBackRest): continuous WAL
archiving, an archive outage that fires its alert and heals without a gap,
and restores to a moment (and the refusals that touch nothing)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from govstack.backup.plan import PITR_SERVICE, pitr_paths
from tests.e2e.backup_support import (  # noqa: F401 - fixtures
    admin,
    cause,
    cleanup_resumed,
    cli,
    cli_json,
    compose,
    drop_kept_databases,
    in_test_stack,
    running_ids,
    seeded,
    wait_for,
)

ALERT_TIMEOUT_S = 240


def sidecar(stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return compose(stack, "exec", "-T", PITR_SERVICE, *args, check=check)


def pgbackrest(stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sidecar(stack, "govstack-pgbackrest", f"--stanza={stack.settings.project}", *args, check=check)


def archiver(stack) -> dict[str, str]:
    [row] = stack.psql("SELECT coalesce(last_archived_wal, ''), failed_count::text, coalesce(last_failed_wal, ''), "
                       "pg_walfile_name(pg_current_wal_lsn()) FROM pg_stat_archiver")
    return dict(zip(("last_archived", "failed", "last_failed", "current"), row, strict=True))


def switch_wal(stack) -> str:
    """A committed write, then a segment switch: one more WAL segment for the archiver (in one
    transaction the switch would come before the commit record, and an empty segment is not
    switched: the same name twice)."""
    stack.psql("SELECT txid_current()")
    [(segment,)] = stack.psql("SELECT pg_walfile_name(pg_switch_wal())")
    return segment


def firing(stack, alertname: str) -> list[dict]:
    return stack.prometheus_query(f'ALERTS{{alertname="{alertname}",alertstate="firing"}}')


def archived_segments(stack) -> list[str]:
    """WAL segment names in the pgBackRest repository's archive (file names are not encrypted)."""
    root = Path(pitr_paths(stack.settings).repository, "archive", stack.settings.project)
    return sorted({p.name[:24] for p in root.rglob("*") if p.is_file() and re.fullmatch(r"[0-9A-F]{24}-.*", p.name)})


def test_the_stack_archives_wal_and_holds_a_base_backup(stack):
    state = json.loads(sidecar(stack, "govstack-backup", "pitr", "state").stdout.strip().splitlines()[-1])
    assert state["ok"] and state["matches_cluster"] and state["backups"] >= 1, state
    before = archiver(stack)["last_archived"]
    segment = switch_wal(stack)
    wait_for(lambda: archiver(stack)["last_archived"][:24] >= segment, 120, f"segment {segment} archived")
    assert archiver(stack)["last_archived"] > before
    assert segment in archived_segments(stack)
    # No secret in the container's configuration (the wrapper reads the files at each call).
    passphrase = Path(stack.settings.secrets_dir, "pgbackrest_cipher_pass").read_text().strip()
    for service in ("postgres", PITR_SERVICE):
        info = subprocess.run(["docker", "inspect", stack.service_container(service)], capture_output=True,
                              text=True, check=True).stdout
        assert passphrase not in info
    conf = Path(pitr_paths(stack.settings).config_file).read_text()
    assert passphrase not in conf and "repo1-cipher-type=aes-256-cbc" in conf
    # The repository is encrypted (OpenSSL's salted AES format), WAL and all.
    wal = next(p for p in Path(pitr_paths(stack.settings).repository, "archive").rglob(f"{segment}-*"))
    assert wal.read_bytes()[:8] == b"Salted__"


def test_a_wal_archive_outage_fires_its_alert_and_archiving_resumes_without_a_gap(stack):
    """The repository's archive directory made unwritable for Postgres' uid: archive_command
    fails, WAL waits in pg_wal, WalArchiveFailing fires; given back, archiving catches up and
    every segment written meanwhile is in the archive."""
    in_test_stack(stack)
    archive = Path(pitr_paths(stack.settings).repository, "archive", stack.settings.project)
    assert not firing(stack, "WalArchiveFailing"), "WalArchiveFailing fires before the test broke anything"
    first = switch_wal(stack)
    wait_for(lambda: archiver(stack)["last_archived"][:24] >= first, 120, "archiving before the outage")
    failed_before = int(archiver(stack)["failed"])
    modes = {path: path.stat().st_mode for path in [archive, *archive.rglob("*")] if path.is_dir()}
    written = []
    try:
        for path in modes:
            os.chmod(path, 0o500)  # read-only for uid 999 (the owner), as a full or broken volume would be
        written.append(switch_wal(stack))
        wait_for(lambda: int(archiver(stack)["failed"]) > failed_before, 120, "archive_command to fail")
        deadline = time.monotonic() + ALERT_TIMEOUT_S
        while not firing(stack, "WalArchiveFailing"):
            assert time.monotonic() < deadline, "WalArchiveFailing did not fire"
            time.sleep(5)
            written.append(switch_wal(stack))
        [alert] = firing(stack, "WalArchiveFailing")
        assert alert["metric"]["reason"] == "failing" and alert["metric"]["severity"] == "critical"
        assert archiver(stack)["last_archived"][:24] < written[0]  # nothing went through meanwhile
    finally:
        for path, mode in modes.items():
            os.chmod(path, mode)
    written.append(switch_wal(stack))
    # Postgres retries at least every minute; everything waiting goes in order.
    wait_for(lambda: archiver(stack)["last_archived"][:24] >= written[-1], 180, "archiving to catch up")
    check = pgbackrest(stack, "check", check=False)
    assert check.returncode == 0, check.stderr[-2000:]
    segments = archived_segments(stack)
    span = [s for s in segments if first <= s <= written[-1]]
    numbers = [int(s[8:16], 16) * 0x100 + int(s[16:], 16) for s in span]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), f"gap in the archive: {span}"
    assert all(segment in segments for segment in written)
    wait_for(lambda: not firing(stack, "WalArchiveFailing"), ALERT_TIMEOUT_S, "WalArchiveFailing to resolve")


def test_restore_to_a_moment_refuses_bad_input_and_touches_nothing(stack, seeded):
    apps = running_ids(stack, stack.app_project)
    bad = cli(stack, "restore", "--to-time", "yesterday at noon")
    assert bad.returncode == 2 and "is not a time" in cause(bad)
    naive = cli(stack, "restore", "--to-time", "2026-01-01 10:00:00")
    assert naive.returncode == 2 and "no UTC offset" in cause(naive)
    future = cli(stack, "restore", "--to-time", "2999-01-01 00:00:00+00")
    assert future.returncode == 2 and "not in the past" in cause(future)
    both = cli(stack, "restore", "--to-time", "2026-01-01 00:00:00+00", "--snapshot", "latest")
    assert both.returncode == 2 and "one of --snapshot" in cause(both)
    objects = cli(stack, "restore", "--to-latest", "--component", "objects")
    assert objects.returncode == 2 and "restores Postgres only" in cause(objects)
    early = cli(stack, "restore", "--to-time", "2000-01-01 00:00:00+00")
    assert early.returncode == 1 and "no base backup ends before 2000-01-01" in cause(early)
    assert running_ids(stack, stack.app_project) == apps  # nothing stopped


def test_restore_to_the_latest_moment_keeps_every_committed_row(stack, seeded, drop_kept_databases,
                                                                 cleanup_resumed):
    in_test_stack(stack)
    # Its own schema: a table of the superuser's in the app's schema would stop the app's migrations.
    stack.psql("CREATE SCHEMA IF NOT EXISTS pitr_probe")
    try:
        stack.psql("CREATE TABLE IF NOT EXISTS pitr_probe.rows (id serial PRIMARY KEY, note text)")
        stack.psql("INSERT INTO pitr_probe.rows (note) VALUES ('committed before the restore')")
        [(count,)] = stack.psql("SELECT count(*) FROM pitr_probe.rows")
        report = cli_json(stack, "restore", "--to-latest")
        assert report["ok"] and report["target"] == "latest"
        pg = report["components"]["postgres"]
        assert pg["kept_previous_as"] and pg["problems"] == []
        assert report["cleanup_paused"] and "error" not in report["reconciliation"], report["reconciliation"]
        assert pg["tables"]["public.documents"]["rows"] == pg["tables"]["public.documents"]["expected"]["rows"]
        [(after,)] = stack.psql("SELECT count(*) FROM pitr_probe.rows")
        assert after == count  # the archive held everything committed before the restore began
        assert all(c.endswith("(healthy)") for c in _statuses(stack, stack.app_project))
    finally:
        stack.psql("DROP SCHEMA IF EXISTS pitr_probe CASCADE")


def test_a_deleted_stanza_is_made_again_by_the_next_up(stack, tmp_path):
    """The stanza's repository directories gone (a wiped or replaced repository): the next `up`
    sees it, though a no-op `up` no longer asks the sidecar while nothing the last ok answer
    rested on changed (facts.PgbackrestStanza), makes the stanza and a full backup, and the
    `up` after it changes nothing."""
    from tests.e2e.test_deploy import changed_operations

    in_test_stack(stack)
    operation = f"pgBackRest stanza {stack.settings.project}"
    first = cli(stack, "up")
    assert first.returncode == 0, first.stderr[-2000:]
    assert not [name for name in changed_operations(first.stdout + first.stderr) if operation in name]
    repository = Path(pitr_paths(stack.settings).repository)
    for kind in ("backup", "archive"):
        shutil.move(repository / kind / stack.settings.project, tmp_path / kind)
    repaired = cli(stack, "up")
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert [name for name in changed_operations(repaired.stdout + repaired.stderr) if operation in name]
    state = json.loads(sidecar(stack, "govstack-backup", "pitr", "state").stdout.strip().splitlines()[-1])
    assert state["ok"] and state["matches_cluster"] and state["backups"] >= 1, state
    again = cli(stack, "up")
    assert again.returncode == 0, again.stderr[-2000:]
    assert changed_operations(again.stdout + again.stderr) == []


def _statuses(stack, project) -> list[str]:
    out = subprocess.run(["docker", "ps", "--filter", f"label=com.docker.compose.project={project}",
                          "--format", "{{.Status}}"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]
