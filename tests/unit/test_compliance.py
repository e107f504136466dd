"""Compliance settings, the retention rules and the reports' pure parts (no stack).

The jobs themselves run against a deployed stack in tests/e2e/test_compliance.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from govstack_app import retention
from pydantic import ValidationError

from govstack.commands import last_json
from govstack.compliance import cli
from govstack.compliance import ops as compliance
from govstack.settings import ComplianceSettings, build_settings


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- settings --------------------------------------------------------------------------------------
def test_defaults_keep_two_years_and_refuse_less_than_one():
    policy = ComplianceSettings()
    assert (policy.audit_retention_months, policy.audit_retention_floor_months) == (24, 12)


def test_a_retention_below_the_floor_is_refused_by_the_settings():
    with pytest.raises(ValidationError, match=r"audit_retention_months \(6\) is below audit_retention_floor_months"):
        ComplianceSettings(audit_retention_months=6)
    with pytest.raises(ValidationError, match="extra"):
        ComplianceSettings(retention=3)


def test_settings_without_the_section_get_the_defaults():
    settings = build_settings([{}], environ={})
    assert settings.compliance == ComplianceSettings()
    assert settings.paths.reports_dir == "/opt/govstack/reports"
    moved = build_settings([{"compliance": {"reports_dir": "/srv/reports"}}], environ={})
    assert moved.paths.reports_dir == "/srv/reports"


# -- retention rules (app/govstack_app/retention.py) -------------------------------------------
@pytest.mark.parametrize("moment, months, expected", [
    (utc(2025, 3, 31, 12), 1, utc(2025, 2, 28, 12)),
    (utc(2024, 3, 31), 1, utc(2024, 2, 29)),
    (utc(2025, 1, 15), 24, utc(2023, 1, 15)),
    (utc(2025, 1, 15), 13, utc(2023, 12, 15)),
])
def test_months_before_clamps_like_postgres(moment, months, expected):
    assert retention.months_before(moment, months) == expected


def partition(year: int, month: int) -> retention.Partition:
    end = (year + month // 12, month % 12 + 1)
    return retention.Partition(f"audit_logs_{year}_{month:02d}", utc(year, month, 1), utc(*end, 1))


def test_only_partitions_whose_every_row_is_older_than_the_retention_are_due():
    parts = [partition(2022, 12), partition(2023, 1), partition(2023, 2), partition(2025, 1),
             retention.Partition("audit_logs_default", None, None)]
    due = retention.due_partitions(parts, utc(2025, 2, 15), months=24)
    # cutoff 2023-02-15: January 2023 ended on 2023-02-01, February 2023 ends after the cutoff.
    assert [p.name for p in due] == ["audit_logs_2022_12", "audit_logs_2023_01"]


def test_retention_below_the_floor_is_refused_by_the_app():
    with pytest.raises(retention.RetentionRefused, match="floor is 12 months"):
        retention.check_policy(6, 12)
    with pytest.raises(retention.RetentionRefused):
        retention.check_policy(3, 0)
    retention.check_policy(12, 12)


def test_the_worker_policy_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("GOVSTACK_AUDIT_RETENTION_MONTHS", raising=False)
    assert retention.RetentionPolicy().months is None
    monkeypatch.setenv("GOVSTACK_AUDIT_RETENTION_MONTHS", "18")
    monkeypatch.setenv("GOVSTACK_AUDIT_RETENTION_FLOOR_MONTHS", "12")
    assert (retention.RetentionPolicy().months, retention.RetentionPolicy().floor_months) == (18, 12)


def test_partition_status_says_when_the_retention_drops_each():
    rows = [{"name": "a", "from": utc(2023, 1, 1), "to": utc(2023, 2, 1)},
            {"name": "b", "from": utc(2024, 6, 1), "to": utc(2024, 7, 1)},
            {"name": "c", "from": utc(2025, 2, 1), "to": utc(2025, 3, 1)}]
    status = {p["name"]: p for p in compliance.partition_status(rows, utc(2025, 2, 15), 24)}
    assert status["a"]["status"].startswith("due") and status["a"]["dropped_after"].startswith("2025-02-01")
    assert status["b"]["status"].startswith("closed") and status["b"]["dropped_after"].startswith("2026-07-01")
    assert status["c"]["status"] == "current or future"


# -- reports ---------------------------------------------------------------------------------------
class Entry:
    def __init__(self, settings):
        self.name, self.settings, self.groups, self.data = "@local", settings, ("@local",), {}


def test_residency_states_encryption_honestly():
    settings = build_settings([{"stack_root": "/srv/gs", "project": "gs", "backup": {"enabled": True}}], environ={})
    facts = {"disk": {"source": "/dev/vda1", "crypt": False, "types": ["part", "disk"]},
             "bucket_sse": {"bucket": "documents", "sse": None}}
    report = compliance.residency_report(Entry(settings), facts)
    items = {item["store"].split()[0]: item for item in report["items"]}
    assert items["PostgreSQL"]["where"] == "/srv/gs/data/postgres"
    assert items["PostgreSQL"]["encrypted_at_rest"] == "no (host disk)"
    assert items["SeaweedFS"]["encrypted_at_rest"].startswith("no SSE")
    assert "has no default encryption" in items["SeaweedFS"]["note"]
    assert "versioned: earlier versions of overwritten or deleted objects kept 30 days" in items["SeaweedFS"]["note"]
    identities = {i["name"]: i for i in report["s3_identities"]}
    assert identities["app"]["actions"] == "Read:documents, Write:documents, List:documents"
    assert identities["backup"]["actions"] == "Read, List" and set(identities) == {"app", "backup", "restore", "admin"}
    assert items["restic"]["encrypted_at_rest"].startswith("yes, always")
    assert report["host_disk_encrypted"] == "no"
    text = compliance.render_residency([report])
    assert "| original files (objects) | SeaweedFS 4.48 S3 | `/srv/gs/data/seaweedfs` |" in text
    assert ("| backup | Read, List | the backup service (every run) | s3_backup_access_key, s3_backup_secret_key |"
            in text)


def test_residency_with_an_encrypted_disk_and_sse():
    settings = build_settings([{}], environ={})
    facts = {"disk": {"source": "/dev/mapper/data", "crypt": True, "types": ["crypt", "part", "disk"]},
             "bucket_sse": {"bucket": "documents", "sse": "AES256"}}
    report = compliance.residency_report(Entry(settings), facts)
    assert report["host_disk_encrypted"] == "yes"
    objects = next(i for i in report["items"] if i["data"].startswith("original files"))
    assert objects["encrypted_at_rest"].startswith("yes: bucket default AES256")
    assert "derived (HKDF-SHA256) from the secret s3_sse_key" in objects["note"]


def test_residency_declared_disk_encryption_wins():
    policy = ComplianceSettings(disk_encrypted=True)
    assert compliance._disk(policy.disk_encrypted, {"disk": {"crypt": False, "source": "x"}})[0] == "yes"
    assert compliance._disk(None, {"disk_error": "unreachable"})[0] == "unknown"


def test_access_review_columns_and_path():
    assert compliance.ACCESS_REVIEW_COLUMNS == ("name", "role", "collections", "created_by", "created", "last_used",
                                                "active", "revoked")
    select = compliance.ACCESS_REVIEW_SQL.split(" FROM api_keys")[0]
    positions = [select.index(f" AS {c}") if f" AS {c}" in select else select.index(f" {c},")
                 for c in compliance.ACCESS_REVIEW_COLUMNS]
    assert positions == sorted(positions), "the CSV's columns, in this order"
    settings = build_settings([{"stack_root": "/srv/gs"}], environ={})
    assert compliance.access_review_path(settings, utc(2025, 3, 4)) == "/srv/gs/reports/access-review-2025-03-04.csv"


def test_storage_report_renders_orphans_and_leftovers():
    report = {
        "host": "@local", "min_age_s": 0, "database_bytes": 10 * 2**20, "data_dirs": {"postgres": 2**30},
        "tables": [{"name": "documents", "kind": "table", "rows_estimate": 3, "table_bytes": 8192,
                    "index_bytes": 16384, "total_bytes": 24576}],
        "indexes": [{"name": "documents_pkey", "table": "documents", "bytes": 16384, "scans": 0}],
        "audit_partitions": compliance.partition_status(
            [{"name": "audit_logs_2020_01", "from": utc(2020, 1, 1), "to": utc(2020, 2, 1), "rows_estimate": 5,
              "bytes": 49152}], utc(2025, 1, 1), 24),
        "retention_months": 24,
        "orphan_objects": ["c1/abc"], "orphan_vectors": {"laws": [42]},
        "collections_without_row": [{"name": "govstack_x__pre_restore_1", "count": 3}],
        "leftovers": {"databases": [{"name": "govstack_pre_restore_1", "bytes": 2**20}],
                      "collections": [{"name": "govstack_x__pre_restore_1", "count": 3}], "drill_aside": []},
    }
    text = compliance.render_storage(report)
    assert "objects with no document row: 1 (e.g. c1/abc)" in text
    assert ("vectors of documents that do not exist (never deleted; search ignores them): 1 documents (laws: [42])"
            in text)
    assert "| audit_logs_2020_01 | 2020-01-01 | 2020-02-01 | 5 | 48.0 KiB | due: the next retention run" in text
    assert "govstack_pre_restore_1 (1.0 MiB)" in text


def test_last_json_skips_log_lines():
    assert last_json('{"event": "log"}\nnot json\n{"ok": true}\n') == {"ok": True}
    assert last_json("nothing") is None


def test_register_adds_the_commands():
    import click

    group = click.Group()
    cli.register(group)
    assert set(group.commands) == {"audit-retention", "access-review", "report"}
    assert set(group.commands["report"].commands) >= {"residency", "storage", "privacy", "counts"}


def test_the_privacy_report_shows_spending_parameters_and_refusals():
    settings = build_settings([{"stack_root": "/srv/gs"}], environ={})
    parameters = {"epsilon": 1.0, "sensitivity_l1": 5, "scale": 5.0, "k_threshold": 10, "suppressed_groups": 3,
                  "groups_in_domain": 14, "error_bound": {"alpha": 0.05, "plus_minus": 15}}
    report = {
        "host": "@local", "since": "2026-12-01", "settings": settings.analytics.model_dump(mode="json"),
        "spent": [{"period_start": "2026-12-01", "consumer": "dpo-reports", "epsilon_spent": 2.0, "released": 2,
                   "cached": 5, "refused": 1, "first": "2026-12-04 10:00:00+00", "last": "2026-12-04 11:00:00+00"}],
        "releases": [{"id": 7, "created_at": "2026-12-04 10:00:00+00", "consumer": "dpo-reports",
                      "release": "usage.daily", "epsilon": 1.0, "parameters": parameters,
                      "query": {"release": "usage.daily", "start": "2026-11-28", "end": "2026-12-04",
                                "collections": ["big", "small"], "kind": "search"}}],
        "refused": [{"at": "2026-12-04 11:00:00+00", "consumer": "dpo-reports", "release": "usage.daily",
                     "query": {"release": "usage.daily", "start": "2026-12-01", "end": "2026-12-04",
                               "collections": None, "kind": "view"}}],
    }
    text = compliance.render_privacy(report)
    assert "| 2026-12-01 | dpo-reports | 2 | 10 | 2 | 5 | 1 |" in text
    assert "Total per period: 2026-12-01: 2 of 30" in text
    assert ("| 7 | 2026-12-04 10:00:00 | dpo-reports | usage.daily | 2026-11-28..2026-12-04 "
            "collections=big,small kind=search | 1 | 5 | 5.0 | ±15 at 95% | 10 | 3 of 14 |") in text
    assert "- 2026-12-04 11:00:00 dpo-reports: usage.daily 2026-12-01..2026-12-04 kind=view" in text


def test_residency_names_the_usage_events_and_their_retention():
    settings = build_settings([{"stack_root": "/srv/gs", "analytics": {"events_retention_days": 30}}], environ={})
    report = compliance.residency_report(Entry(settings), {})
    item = next(i for i in report["items"] if i["store"] == "PostgreSQL (schema analytics)")
    assert "no query text" in item["data"] and "deleted after 30 days" in item["note"]
