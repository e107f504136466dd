"""A scheduled run that finds nothing changed stores nothing (jobs/backup/govstack_backup/unchanged.py):
the record of the last complete run, read back from the worst files a cache volume can hold, and
each part of the comparison refusing on its own. The Postgres key against a real cluster and the
whole path through the deployed job are in tests/e2e/test_backup_incremental.py."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pytest
from govstack_backup import unchanged
from govstack_backup.config import Config
from govstack_backup.restic import Restic

MANIFEST = "a" * 64
DATA = "b" * 64
PG = {"xmax": "941", "quiet": True, "system_identifier": "77", "timeline": "00000001",
      "postmaster_start": "2026-12-05 21:14:26+00", "sequences_sha256": "s"}


def _cfg(tmp_path, **extra) -> Config:
    extra.setdefault("pg", {})
    return Config(project="p", repository=str(tmp_path / "repo"), cache_dir=str(tmp_path), password_file="/pw",
                  s3={}, chroma={}, retention={"keep_last": 1}, check_read_data_subset="5%", readback=True,
                  metrics_file="", schedule_file="", mirror_dir=str(tmp_path / "mirror"), **extra)


@pytest.fixture
def repo(tmp_path) -> Restic:
    (tmp_path / "repo" / "snapshots").mkdir(parents=True)
    (tmp_path / "repo" / "config").write_bytes(b"repository config 1")
    for snapshot in (MANIFEST, DATA):
        (tmp_path / "repo" / "snapshots" / snapshot).write_bytes(b"x")
    return Restic(str(tmp_path / "repo"), "/pw", str(tmp_path), "p")


def _write(path, cfg, restic, **over) -> dict:
    kwargs = {"run": "20261205T000000Z", "manifest_snapshot": MANIFEST[:8], "snapshots": {"objects": DATA[:8]},
              "bytes_total": 10, "cfg": cfg, "postgres": PG, "objects_sha256": "o", "vectors_sha256": "v",
              "ledger_sha256": None, "offsite": None, **over}
    unchanged.write_record(path, restic, **kwargs)
    return json.loads(open(path).read())


def test_the_record_keeps_full_snapshot_ids_and_reads_back(tmp_path, repo):
    cfg = _cfg(tmp_path)
    path = unchanged.record_path(cfg, repo)
    record = _write(path, cfg, repo)
    assert record["manifest_snapshot"] == MANIFEST and record["snapshots"] == {"objects": DATA}
    assert unchanged.load_record(path) == record
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert unchanged.snapshot_ids(record) == [MANIFEST, DATA]
    assert unchanged.missing_snapshots(repo, unchanged.snapshot_ids(record)) == []
    os.unlink(tmp_path / "repo" / "snapshots" / DATA)  # forgotten and pruned since
    assert unchanged.missing_snapshots(repo, unchanged.snapshot_ids(record)) == [DATA]


def test_a_short_id_naming_no_snapshot_or_two_is_not_recorded(tmp_path, repo):
    cfg = _cfg(tmp_path)
    (tmp_path / "repo" / "snapshots" / ("a" * 63 + "c")).write_bytes(b"x")  # shares the short id
    with pytest.raises(ValueError, match="names 2 snapshots"):
        _write(unchanged.record_path(cfg, repo), cfg, repo)
    with pytest.raises(ValueError, match="names 0 snapshots"):
        _write(unchanged.record_path(cfg, repo), cfg, repo, manifest_snapshot="deadbeef")
    with pytest.raises(ValueError):
        _write(unchanged.record_path(cfg, repo), cfg, repo, manifest_snapshot="")
    assert not os.path.exists(unchanged.record_path(cfg, repo))


@pytest.mark.parametrize("content", [
    b"", b"\xff\xfe", b"not json", b"[]", b"null", b'"text"', b"{}", b'{"format": 2}',
    json.dumps({"format": 1}).encode(),
])
def test_worst_record_files_mean_a_full_run(tmp_path, content):
    path = tmp_path / "record.json"
    path.write_bytes(content)
    assert unchanged.load_record(str(path)) is None


@pytest.mark.parametrize("change", [
    {"manifest_snapshot": "a" * 63},  # short
    {"manifest_snapshot": "A" * 64},  # not restic's lower-case hex
    {"manifest_snapshot": "../" + "a" * 61},  # a path, not an id
    {"snapshots": {"objects": ["b" * 64]}},  # unhashable
    {"snapshots": ["b" * 64]},
    {"bytes": "10"},
    {"postgres": None},
    {"objects_state_sha256": None},
    {"run": 1},
])
def test_a_record_with_a_wrong_field_means_a_full_run(tmp_path, repo, change):
    cfg = _cfg(tmp_path)
    path = unchanged.record_path(cfg, repo)
    record = {**_write(path, cfg, repo), **change}
    with open(path, "w") as fh:
        json.dump(record, fh)
    assert unchanged.load_record(path) is None


def test_no_record_place_for_a_remote_or_unmade_repository(tmp_path):
    cfg = _cfg(tmp_path)
    assert unchanged.record_path(cfg, Restic("s3:http://s3.example/bucket/x", "/pw", str(tmp_path), "p")) is None
    assert unchanged.record_path(cfg, Restic(str(tmp_path / "none"), "/pw", str(tmp_path), "p")) is None
    assert unchanged.load_record(None) is None


def test_a_repository_made_again_at_the_same_path_has_no_record(tmp_path, repo):
    cfg = _cfg(tmp_path)
    first = unchanged.record_path(cfg, repo)
    _write(first, cfg, repo)
    (tmp_path / "repo" / "config").write_bytes(b"repository config 2")
    again = unchanged.record_path(cfg, repo)
    assert again != first and unchanged.load_record(again) is None


@pytest.mark.parametrize(("field", "value", "why"), [
    ("xmax", "942", "transactions committed since"),
    ("system_identifier", "78", "system identifier changed"),
    ("timeline", "00000002", "timeline changed"),
    ("postmaster_start", "2026-12-06 00:00:00+00", "postmaster start changed"),
    ("sequences_sha256", "t", "a sequence moved"),
])
def test_each_part_of_the_postgres_key_refuses_on_its_own(field, value, why):
    assert unchanged.same_postgres(PG, dict(PG)) is None
    assert why in unchanged.same_postgres(PG, {**PG, field: value})


def test_a_snapshot_taken_while_a_transaction_was_in_progress_never_counts_as_unchanged():
    # That transaction may commit later below the recorded xmax, so an equal xmax proves nothing.
    assert "in progress" in unchanged.same_postgres({**PG, "quiet": False}, dict(PG))
    assert unchanged.same_postgres({}, dict(PG)) is not None


def test_the_ledger_key_ignores_only_backup_lines():
    deploy = b'{"action": "up", "result": "ok"}'
    backup = b'{"action": "backup", "result": "ok"}'
    base = unchanged.ledger_digest(deploy + b"\n")
    assert unchanged.ledger_digest(deploy + b"\n" + backup + b"\n") == base
    assert unchanged.ledger_digest(deploy + b"\n" + b'{"action": "restore"}\n') != base
    # A line that is not an entry (torn, hostile) counts as content.
    assert unchanged.ledger_digest(deploy + b"\n" + b'{"action": "backup"\n') != base
    assert unchanged.ledger_digest(deploy + b"\n" + b'["backup"]\n') != base
    assert unchanged.ledger_digest(None) is None and unchanged.ledger_digest(b"") is not None


def test_the_config_key_covers_every_setting(tmp_path):
    base = unchanged.config_digest(_cfg(tmp_path))
    assert unchanged.config_digest(_cfg(tmp_path)) == base
    assert unchanged.config_digest(_cfg(tmp_path, transfers=8)) != base
    assert unchanged.config_digest(_cfg(tmp_path, extra={"new": 1})) != base


def test_the_check_follows_its_schedule(tmp_path, repo):
    saturday = datetime(2026, 3, 7, 12, 0, tzinfo=UTC).timestamp()
    assert unchanged.check_due(_cfg(tmp_path), repo, now=saturday) is True  # no schedule: every run
    cfg = _cfg(tmp_path, check_schedule="0 0 * * *")
    assert unchanged.check_due(cfg, repo, now=saturday) is True  # never checked
    unchanged.write_check_stamp(cfg, repo, saturday)
    assert unchanged.check_due(cfg, repo, now=saturday + 3600) is False
    assert unchanged.check_due(cfg, repo, now=saturday + 12 * 3600) is True  # midnight passed
    with open(unchanged.stamp_path(cfg, repo, "check"), "w") as fh:
        fh.write('{"checked_at": "soon"}')
    assert unchanged.check_due(cfg, repo, now=saturday + 3600) is True


def test_a_comparison_that_cannot_finish_means_a_full_run_not_a_failed_one(tmp_path, repo):
    from govstack_backup import job

    (tmp_path / "pw").write_text("secret\n")
    closed_port = {"host": "127.0.0.1", "port": 9, "user": "u", "database": "d", "password_file": str(tmp_path / "pw")}
    cfg = _cfg(tmp_path, pg=closed_port)
    _write(unchanged.record_path(cfg, repo), cfg, repo, ledger_sha256=None)
    result = job._current_run(cfg, None, 0.0)
    assert result["ok"] is False and "the comparison failed (OperationalError" in result["changed"], result
    # Without a record, or with a configuration that differs from the recorded one: no comparison at all.
    assert "configuration changed" in job._current_run(_cfg(tmp_path, pg={**closed_port, "port": 10}), None, 0.0)[
        "changed"]
    os.unlink(unchanged.record_path(cfg, repo))
    assert "no record" in job._current_run(cfg, None, 0.0)["changed"]
