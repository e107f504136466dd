"""The pure decisions of cleanup and adoption (govstack_app.quarantine): which objects are orphans,
where they go, what a crashed move leaves to do, what expires, what an adoption registers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from govstack_app.quarantine import (
    PAUSE_KEY,
    CannotAdopt,
    Collection,
    QuarantineEntry,
    StoredObject,
    collection_of,
    filename_of,
    newest_entries,
    parse_pause,
    parse_quarantine_key,
    plan_moves,
    quarantine_key,
    select_expired,
    select_orphans,
    settled_cutoff,
    split_listing,
    user_metadata,
)

NOW = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def obj(key: str, age: timedelta = 2 * HOUR, size: int = 10) -> StoredObject:
    return StoredObject(key, size, NOW - age)


def test_a_quarantine_key_records_the_original_key_and_when():
    key = quarantine_key("c3/abc", NOW)
    assert key == "quarantine/20260310T120000Z/c3/abc"
    entry = parse_quarantine_key(key, 7)
    assert entry == QuarantineEntry(key, "c3/abc", NOW, 7)


def test_the_time_in_the_key_is_utc_whatever_the_callers_zone():
    from datetime import timezone

    local = NOW.astimezone(timezone(timedelta(hours=-5)))
    assert quarantine_key("c1/x", local) == quarantine_key("c1/x", NOW)


@pytest.mark.parametrize("key", [
    "c1/abc",                                 # not in the quarantine
    "quarantine/",                            # nothing after the prefix
    "quarantine/20260310T120000Z",            # no original key
    "quarantine/20260310T120000Z/",           # empty original key
    "quarantine/2026-03-10/c1/abc",           # not our time format
    "quarantine/20261310T120000Z/c1/abc",     # month 13
    "quarantine/20260310T120000Z/quarantine/20260310T120000Z/c1/a",  # nested
    "quarantine/../c1/abc",
])
def test_keys_cleanup_did_not_write_are_never_taken_for_entries(key):
    assert parse_quarantine_key(key) is None


def test_an_original_already_in_the_quarantine_is_refused():
    with pytest.raises(ValueError):
        quarantine_key("quarantine/20260310T120000Z/c1/a", NOW)


def test_split_listing_separates_live_objects_entries_and_strays():
    live, entries, strays = split_listing([
        obj("c1/a"), StoredObject("quarantine/20260101T000000Z/c1/b", 5, NOW), StoredObject("quarantine/junk", 1, NOW),
    ])
    assert [o.key for o in live] == ["c1/a"]
    assert [(e.original, e.size) for e in entries] == [("c1/b", 5)]
    assert strays == ["quarantine/junk"]


def test_orphans_are_unregistered_objects_old_enough_to_be_no_upload_in_flight():
    objects = [obj("c1/registered"), obj("c1/old"), obj("c1/young", age=timedelta(minutes=5)),
               StoredObject("c1/no-time", 1, None)]
    orphans = select_orphans(objects, {"c1/registered"}, NOW - HOUR)
    assert [o.key for o in orphans] == ["c1/old"]


def test_an_object_exactly_at_the_age_counts():
    assert [o.key for o in select_orphans([obj("c1/a", age=HOUR)], set(), NOW - HOUR)] == ["c1/a"]


def test_a_move_copies_then_deletes():
    (move,) = plan_moves([obj("c1/a")], [], NOW)
    assert (move.original, move.target, move.copy_needed) == ("c1/a", "quarantine/20260310T120000Z/c1/a", True)


def test_a_crash_after_the_copy_is_finished_with_the_same_copy_not_a_second_one():
    earlier = QuarantineEntry("quarantine/20260310T100000Z/c1/a", "c1/a", NOW - 2 * HOUR, 10)
    (move,) = plan_moves([obj("c1/a", age=3 * HOUR, size=10)], [earlier], NOW)
    assert move.target == earlier.key and not move.copy_needed


def test_an_entry_older_than_the_objects_last_write_is_not_reused():
    # Quarantined 40 days ago, adopted back yesterday (copy back, then a crash before the row):
    # reusing the old entry would delete the original now and let the entry expire at once.
    old = QuarantineEntry("quarantine/20260129T120000Z/c1/a", "c1/a", NOW - timedelta(days=40), 10)
    (move,) = plan_moves([obj("c1/a", age=timedelta(days=1), size=10)], [old], NOW)
    assert move.copy_needed and move.target == "quarantine/20260310T120000Z/c1/a"


def test_of_several_copies_the_newest_is_reused():
    older = QuarantineEntry("q-old", "c1/a", NOW - 2 * HOUR, 10)
    newer = QuarantineEntry("q-new", "c1/a", NOW - HOUR, 10)
    (move,) = plan_moves([obj("c1/a", age=3 * HOUR, size=10)], [older, newer], NOW)
    assert move.target == "q-new" and not move.copy_needed


def test_an_entry_of_other_bytes_is_not_taken_for_the_copy():
    other = QuarantineEntry("quarantine/20260310T100000Z/c1/a", "c1/a", NOW - 2 * HOUR, 99)
    (move,) = plan_moves([obj("c1/a", size=10)], [other], NOW)
    assert move.copy_needed and move.target == "quarantine/20260310T120000Z/c1/a"


def test_only_entries_past_the_retention_expire():
    retention = timedelta(days=30)
    entries = [QuarantineEntry(f"q{n}", f"c1/{n}", NOW - timedelta(days=d), 1) for n, d in enumerate((29, 30, 31))]
    assert [e.key for e in select_expired(entries, NOW, retention)] == ["q1", "q2"]


def test_newest_entry_per_original():
    a1 = QuarantineEntry("q1", "c1/a", NOW - 2 * HOUR, 1)
    a2 = QuarantineEntry("q2", "c1/a", NOW - HOUR, 1)
    b = QuarantineEntry("q3", "c1/b", NOW, 1)
    assert newest_entries([a2, a1, b]) == {"c1/a": a2, "c1/b": b}


@pytest.mark.parametrize("value, expected", [
    (None, None),
    ('{"reason": "restore", "run": "R1"}', {"reason": "restore", "run": "R1"}),
    ("set by hand", {"reason": "set by hand"}),
    ("42", {"reason": "42"}),
    ("", {"reason": ""}),
])
def test_any_pause_value_pauses(value, expected):
    assert parse_pause(value) == expected


def test_the_pause_key_is_the_one_the_restore_writes():
    from govstack.reconcile.ops import PAUSE_KEY as HOST_KEY

    assert PAUSE_KEY == HOST_KEY


# -- adoption ------------------------------------------------------------------------------------
COLLS = {3: Collection(3, "laws", NOW - 30 * 24 * HOUR), 7: Collection(7, "new-since-restore", NOW - HOUR)}


def test_user_metadata_is_read_case_insensitively():
    assert user_metadata({"X-Amz-Meta-Collection": "laws", "Content-Type": "text/plain"}) == {"collection": "laws"}


def test_the_collection_recorded_by_the_upload_wins():
    assert collection_of("c7/x", {"collection": "minutes%20a"}, NOW - 2 * HOUR, COLLS) == ("minutes a",
                                                                                          "object metadata")


def test_the_operator_names_the_collection_of_an_unrecorded_object():
    assert collection_of("c9/x", {}, NOW, COLLS, "laws") == ("laws", "--collection")


def test_the_key_id_maps_to_a_collection_older_than_the_object():
    assert collection_of("c3/x", {}, NOW - 2 * HOUR, COLLS)[0] == "laws"


def test_a_collection_id_reused_after_a_restore_is_never_taken_for_the_old_one():
    # Collection 7 was created an hour ago (after the restore); the object is two hours old, so
    # it belonged to the collection 7 the snapshot lost.
    with pytest.raises(CannotAdopt, match="newer than the object"):
        collection_of("c7/x", {}, NOW - 2 * HOUR, COLLS)


@pytest.mark.parametrize("key, written", [("c9/x", NOW), ("c3/x", None), ("odd-key", NOW)])
def test_an_unknown_collection_is_refused_with_what_to_do(key, written):
    with pytest.raises(CannotAdopt, match="--collection"):
        collection_of(key, {}, written, COLLS)


def test_filename_from_the_metadata_or_a_name_that_says_what_happened():
    assert filename_of("c1/abc", {"original-filename": "Budget%202026%20%C3%A9t%C3%A9.pdf"}) == "Budget 2026 été.pdf"
    assert filename_of("c1/abc", {}) == "recovered-abc"
    assert len(filename_of("c1/abc", {"original-filename": "x" * 400})) == 255


def test_after_a_restore_objects_written_before_it_are_settled_whatever_their_age():
    since = NOW - timedelta(minutes=10)
    paused = {"since": since.isoformat(), "reason": "restore"}
    assert settled_cutoff(NOW, HOUR, paused) == since
    assert settled_cutoff(NOW, HOUR, None) == NOW - HOUR
    # An older pause changes nothing; neither does a pause set by hand without a time, or a bad one.
    assert settled_cutoff(NOW, HOUR, {"since": (NOW - 5 * HOUR).isoformat()}) == NOW - HOUR
    assert settled_cutoff(NOW, HOUR, {"reason": "by hand"}) == NOW - HOUR
    assert settled_cutoff(NOW, HOUR, {"since": "yesterday"}) == NOW - HOUR
    # A time in the future (a skewed clock) or without a zone is not trusted.
    assert settled_cutoff(NOW, HOUR, {"since": (NOW + HOUR).isoformat()}) == NOW - HOUR
    assert settled_cutoff(NOW, HOUR, {"since": "2026-03-10T11:55:00"}) == NOW - HOUR


@pytest.mark.parametrize("wanted, dies", [("", False), ("p", True), ("p:k1", True), ("p:k2", False),
                                          ("other, p:k1", True), ("p2", False)])
def test_a_fault_point_kills_only_where_asked(wanted, dies):
    import subprocess
    import sys

    from tests.unit.app.conftest import APP_DIR

    code = "from govstack_app.faults import fault_point; fault_point('p', 'k1'); print('lived')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={"GOVSTACK_FAULT_INJECT": wanted, "PYTHONPATH": str(APP_DIR)})
    assert (result.returncode == 137) == dies and ("lived" in result.stdout) != dies


def test_a_copy_made_within_the_same_second_as_the_write_is_reused():
    written = StoredObject("c1/a", 10, NOW + timedelta(milliseconds=700))
    (move,) = plan_moves([written], [QuarantineEntry("q", "c1/a", NOW, 10)], NOW + timedelta(seconds=5))
    assert move.target == "q" and not move.copy_needed
