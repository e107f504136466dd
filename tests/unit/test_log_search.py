"""govstack report logs: the parser of the kept daily files against the worst a file may hold,
and the window, the arguments and the host command it builds."""

from __future__ import annotations

import gzip
import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from govstack.logs import search
from govstack.logs.search import LogSearchError

RID = "0f5e1d2c3b4a59687766554433221100"
SINCE = datetime(2026, 12, 5, 0, 0, tzinfo=UTC)


def kept(service: str, log: str, time: str = "2026-12-05T10:00:00.123456789Z", project: str = "gs") -> str:
    """A line as the engine writes it and rsyslog keeps it."""
    return json.dumps({"log": log + "\n", "stream": "stdout", "time": time,
                       "attrs": {"com.docker.compose.project": project, "com.docker.compose.service": service}})


def nginx(rid: str, time: str = "2026-12-05T10:00:00.1Z") -> str:
    return kept("nginx", json.dumps({"time": "2026-12-05T10:00:00+00:00", "request_id": rid, "status": 201}), time)


def app(service: str, rid: str | None, event: str, time: str) -> str:
    return kept(service, json.dumps({"event": event, "request_id": rid, "service": service}), time, "gs-blue")


def test_one_request_across_three_services_oldest_first():
    lines = [
        app("worker", RID, "document indexed", "2026-12-05T10:00:02Z"),
        nginx(RID, "2026-12-05T10:00:00.5Z"),
        app("api", RID, "request", "2026-12-05T10:00:00.4Z"),
        app("api", "another", "request", "2026-12-05T10:00:00.45Z"),
        app("worker", None, "worker idle", "2026-12-05T10:00:03Z"),
    ]
    found = search.search(lines, since=SINCE, request_id=RID)
    assert [(e.service, e.fields.get("event")) for e in found.entries] == [
        ("api", "request"), ("nginx", None), ("worker", "document indexed")]
    assert found.skipped == 0


def test_a_structured_line_matches_on_its_field_not_a_mention():
    # The id inside another field (a path, a message) is not that request's line.
    mention = kept("api", json.dumps({"event": "request", "request_id": "other", "path": f"/x/{RID}"}))
    plain = kept("postgres", f"ERROR: something about {RID}")
    found = search.search([mention, plain], since=SINCE, request_id=RID)
    assert [e.service for e in found.entries] == ["postgres"]


@pytest.mark.parametrize("junk", [
    "",
    "{",
    '{"log":"cut sho',  # rsyslog or the engine stopped mid-line
    kept("api", "x")[:-7],
    "\x00\x01\x02\xff\xfe binary",
    "\ufffd\ufffd{\"log\": \"\ufffd",
    "[1, 2, 3]",
    "null",
    '"a string"',
    json.dumps({"log": 5, "time": "2026-12-05T10:00:00Z", "attrs": {}}),
    json.dumps({"log": "x", "time": "not a time", "attrs": {"com.docker.compose.service": "api",
                                                            "com.docker.compose.project": "gs"}}),
    json.dumps({"log": "x", "time": "2026-13-45T99:00:00Z", "attrs": {"com.docker.compose.service": "api",
                                                                     "com.docker.compose.project": "gs"}}),
    json.dumps({"log": "x", "time": "2026-12-05T10:00:00Z", "attrs": ["api"]}),
    json.dumps({"log": "x", "time": "2026-12-05T10:00:00Z", "attrs": {"com.docker.compose.service": 7}}),
    "[" * 100_000,  # deeply nested: RecursionError, not a crash
    '{"log": "' + "x" * (search.MAX_LINE_CHARS + 1) + '"}',
])
def test_worst_inputs_are_skipped_and_counted_never_raised(junk):
    good = app("api", RID, "request", "2026-12-05T10:00:00Z")
    found = search.search([junk, good, junk], since=SINCE, request_id=RID)
    assert [e.service for e in found.entries] == ["api"]
    assert found.skipped == 2


def test_a_huge_line_within_the_limit_is_kept_and_shown_shortened():
    body = "y" * 200_000
    entry = search.parse_line(kept("api", body))
    assert entry is not None and entry.text == body
    shown = search.render(entry, width=100)
    assert len(shown) < 200 and "199900 more characters" in shown


def test_inner_log_that_is_not_json_or_is_cut_stays_text():
    for text in ("{not json", '{"event": "cut', "plain text", '{"nested": ' * 5000):
        entry = search.parse_line(kept("api", text))
        assert entry is not None and entry.fields == {} and entry.text == text


def test_the_window_and_the_services():
    lines = [app("api", RID, "old", "2026-12-04T23:59:59.999999999Z"),
             app("api", RID, "new", "2026-12-05T00:00:00Z"),
             app("worker", RID, "new", "2026-12-05T00:00:01Z")]
    found = search.search(lines, since=SINCE, services=["api"])
    assert [(e.service, e.fields["event"]) for e in found.entries] == [("api", "new")]


def test_nanosecond_and_offset_times():
    assert search.parse_time("2026-12-05T10:00:00.123456789Z") == datetime(2026, 12, 5, 10, 0, 0, 123456,
                                                                           tzinfo=UTC)
    assert search.parse_time("2026-12-05T12:00:00+02:00") == datetime(2026, 12, 5, 10, tzinfo=UTC)
    assert search.parse_time("2026-12-05 10:00:00") is None
    assert search.parse_time(None) is None


@pytest.mark.parametrize(("text", "span"), [
    ("30m", timedelta(minutes=30)), ("2h", timedelta(hours=2)), ("7d", timedelta(days=7)),
    ("1w", timedelta(weeks=1)), ("1h30m", timedelta(hours=1, minutes=30)), ("45s", timedelta(seconds=45)),
])
def test_durations(text, span):
    assert search.parse_duration(text) == span


@pytest.mark.parametrize("text", ["", "5", "m", "-1h", "1.5h", "1y", "0m", "2h 5m", "99999d", "1m1h"])
def test_bad_durations_are_refused_by_name(text):
    with pytest.raises(LogSearchError, match="--since"):
        search.parse_duration(text)


@pytest.mark.parametrize("value", ["", "a b", "x;rm -rf /", "$(id)", "a" * 129, "é"])
def test_bad_request_ids_and_services_are_refused(value):
    with pytest.raises(LogSearchError, match="--request-id"):
        search.check_request_id(value)
    with pytest.raises(LogSearchError, match="--service"):
        search.check_service(value if value else "")


def test_days_of_a_window():
    start = datetime(2026, 12, 3, 23, 0, tzinfo=UTC)
    assert search.days_between(start, datetime(2026, 12, 5, 1, 0, tzinfo=UTC)) == [
        "2026-12-03", "2026-12-04", "2026-12-05"]


def test_the_host_command_reads_gzip_and_plain_files_and_survives_a_cut_file(tmp_path):
    """The command the CLI runs on the host, run here against files like rsyslog's."""
    root = tmp_path / "logs"
    (root / "api").mkdir(parents=True)
    (root / "nginx").mkdir()
    with gzip.open(root / "api" / "2026-12-05.jsonl.gz", "wt") as f:
        f.write(app("api", RID, "request", "2026-12-05T10:00:00Z") + "\n")
    whole = gzip.compress((nginx(RID) + "\n" + nginx("other") + "\n").encode())
    # A file rsyslog is still writing: a complete block, then a partial one.
    (root / "nginx" / "2026-12-05.jsonl.gz").write_bytes(whole + whole[: len(whole) // 2])
    command = search.read_command(str(root), [], ["2026-12-04", "2026-12-05"], RID)
    out = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, check=True)
    found = search.search(out.stdout.splitlines(), since=SINCE, request_id=RID)
    assert sorted(e.service for e in found.entries) == ["api", "nginx"]
    only_api = search.read_command(str(root), ["api"], ["2026-12-05"], None)
    out = subprocess.run(["bash", "-o", "pipefail", "-c", only_api], capture_output=True, text=True, check=True)
    assert [e.service for e in search.search(out.stdout.splitlines(), since=SINCE).entries] == ["api"]
