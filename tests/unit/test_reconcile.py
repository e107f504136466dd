"""The host side of reconciliation (govstack/reconcile/ops.py): the pause flag's SQL, the report's
merge and its readable form, and the settings behind them. Pure; the e2e test runs them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from govstack.backup.ops import snapshot_time
from govstack.reconcile.ops import (
    PAUSE_KEY,
    merge_reconciliation,
    pause_record,
    pause_sql,
    render_quarantine,
    render_reconciliation,
    report_paths,
)
from govstack.settings import SettingsError, build_settings

WHEN = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def test_pause_record_says_which_restore_and_where_its_report_is():
    record = pause_record(run="20260310T020000Z", components=("postgres",), operator="ana@ops", report="/r.json",
                          when=WHEN)
    assert record == {"since": "2026-03-10T12:00:00+00:00", "by": "ana@ops", "run": "20260310T020000Z",
                      "reason": "restore of backup run 20260310T020000Z (postgres)", "components": ["postgres"],
                      "report": "/r.json"}


def test_the_pause_value_travels_as_one_literal_whatever_it_holds():
    hostile = pause_record(run="r'; DROP TABLE documents; --", components=["postgres"], operator="o$$'x", when=WHEN)
    sql = pause_sql(hostile)
    literal = sql.split("set_config('govstack.pause_value', ", 1)[1].rsplit(", false);", 1)[0]
    assert literal.startswith("'") and literal.endswith("'")
    inner = literal[1:-1]
    assert "''" in inner and "'" not in inner.replace("''", "")  # every quote doubled: one literal
    assert json.loads(inner.replace("''", "'")) == hostile
    assert "$$" not in sql.split("DO $$", 1)[0].replace(literal, "")  # the value is outside the DO block
    assert f"'{PAUSE_KEY}'" in sql


def app_view(**extra):
    return {
        "bucket": "documents", "objects": 3, "documents": 1, "paused": {"since": "t", "reason": "restore"},
        "objects_without_rows": [
            {"key": "c1/new", "size": 5, "collection": "laws", "filename": "a.txt", "young": False},
            {"key": "c9/old", "size": 6, "collection": None, "filename": None, "young": False},
        ],
        "rows_without_objects": [{"id": 4, "collection": "laws", "filename": "gone.txt", "object_name": "c1/gone",
                                  "upload_date": "2026-01-01T00:00:00+00:00"}],
        "quarantine": [{"key": "quarantine/20260301T000000Z/c1/q", "original": "c1/q", "size": 7,
                        "quarantined_at": "2026-03-01T00:00:00+00:00"}],
        **extra,
    }


NEWER = [
    {"id": 11, "collection": "laws", "filename": "a.txt", "object_name": "c1/new", "size": 5, "sha256": "s",
     "upload_date": "2026-03-10T10:00:00Z"},
    {"id": 12, "collection": "minutes", "filename": "b.txt", "object_name": "c9/old", "size": 6, "sha256": "s",
     "upload_date": "2026-03-10T10:01:00Z"},
    {"id": 13, "collection": "laws", "filename": "q.txt", "object_name": "c1/q", "size": 7, "sha256": "s",
     "upload_date": "2026-03-10T10:02:00Z"},
    {"id": 14, "collection": "laws", "filename": "x.txt", "object_name": "c1/x", "size": 7, "sha256": "s",
     "upload_date": "2026-03-10T10:03:00Z"},
]


def test_the_report_says_where_the_bytes_of_each_lost_document_are():
    report = merge_reconciliation(app_view(), [dict(d) for d in NEWER], restore={"run": "R"},
                                  newer_source="the kept database govstack_pre_restore_x")
    where = {d["object_name"]: d["object"] for d in report["documents_newer_than_snapshot"]}
    assert where["c1/new"].startswith("in the bucket") and where["c9/old"].startswith("in the bucket")
    assert where["c1/q"].startswith("in the quarantine (quarantine/20260301T000000Z/c1/q)")
    assert where["c1/x"] == "registered or missing"
    old = next(o for o in report["objects_without_rows"] if o["key"] == "c9/old")
    # An object stored before uploads recorded their collection: the kept database names it.
    assert old["collection_in_kept_database"] == "minutes" and old["filename_in_kept_database"] == "b.txt"
    assert report["counts"] == {"objects": 3, "documents": 1, "objects_without_rows": 2, "rows_without_objects": 1,
                                "documents_newer_than_snapshot": 4, "quarantined": 1}


def test_the_readable_report_names_every_object_and_what_to_do():
    report = merge_reconciliation(app_view(), [dict(d) for d in NEWER],
                                  restore={"run": "R1", "components": ["postgres"], "snapshot_time": "S",
                                           "kept_database": "govstack_pre_restore_x"}, newer_source="kept")
    text = render_reconciliation(report)
    for needle in ("`c1/new`", "`c9/old`", "minutes (kept database)", "`c1/gone`", "gone.txt", "R1",
                   "govstack_pre_restore_x", "**Cleanup is paused**", "govstack reconcile adopt --all",
                   "govstack cleanup resume"):
        assert needle in text, needle


def test_a_long_report_is_cut_in_the_text_only():
    many = [{"key": f"c1/{n}", "size": 1, "collection": "laws", "filename": "f", "young": n % 2 == 0}
            for n in range(450)]
    report = merge_reconciliation(app_view(objects_without_rows=many), [], restore=None, newer_source=None)
    assert len(report["objects_without_rows"]) == 450
    text = render_reconciliation(report)
    assert "and 250 more" in text and "young: maybe an upload in flight" in text


def test_report_paths_are_under_the_reports_dir():
    settings = build_settings([{"stack_root": "/srv/gs"}], environ={})
    assert report_paths(settings, "20260310T120000Z") == ("/srv/gs/reports/reconcile-20260310T120000Z.json",
                                                          "/srv/gs/reports/reconcile-20260310T120000Z.md")


def test_quarantine_listing_renders_per_collection():
    text = render_quarantine({
        "bucket": "documents", "retention_days": 30, "paused": None, "unrecognised_keys": ["quarantine/junk"],
        "total": {"objects": 3, "bytes": 3000},
        "collections": [{"collection": "laws", "objects": 3, "bytes": 3000, "oldest": "2026-03-01T00:00:00+00:00",
                         "newest": "2026-03-02T00:00:00+00:00", "expires": "2026-03-31T00:00:00+00:00"}],
    })
    assert "3 objects, 2.9 KiB; kept 30 days" in text and "laws" in text and "2026-03-31" in text
    assert "quarantine/junk" in text


def test_snapshot_time_is_the_database_snapshot_of_the_run():
    entry = {"time": "run-time", "manifest": {"components": {"postgres": {"snapshot_time": "db-time"}}}}
    assert snapshot_time(entry) == "db-time"
    assert snapshot_time({"time": "run-time", "manifest": {}}) == "run-time"


@pytest.mark.parametrize("key, value", [("orphan_min_age_s", 59), ("quarantine_retention_days", 0),
                                        ("quarantine_retention_days", 4000)])
def test_cleanup_settings_refuse_unsafe_values(key, value):
    with pytest.raises(SettingsError, match=key):
        build_settings([{"app": {key: value}}], environ={})


def test_cleanup_settings_defaults():
    app = build_settings([], environ={}).app
    assert (app.orphan_min_age_s, app.quarantine_retention_days) == (3600, 30)


def test_the_main_cli_has_the_commands():
    from govstack.cli import main

    assert {"cleanup", "reconcile"} <= set(main.commands)
    assert set(main.commands["cleanup"].commands) == {"status", "pause", "resume"}
    assert set(main.commands["reconcile"].commands) == {"report", "adopt"}
    assert "quarantine" in main.commands["report"].commands


@pytest.mark.parametrize("args", [
    ("cleanup", "pause", "--reason", "by hand"),
    ("cleanup", "resume", "--yes"),
    ("reconcile", "adopt", "c1/abc"),
    ("reconcile", "report"),
    ("report", "storage", "--apply"),
])
def test_state_changing_commands_refuse_while_another_holds_the_stack_lock(tmp_path, monkeypatch, args):
    """They take the stack lock before they touch the stack: a busy lock exits 3 naming its holder
    (the stack root here has no stack at all, so reaching it would fail otherwise)."""
    from click.testing import CliRunner

    from govstack.cli import main
    from govstack.inventory import load_inventory
    from govstack.lock import stack_lock

    inventory = tmp_path / "inv.py"
    inventory.write_text(f"hosts = [('@local', {{'govstack': {{'stack_root': {str(tmp_path / 'stack')!r}}}}})]\n")
    monkeypatch.setenv("GOVSTACK_OPERATOR", "alice@ci")
    with stack_lock(load_inventory(str(inventory)), "deploy v2"):
        result = CliRunner().invoke(main, [*args, "-i", str(inventory)])
    assert result.exit_code == 3, result.output
    assert "locked by alice@ci" in result.output and "(deploy v2;" in result.output, result.output
