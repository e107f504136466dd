"""The host side of backups, in seconds: the settings section, the schedule's
parser and RPO, the rendered service (both lanes, checked by Compose), the job's
config, the evidence report, and the restore's refusal path (a fake host)."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from govstack.backup import evidence
from govstack.backup import plan as backup_plan
from govstack.backup import render as backup_render
from govstack.backup.remote import BackupError, BackupHost
from govstack.plan import StackPlan
from govstack.render import render_compose
from govstack.settings import SettingsError, build_settings
from govstack.settings import cron as schedule
from govstack.settings.backup import BackupSettings
from govstack.tuning import HostResources
from tests.conftest import rendered_compose_services

HOST = HostResources(memory_mb=24 * 1024, cpus=2)
OFFSITE = {"endpoint": "https://s3.example.org:9000", "bucket": "gov-backups", "prefix": "site-a"}
OFFSITE_KEYS = {"backup_offsite_access_key": "A" * 20, "backup_offsite_secret_key": "S" * 40}


def plan_for(**layer) -> StackPlan:
    layer = {"backup": {"enabled": True}, **layer}
    return StackPlan(build_settings([{"stack_root": "/srv/gs", **layer}], environ={}), HOST)


# -- settings ----------------------------------------------------------------------------------
def test_defaults_back_up_daily_and_keep_a_sane_history():
    b = BackupSettings()
    assert b.schedule == "15 2 * * *" and b.enabled and b.offsite is None
    assert b.retention == {"keep_last": 3, "keep_hourly": 24, "keep_daily": 7, "keep_weekly": 5, "keep_monthly": 12,
                           "keep_yearly": 0}


@pytest.mark.parametrize(("layer", "message"), [
    ({"schedule": "every day"}, "need five fields"),
    ({"schedule": "0 25 * * *"}, "hour: '25' is outside 0-23"),
    ({"root": "backups"}, "absolute path"),
    ({"keep_last": 0, "keep_hourly": 0, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}, "keeps nothing"),
    ({"check_read_data_subset": "150%"}, "should match pattern"),
    ({"offsite": {"endpoint": "s3.example.org", "bucket": "b"}}, "http(s)://host"),
    ({"offsite": {**OFFSITE}}, "needs secrets.backup_offsite_access_key"),
    ({"surprise": 1}, "unknown key"),
])
def test_bad_backup_settings_are_refused_by_name(layer, message):
    with pytest.raises(SettingsError) as error:
        build_settings([{"backup": layer}], environ={})
    assert "backup" in str(error.value) and message in str(error.value)


def test_hourly_is_allowed_and_env_overrides_work():
    s = build_settings([{}], environ={"GOVSTACK__BACKUP__SCHEDULE": "@hourly",
                                      "GOVSTACK__BACKUP__DRILL_QUERIES": '["a", "b"]'})
    assert s.backup.schedule == "@hourly" and s.backup.drill_queries == ("a", "b")


# -- schedule --------------------------------------------------------------------------------
@pytest.mark.parametrize(("expression", "hours"), [
    ("@daily", 24), ("@hourly", 1), ("15 2 * * *", 24), ("*/15 * * * *", 0.25), ("0 3 * * 1-5", 72),
    ("0 0 1 * *", 31 * 24), ("30 1,13 * * *", 12), ("0 0 * * sun", 7 * 24),
])
def test_schedule_gap_is_the_promised_rpo(expression, hours):
    assert schedule.max_gap_seconds(expression) == hours * 3600


def test_cron_day_fields_follow_crons_or_rule():
    # Both day fields restricted: the 1st of the month OR any Monday.
    times = schedule.fire_times("0 0 1 * mon", datetime(2026, 6, 1), datetime(2026, 6, 16))
    assert [t.day for t in times] == [1, 8, 15]


# -- plan, files, compose ----------------------------------------------------------------------
def test_paths_live_under_the_backup_root():
    p = backup_plan.host_paths(plan_for().settings)
    assert p.repository == "/srv/gs/backups/restic" and p.evidence == "/srv/gs/backups/evidence"
    assert p.metrics_file == "/srv/gs/data/metrics/backup.prom"
    other = backup_plan.host_paths(plan_for(backup={"root": "/mnt/backup"}).settings)
    assert other.repository == "/mnt/backup/restic" and other.config_file == "/srv/gs/config/backup/backup.json"


def test_job_config_names_secrets_by_path_only():
    plan = plan_for(backup={"offsite": OFFSITE}, secrets=OFFSITE_KEYS)
    text = backup_render.render_job_config(plan)
    config = json.loads(text)
    assert config["offsite"]["repository"] == "s3:https://s3.example.org:9000/gov-backups/site-a"
    assert config["pg"]["user"] == "govstack_backup" and config["pg"]["password_file"].startswith("/run/secrets/")
    for value in OFFSITE_KEYS.values():
        assert value not in text
    assert config["retention"]["keep_daily"] == 7 and config["object_refs"] == "public.documents.object_name"


def test_crontab_is_rendered_from_the_schedule():
    text = backup_render.render_crontab(plan_for(backup={"schedule": "@hourly"}))
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == ["@hourly govstack-backup run --if-changed"]
    text = backup_render.render_crontab(plan_for(backup={"schedule": "@hourly", "skip_unchanged": False}))
    assert [line for line in text.splitlines() if line and not line.startswith("#")] == ["@hourly govstack-backup run"]


def test_the_check_schedule_reaches_the_job_and_a_bad_one_is_refused():
    config = backup_render.job_config(plan_for(backup={"check_schedule": "0 */6 * * *"}))
    assert config["check_schedule"] == "0 */6 * * *"
    assert backup_render.job_config(plan_for(backup={"check_schedule": None}))["check_schedule"] is None
    with pytest.raises(Exception, match="check_schedule"):
        plan_for(backup={"check_schedule": "every night"})


@pytest.mark.parametrize("lane", ["offline", "upstream"])
def test_backup_image_matches_the_servers_postgres_major(lane):
    image = backup_plan.backup_image(plan_for(images={"lane": lane}).settings)
    assert image.tag == {"offline": "govstack/backup:15", "upstream": "govstack/backup:17"}[lane]
    assert image.build_args["POSTGRES_IMAGE"] == {"offline": "govstack/postgres:15",
                                                  "upstream": "postgres:17.6-bookworm"}[lane]
    # The offline parent is our own image: its inputs change this image's hash.
    assert ("POSTGRES_CONTEXT_HASH" in image.build_args) == (lane == "offline")


@pytest.fixture(params=[("offline", False), ("upstream", False), ("offline", True)],
                ids=["offline", "upstream", "offsite"])
def compose(request, tmp_path, compose_binary):
    lane, offsite = request.param
    extra = {"backup": {"offsite": OFFSITE}, "secrets": OFFSITE_KEYS} if offsite else {}
    extra = {**extra, "backup": {"enabled": True, **extra.get("backup", {})}}
    plan = StackPlan(build_settings([{"stack_root": str(tmp_path), "images": {"lane": lane}, **extra}], environ={}),
                     HOST)
    return plan, rendered_compose_services(plan, tmp_path, compose_binary)["backup"]


def test_backup_service_is_unprivileged_limited_and_has_no_docker_socket(compose):
    plan, svc = compose
    assert svc["user"] == "10001:10001" and svc["cap_drop"] == ["ALL"] and svc["read_only"] is True
    assert "no-new-privileges:true" in svc["security_opt"]
    assert svc["deploy"]["resources"]["limits"]["memory"] and svc["healthcheck"]["test"][1] == "govstack-backup"
    sources = [v["source"] for v in svc["volumes"]]
    assert not any("docker.sock" in s for s in sources)
    paths = backup_plan.host_paths(plan.settings)
    assert sorted(sources) == sorted([paths.repository, paths.cache, paths.mirror, paths.config_dir,
                                      paths.metrics_dir, plan.settings.paths.state_dir])
    # The state directory (the deploy ledger) is read-only to the job.
    assert [v["read_only"] for v in svc["volumes"] if v["source"] == plan.settings.paths.state_dir] == [True]
    assert not any(str(v).startswith(plan.settings.data_dir + "/postgres") for v in sources)
    assert svc.get("environment", {}) == {"GOVSTACK_BACKUP_CONFIG": "/etc/govstack-backup/backup.json"}


def test_backup_service_gets_only_its_secrets_and_egress_only_for_offsite(compose):
    plan, svc = compose
    names = sorted(s["source"] for s in svc["secrets"])
    # Read and list only; the restore identity's pair is mounted by `govstack restore` alone.
    expected = ["postgres_backup_password", "restic_password", "s3_backup_access_key", "s3_backup_secret_key"]
    if plan.settings.backup.offsite:
        assert names == sorted([*expected, *backup_plan.OFFSITE_SECRETS])
        assert sorted(svc["networks"]) == ["data", "edge"]
    else:
        assert names == sorted(expected) and list(svc["networks"]) == ["data"]
    assert "postgres_password" not in names  # never the superuser's


def test_disabled_backups_render_no_service():
    plan = plan_for(backup={"enabled": False})
    assert "  backup:" not in render_compose(plan) and "backup" not in plan.services


# -- evidence --------------------------------------------------------------------------------------
def _evidence(ok=True):
    return {
        "drill_id": "20260101T000000Z", "ok": ok, "project": "gs", "host": "h", "run": "20260101T000001Z",
        "manifest_snapshot": "abc", "repository": "/backups/restic",
        "timings": {"restore_s": 42.5, "rto_s": 50.0, "outage_s": 75.25, "restore_step_s": 30.0},
        "rpo": {"snapshot_time": "2026-01-01T00:00:01Z", "destroyed_at": "2026-01-01T00:00:31Z", "data_age_s": 30.0,
                "schedule": "15 2 * * *", "schedule_max_gap_s": 86400},
        "backup": {"run": "20260101T000001Z", "duration_s": 12.0, "bytes": 123456},
        "objectives": evidence.objectives({"rto_s": 50.0}, {"schedule_max_gap_s": 86400}, 12.0, 3600, 25 * 3600),
        "results": {
            "postgres": {"ok": ok, "tables": 2, "rows": 10, "problems": [] if ok else ["table public.x: 1 rows"]},
            "objects": {"ok": True, "buckets": 1, "expected": 5, "verified": 5, "missing": 0, "mismatched": 0},
            "vectors": {"ok": True, "collections": 1, "vectors": 6, "max_embedding_difference": 3e-9,
                        "problems": []},
            "topk": {"ok": True, "k": 5, "queries": 12, "differences": []},
            "consistency": {"object_refs": "public.documents.object_name", "rows": 5, "missing_count": 0},
        },
        "checksums": {
            "manifest_sha256": "f" * 64,
            "tables": {"public.documents": {"rows": 5, "checksum": "0123456789abcdef", "equal": ok}},
            "buckets": {"documents": {"count": 5, "digest": "e" * 64, "equal": True}},
            "collections": {"default_database/govstack_x": {"count": 6, "digest": "1234", "equal": True}},
            "streams": {"postgres": {"file": "/postgres.dump", "snapshot": "12345678ab", "bytes": 2048,
                                     "sha256": "d" * 64}},
        },
        "versions": {"restic": "restic 0.14.0", "pg_dump": "pg_dump (PostgreSQL) 15.18"},
        "timeline": [("drill started", "2026-01-01T00:00:00Z")],
        "set_aside": "/srv/gs/data/.drill-aside/20260101T000000Z",
    }


def test_evidence_markdown_reads_for_an_auditor():
    text = evidence.render_markdown(_evidence())
    assert text.startswith("# Disaster-recovery drill 20260101T000000Z: PASS")
    for needle in ("RTO: restore (data destroyed -> data verified) | 42.5 s", "24.0 h", "30.0 s",
                   "| every object: sha256 and size | PASS | 5 of 5 objects", "`public.documents` | 5 |",
                   "restic 0.14.0", "/postgres.dump", "Delete them once this report is accepted",
                   "largest difference 3.0e-09"):
        assert needle in text, needle
    assert json.loads(evidence.render_json(_evidence()))["ok"] is True


def test_drill_objectives_pass_or_fail_against_the_targets_in_settings():
    from govstack.settings import build_settings

    defaults = build_settings([{}], environ={}).backup
    met = evidence.objectives({"rto_s": 50.0}, {"schedule_max_gap_s": 86400}, 12.0, defaults.rto_target_s,
                              defaults.rpo_target_s)
    assert met["rto"]["ok"] and met["rpo"]["ok"] and met["rpo"]["worst_case_s"] == 86412.0
    # A daily schedule cannot keep a 1 h RPO; a slow restore misses a 60 s RTO.
    missed = evidence.objectives({"rto_s": 61.0}, {"schedule_max_gap_s": 86400}, 12.0, 60, 3600)
    assert not missed["rto"]["ok"] and not missed["rpo"]["ok"]
    text = evidence.render_markdown({**_evidence(), "objectives": missed})
    assert "| RTO (`backup.rto_target_s`): data destroyed -> API healthy | 60.0 s | 61.0 s | FAIL |" in text
    assert "| RPO (`backup.rpo_target_s`): schedule's longest gap + backup run | 60.0 min | 24.0 h | FAIL |" in text
    assert "| 60.0 min | 50.0 s | PASS |" in evidence.render_markdown(_evidence())


def test_failed_evidence_says_fail_and_lists_the_differences():
    text = evidence.render_markdown(_evidence(ok=False))
    assert ": FAIL" in text.splitlines()[0] and "- table public.x: 1 rows" in text and "!=" in text


# -- restore refuses before it stops anything ------------------------------------------------------
class FakeHost:
    """Answers commands by pattern; records every command."""

    class backend:  # noqa: N801 - testinfra's attribute name
        NAME = "local"

    def __init__(self, answers):
        self.answers = answers
        self.commands = []

    def run(self, command):
        self.commands.append(command)
        for pattern, (rc, out) in self.answers.items():
            if re.search(pattern, command):
                return type("R", (), {"rc": rc, "stdout": out, "stderr": ""})()
        return type("R", (), {"rc": 0, "stdout": "", "stderr": ""})()


def test_restore_over_data_is_refused_with_reasons_and_touches_nothing():
    from govstack.backup.ops import restore

    manifest = {"ok": True, "run": "R1", "snapshots": {"manifest": "m1"}, "complete": True,
                "manifest": {"components": {"postgres": {}, "objects": {}, "vectors": {}}}}
    host = FakeHost({
        r"docker ps -q +--filter": (0, "c0ffee\n"),
        r"govstack-backup manifest": (0, json.dumps(manifest)),
        r"govstack-backup state": (0, json.dumps({"ok": True, "objects": {"documents": 3}, "vectors": {}})),
        r"FROM pg_database": (0, "1\n"),
        r"query_to_xml": (0, "public.documents\n"),
    })
    stack = BackupHost(host, plan_for())
    with pytest.raises(BackupError) as error:
        restore(stack, "latest")
    assert error.value.kind == "non-empty"
    assert "public.documents" in str(error.value) and "'documents': 3" in str(error.value)
    assert not any(re.search(r"docker (stop|compose .* stop)|pg_restore|restore-objects", c) for c in host.commands)


def test_drill_compares_top_k_by_rank_exactly_and_scores_within_float32_noise():
    from govstack.backup.drill import compare_topk

    before = {"c | vector | q": [[1, 0, -0.0657], [2, 3, -0.07]], "d | vector | q": {"refused": 409}}
    assert compare_topk(before, {"c | vector | q": [[1, 0, -0.06569], [2, 3, -0.07]],
                                 "d | vector | q": {"refused": 409}}) == []
    assert compare_topk(before, {"c | vector | q": [[2, 3, -0.07], [1, 0, -0.0657]],
                                 "d | vector | q": {"refused": 409}}) == ["c | vector | q"]
    assert compare_topk(before, {"c | vector | q": [[1, 0, -0.0757], [2, 3, -0.07]],
                                 "d | vector | q": []}) == ["c | vector | q", "d | vector | q"]
    assert compare_topk(before, {"c | vector | q": before["c | vector | q"]}) == ["d | vector | q"]


@pytest.mark.parametrize("enabled", [True, False])
def test_a_restored_database_lets_the_analytics_role_in_again(enabled):
    """A restore creates the database anew (its CONNECT grants are not in the dump), grants
    CONNECT to every login role of role_secrets but the owner, and resets their passwords: the
    analytics service's role is among them when enabled."""
    from govstack.backup.ops import role_secrets

    stack = BackupHost(FakeHost({}), plan_for(analytics={"enabled": enabled}))
    roles = role_secrets(stack)
    assert ("govstack_analytics" in roles) == enabled
    if enabled:
        assert roles["govstack_analytics"].endswith("/secrets/postgres_analytics_password")


SPLIT = '''
all = ([("edge1", {"ssh_hostname": "10.9.0.10"}), ("app1", {"ssh_hostname": "10.9.0.21"}),
        ("data1", {"ssh_hostname": "10.9.0.31"}), ("data2", {"ssh_hostname": "10.9.0.32"})], {})
edge = ["edge1"]
app = ["app1"]
data = ["data1", "data2"]
monitoring = ["edge1"]
'''


def test_backup_and_restore_act_on_the_data_host_of_a_split_inventory_without_host(tmp_path, capsys):
    """The first data host runs Postgres, S3 and Chroma and holds the repository: no --host guess."""
    from govstack.backup.cli import stack_for

    inventory = tmp_path / "split.py"
    inventory.write_text(SPLIT)
    assert stack_for(str(inventory), None).name == "data1"
    assert stack_for(str(inventory), "data2").name == "data2"
    with pytest.raises(SystemExit):
        stack_for(str(inventory), "nope")
    assert "no host 'nope'" in capsys.readouterr().err
    # Several hosts in no group are several all-in-one stacks: which one is the operator's choice.
    ungrouped = tmp_path / "two.py"
    ungrouped.write_text('all = [("a", {"ssh_hostname": "10.9.0.1"}), ("b", {"ssh_hostname": "10.9.0.2"})]\n')
    with pytest.raises(SystemExit):
        stack_for(str(ungrouped), None)
    assert "name one host with --host" in capsys.readouterr().err
