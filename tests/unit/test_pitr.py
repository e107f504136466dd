"""Point-in-time recovery (pgBackRest), in seconds: its settings and their refusals,
what Postgres, pgBackRest and the sidecar get rendered, the base-backup alert's
limit, and the restore's pure parts (targets, archive positions, checksums)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from govstack.backup import pitr
from govstack.backup import render as backup_render
from govstack.backup.plan import PITR_SERVICE, pitr_paths
from govstack.backup.remote import BackupError
from govstack.monitoring.render import base_backup_stale_hours
from govstack.plan import StackPlan
from govstack.render import render_postgres_conf
from govstack.settings import SettingsError, build_settings
from govstack.settings.cron import max_gap_seconds
from govstack.templating import humanize_duration
from govstack.tuning import HostResources
from tests.conftest import rendered_compose_services

HOST = HostResources(memory_mb=8 * 1024, cpus=2)
OFFSITE = {"endpoint": "https://s3.example.org:9000", "bucket": "gov-backups", "prefix": "site-a"}
OFFSITE_KEYS = {"backup_offsite_access_key": "A" * 20, "backup_offsite_secret_key": "S" * 40}


def plan_for(**layer) -> StackPlan:
    return StackPlan(build_settings([{"stack_root": "/srv/gs", **layer}], environ={}), HOST)


# -- settings ------------------------------------------------------------------------------------
def test_pitr_is_on_in_the_offline_lane_and_off_where_it_cannot_run():
    assert plan_for().settings.pitr_enabled
    assert not plan_for(images={"lane": "upstream"}).settings.pitr_enabled
    assert not plan_for(backup={"enabled": False}).settings.pitr_enabled
    assert not plan_for(backup={"pitr": {"enabled": False}}).settings.pitr_enabled
    assert PITR_SERVICE not in plan_for(backup={"pitr": {"enabled": False}}).services
    assert PITR_SERVICE in plan_for().services


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"images": {"lane": "upstream"}, "backup": {"pitr": {"enabled": True}}}, "upstream lane's postgres image"),
        ({"backup": {"enabled": False, "pitr": {"enabled": True}}}, "needs backup.enabled"),
        ({"backup": {"pitr": {"archive_timeout_s": 5}}}, "greater than or equal to 10"),
        ({"backup": {"pitr": {"diff_schedule": "every day"}}}, "backup.pitr.diff_schedule"),
        ({"backup": {"pitr": {"compress_type": "bz2"}}}, "'zst', 'lz4', 'gz' or 'none'"),
        ({"backup": {"offsite": {**OFFSITE, "endpoint": "http://s3.example.org"}}, "secrets": OFFSITE_KEYS},
         "must be https:// while backup.pitr is on"),
        ({"backup": {"check_schedule": "soon"}}, "backup.check_schedule"),
    ],
)
def test_bad_pitr_settings_are_refused_naming_the_key(layer, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        plan_for(**layer)


def test_pgbackrest_takes_the_restic_offsite_keys_unless_given_its_own():
    s = plan_for(backup={"offsite": OFFSITE}, secrets=OFFSITE_KEYS).settings
    assert s.secrets["pgbackrest_offsite_access_key"] == "A" * 20
    assert s.secrets["pgbackrest_offsite_secret_key"] == "S" * 40
    own = plan_for(backup={"offsite": OFFSITE},
                   secrets={**OFFSITE_KEYS, "pgbackrest_offsite_access_key": "P" * 20}).settings
    assert own.secrets["pgbackrest_offsite_access_key"] == "P" * 20
    assert "pgbackrest_offsite_access_key" not in plan_for(images={"lane": "upstream"}, backup={"offsite": OFFSITE},
                                                           secrets=OFFSITE_KEYS).settings.secrets


def test_the_schedules_longest_gap_counts_runs_of_every_expression():
    assert max_gap_seconds("30 1 * * 0") == 7 * 86400
    assert max_gap_seconds("30 1 * * 0", "30 1 * * 1-6") == 86400
    assert max_gap_seconds("0 0 * * 1", "0 12 * * 1") == 7 * 86400 - 12 * 3600


# -- what hosts get ------------------------------------------------------------------------------
def test_postgres_archives_through_the_wrapper_with_the_configured_timeout():
    conf = render_postgres_conf(plan_for(backup={"pitr": {"archive_timeout_s": 30}}))
    assert "archive_mode = on" in conf and "archive_timeout = 30" in conf
    assert "archive_command = '/usr/local/bin/govstack-pgbackrest --stanza=govstack archive-push %p'" in conf
    assert "track_commit_timestamp = on" in conf and "wal_level = replica" in conf
    assert "archive_mode" not in render_postgres_conf(plan_for(backup={"pitr": {"enabled": False}}))


def test_pgbackrest_conf_holds_no_secret_and_the_offsite_repository_only_with_offsite():
    plan = plan_for(backup={"pitr": {"retention_full": 3, "process_max": 4}})
    conf = backup_render.render_pgbackrest_conf(plan)
    assert "repo1-cipher-type=aes-256-cbc" in conf and "repo1-retention-full=3" in conf
    assert "process-max=4" in conf and "[govstack]" in conf and "pg1-path=/var/lib/postgresql/data" in conf
    assert "cipher-pass" not in conf and "repo2" not in conf
    assert "cmd=/usr/local/bin/govstack-pgbackrest" in conf
    offsite = backup_render.render_pgbackrest_conf(plan_for(backup={"offsite": OFFSITE}, secrets=OFFSITE_KEYS))
    assert "repo2-type=s3" in offsite and "repo2-s3-endpoint=s3.example.org" in offsite
    assert "repo2-storage-port=9000" in offsite and "repo2-path=/site-a/pgbackrest" in offsite
    assert "A" * 20 not in offsite and "S" * 40 not in offsite
    files = backup_render.backup_files(plan)
    assert pitr_paths(plan.settings).config_file in files and pitr_paths(plan.settings).crontab in files


def test_the_sidecar_crontab_follows_the_schedules():
    text = backup_render.render_pgbackrest_crontab(plan_for(backup={"pitr": {"full_schedule": "@weekly"}}))
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == ["@weekly govstack-backup pitr backup --type full",
                     "30 1 * * 1-6 govstack-backup pitr backup --type diff",
                     "30 4 * * 0 govstack-backup pitr verify"]


@pytest.fixture(params=[False, True], ids=["local", "offsite"])
def services(request, tmp_path, compose_binary):
    extra = {"backup": {"offsite": OFFSITE}, "secrets": OFFSITE_KEYS} if request.param else {}
    plan = StackPlan(build_settings([{"stack_root": str(tmp_path), **extra}], environ={}), HOST)
    return plan, rendered_compose_services(plan, tmp_path, compose_binary)


def test_the_sidecar_runs_as_postgres_reads_its_data_read_only_and_gets_only_its_secrets(services):
    plan, svc = services
    side, pg = svc[PITR_SERVICE], svc["postgres"]
    assert side["user"] == "999:999" and side["group_add"] == ["10001"] and side["cap_drop"] == ["ALL"]
    assert side["read_only"] is True and "no-new-privileges:true" in side["security_opt"]
    assert side["command"] == ["schedule", "--crontab", "/etc/govstack-backup/pgbackrest.crontab"]
    mounts = {v["target"]: v for v in side["volumes"]}
    assert mounts["/var/lib/postgresql/data"]["source"] == plan.data_path("postgres")
    assert mounts["/var/lib/postgresql/data"]["read_only"] is True
    assert mounts["/etc/pgbackrest"]["read_only"] is True
    assert not any("docker.sock" in str(v.get("source")) for v in side["volumes"])
    # Postgres' socket (trust for local connections) is shared with the sidecar and no one else.
    sharing = sorted(name for name, s in svc.items()
                     if any(v.get("target") == "/var/run/postgresql" for v in s.get("volumes", [])))
    assert sharing == ["pgbackrest", "postgres"]
    names = sorted(s["source"] for s in side["secrets"])
    offsite = plan.settings.backup.offsite is not None
    assert names == sorted(["pgbackrest_cipher_pass",
                            *(["pgbackrest_offsite_access_key", "pgbackrest_offsite_secret_key"] if offsite else [])])
    assert sorted(s["source"] for s in pg["secrets"]) == sorted(["postgres_password", *names])
    assert {v["target"] for v in pg["volumes"]} >= {"/var/lib/pgbackrest", "/etc/pgbackrest"}
    # Only the offsite copy needs a route out, for Postgres' archive_command and the sidecar.
    assert sorted(pg["networks"]) == (["data", "edge"] if offsite else ["data"])
    assert sorted(side["networks"]) == (["data", "edge"] if offsite else ["data"])
    assert "restic_password" not in names and "s3_secret_key" not in names


def test_the_base_backup_alert_limit_follows_the_schedules():
    plan = plan_for()
    assert base_backup_stale_hours(plan, plan.settings.monitoring) == 26
    weekly = plan_for(backup={"pitr": {"diff_schedule": "30 1 * * 3"}})
    assert base_backup_stale_hours(weekly, weekly.settings.monitoring) == 4 * 24 + 2  # Wednesday to Sunday
    fixed = plan_for(monitoring={"alerts": {"base_backup_stale": {"threshold": 50}}})
    assert base_backup_stale_hours(fixed, fixed.settings.monitoring) == 50
    assert humanize_duration(97200) == "1d 3h 0m 0s" and humanize_duration(300) == "5m 0s"
    assert humanize_duration(3725) == "1h 2m 5s" and humanize_duration(42) == "42s"


# -- the restore's pure parts --------------------------------------------------------------------
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2026-06-01 10:00:00+00", "2026-06-01 10:00:00+00:00", "2026-06-01T10:00:00Z",
                                  "2026-06-01 12:00:00+02", " 2026-06-01 10:00:00.000000+00 "])
def test_restore_targets_are_read_in_utc(text):
    assert pitr.parse_target(text, NOW) == datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    assert pitr.target_text(pitr.parse_target(text, NOW)) == "2026-06-01 10:00:00.000000+00"


@pytest.mark.parametrize(("text", "message"), [
    ("yesterday", "is not a time"), ("2026-06-01 10:00:00", "has no UTC offset"),
    ("2026-06-01 12:00:01+00", "is not in the past"), ("2026-13-01 10:00:00+00", "is not a time"),
    ("", "is not a time"), ("2026-06-01 10:00:00+00; rm -rf /", "is not a time"),
])
def test_bad_restore_targets_are_refused_with_a_usage_error(text, message):
    with pytest.raises(BackupError, match=message) as raised:
        pitr.parse_target(text, NOW)
    assert raised.value.kind == "usage"


def test_archive_positions_compare_by_timeline_then_segment_and_ignore_backup_labels():
    seg = "000000010000000000000009"
    assert pitr.archived_past(seg, seg)
    assert pitr.archived_past("00000001000000000000000A", seg)
    assert pitr.archived_past("000000020000000000000001", seg)  # a later timeline
    assert not pitr.archived_past("000000010000000000000008", seg)
    assert not pitr.archived_past(f"{seg}.00000028.backup", seg)  # the label, not the segment
    assert pitr.archived_past(f"{seg}.00000028.backup", "000000010000000000000008")
    assert not pitr.archived_past("", seg)


def test_checksums_fold_into_64_bits_and_compare_both_ways():
    source = pitr.checksums("public.a\t2\t-1\npublic.b\t0\t0\n")
    assert source == {"public.a": {"rows": 2, "checksum": "ffffffffffffffff"},
                      "public.b": {"rows": 0, "checksum": "0000000000000000"}}
    assert pitr.compare(source, dict(source)) == []
    copy = {"public.a": {"rows": 2, "checksum": "00000000000000ff"}, "public.c": {"rows": 1, "checksum": "1"}}
    problems = pitr.compare(source, copy)
    assert any("public.a: 2 rows / 00000000000000ff in the copy" in p for p in problems)
    assert "table public.b: only in the restored cluster" in problems
    assert "table public.c: only in the copy" in problems
    assert pitr.sequences("public.s\t41\npublic.t\t\n") == {"public.s": "41", "public.t": ""}


# -- its secret ------------------------------------------------------------------------------------
def test_the_cipher_passphrase_is_pinned_by_the_repository_and_rotation_is_refused_with_the_reason():
    from govstack.rotation import RotationRefused, check_rotatable
    from govstack.secret_store import data_markers
    from govstack.settings.catalog import SECRET_SPECS

    settings = plan_for().settings
    spec = SECRET_SPECS[pitr.PITR_SECRET]
    assert spec.generated and spec.pinned_by == "pgbackrest" and spec.owner_uid == 999
    markers = dict(data_markers(settings, frozenset({"data"})))
    assert markers["pgbackrest"] == f"{pitr_paths(settings).repository}/archive/{settings.project}/archive.info"
    with pytest.raises(RotationRefused, match="cannot re-encrypt its repository"):
        check_rotatable(pitr.PITR_SECRET, [])
