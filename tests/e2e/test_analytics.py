"""Privacy-preserving analytics on the deployed stack: traffic through the edge becomes
pseudonymous usage events; the analytics service at /analytics/ answers with OpenDP releases
within their stated error bounds, suppresses small groups, caches, charges and refuses by the
ledger; nothing that names a person or a query reaches its schema or its answers.

The stack's analytics settings decide how noisy a release is; each check below computes from the
release's own stated scale how likely it is to fail by chance, and refuses to run when that is
above 1e-6 (tests/inventories/test_local.py sets the test profile, ANALYTICS_TEST_PROFILE).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_govstack
from tests.e2e.test_app_support import Api, app_exec, docker

CHANCE = 1e-7  # the most a single check below may fail by chance
EVENTS_TIMEOUT_S = 60
READERS = 12
SEARCHES_PER_READER = 3


def tail(scale: float, t: int) -> float:
    """P(X >= t) for discrete Laplace noise of this scale, t >= 1."""
    a = math.exp(-1.0 / scale)
    return a**t / (1 + a)


def bound_at(scale: float, chance: float) -> int:
    """The smallest b with P(|X| > b) <= chance."""
    b = 0
    while 2 * tail(scale, b + 1) > chance:
        b += 1
    return b


def actor_of(secret: bytes, key_name: str) -> str:
    return hmac.new(secret, f"key:{key_name}".encode(), hashlib.sha256).hexdigest()[:32]


class Analytics:
    """/analytics/ through the edge with one API key; keeps every answer's text."""

    answers: list[str] = []

    def __init__(self, stack: Any, key: str) -> None:
        self.api = Api(stack, key)

    def get(self, path: str, **params: Any) -> Any:
        deadline = time.monotonic() + 90
        while True:
            response = self.api.call("GET", f"/analytics/v1/{path}", params=params, retry_429=False)
            # The edge's rate limit is a 429 too: wait that one out, never a budget's.
            if response.status_code != 429 or "budget" in response.json() or time.monotonic() > deadline:
                break
            time.sleep(1.2)
        Analytics.answers.append(response.text)
        return response


@pytest.fixture(scope="module")
def traffic(stack: Any) -> Iterator[dict[str, Any]]:
    """Fresh keys and collections, and the traffic of this module through the edge; the keys
    are revoked afterwards."""
    admin = Api(stack, stack.admin_api_key)
    marker = uuid.uuid4().hex[:12]
    keys: dict[str, str] = {}

    def key(name: str, role: str) -> Api:
        r = admin.call("POST", "/api/v1/keys", json={"name": name, "role": role})
        assert r.status_code == 201, r.text
        keys[name] = r.json()["api_key"]
        return Api(stack, keys[name])

    big, small, empty = f"an-big-{marker}", f"an-small-{marker}", f"an-empty-{marker}"
    writer_name = f"an-{marker}-writer"
    # Its uploads create the two collections: that takes the curator role (scoped keys).
    writer = key(writer_name, "curator")
    docs = {}
    for collection in (big, small):
        r = writer.upload(collection, "notice.txt", f"Road maintenance notice {marker} for {collection}.".encode())
        assert r.status_code == 201, r.text
        docs[collection] = r.json()["id"]
    # Keyword searches for a word no document holds: quick (no embedding) and zero results.
    query = f"zebra{marker} unfindable"
    readers = [f"an-{marker}-reader-{i:02d}" for i in range(READERS)]
    for name in readers:
        reader = key(name, "reader")
        for _ in range(SEARCHES_PER_READER):
            r = reader.call("POST", "/api/v1/search", json={"query": query, "collection": big, "mode": "keyword"})
            assert r.status_code == 200, r.text
        assert reader.call("GET", f"/api/v1/collections/{big}/documents/{docs[big]}/download").status_code == 200
    assert reader.call("GET", f"/api/v1/collections/{big}/documents/999999999").status_code == 404
    lone = key(f"an-{marker}-lone", "reader")
    r = lone.call("POST", "/api/v1/search", json={"query": query, "collection": small, "mode": "keyword"})
    assert r.status_code == 200, r.text
    assert Api(stack, f"gsk_not_a_key_{marker}").call("GET", "/api/v1/collections").status_code == 401
    consumer_name = f"an-{marker}-consumer"
    key(consumer_name, "admin")
    # Written best effort by a background thread: wait until they are all in.
    expected = 1 + READERS * (SEARCHES_PER_READER + 1)
    deadline = time.monotonic() + EVENTS_TIMEOUT_S
    while int(stack.psql(f"SELECT count(*) FROM analytics.events WHERE collection = '{big}'")[0][0]) < expected:
        assert time.monotonic() < deadline, "the usage events of the traffic were not written in time"
        time.sleep(1)
    secret = Path(stack.settings.secrets_dir, "analytics_actor_key").read_text().strip().encode()
    yield {"marker": marker, "query": query, "big": big, "small": small, "empty": empty, "keys": keys,
           "readers": readers, "writer": writer_name, "consumer": consumer_name, "secret": secret,
           "today": datetime.now(UTC).date().isoformat()}
    for name in keys:
        admin.call("DELETE", f"/api/v1/keys/{name}")


@pytest.fixture(scope="module")
def consumer(stack: Any, traffic: dict[str, Any]) -> Analytics:
    return Analytics(stack, traffic["keys"][traffic["consumer"]])


def test_events_carry_pseudonyms_minutes_and_buckets_only(stack: Any, traffic: dict[str, Any]) -> None:
    rows = stack.psql(
        "SELECT kind, actor, coalesce(collection, ''), extract(second FROM occurred_at)::int, "
        "coalesce(score_bucket::text, ''), coalesce(status_class::text, '') FROM analytics.events "
        f"WHERE collection IN ('{traffic['big']}', '{traffic['small']}') OR actor IN ("
        + ",".join(f"'{actor_of(traffic['secret'], n)}'" for n in traffic["readers"]) + ")"
    )
    secret = traffic["secret"]
    by_actor: dict[str, list[tuple[str, ...]]] = {}
    for row in rows:
        by_actor.setdefault(row[1], []).append(row)
        assert row[3] == "0", "an event time finer than the minute"
    # Each reader is its key's HMAC pseudonym: 3 searches with no result, 1 download.
    for name in traffic["readers"]:
        kinds = sorted((r[0], r[4]) for r in by_actor[actor_of(secret, name)] if r[2] == traffic["big"])
        assert kinds == [("download", ""), ("search", "0"), ("search", "0"), ("search", "0")], name
    assert [r[0] for r in by_actor[actor_of(secret, traffic["writer"])]] == ["upload", "upload"]
    # A failed request is an error event without its collection (someone may have typed it).
    errors = [r for r in by_actor[actor_of(secret, traffic["readers"][-1])] if r[0] == "error"]
    assert [(r[2], r[5]) for r in errors] == [("", "4")]


def test_releases_hold_their_stated_bounds_and_suppress_small_groups(
    consumer: Analytics, traffic: dict[str, Any]
) -> None:
    today, big, small, empty = traffic["today"], traffic["big"], traffic["small"], traffic["empty"]
    r = consumer.get("usage/daily", kind="search", start=today, end=today, collection=[big, small, empty])
    assert r.status_code == 200, r.text
    release = r.json()["release"]
    privacy = release["privacy"]
    scale, k, cap = privacy["scale"], privacy["k_threshold"], privacy["contribution_bounds"]["events_per_actor_per_day"]
    assert privacy["sensitivity_l1"] == cap and privacy["epsilon"] == pytest.approx(cap / scale)
    # The small groups (1 and 0 searches) are far below k for this scale, or the test says so.
    assert tail(scale, k - 1) <= CHANCE, f"scale {scale} is too noisy to assert suppression; use the test profile"
    bound = bound_at(scale, CHANCE)
    truth = READERS * min(SEARCHES_PER_READER, cap)  # the contribution bound applies
    assert truth - bound >= k, "the big group could be suppressed by chance; use the test profile"
    groups = {g["collection"]: g["count"] for g in release["groups"]}
    assert set(groups) == {big}, release
    assert abs(groups[big] - truth) <= bound
    assert privacy["suppressed_groups"] == 2 and privacy["groups_in_domain"] == 3
    # The stated bound is the tightest that holds with probability 1 - alpha for the stated scale.
    stated, alpha = privacy["error_bound"]["plus_minus"], privacy["error_bound"]["alpha"]
    assert 2 * tail(scale, stated + 1) <= alpha
    assert stated == 0 or 2 * tail(scale, stated) > alpha

    # Distinct actors in the big collection today: 12 readers and the writer, one each.
    r = consumer.get("usage/active-actors", start=today, end=today, collection=[big])
    actors = r.json()["release"]
    assert actors["privacy"]["sensitivity_l1"] == 1
    assert abs(actors["groups"][0]["actors"] - (READERS + 1)) <= bound_at(actors["privacy"]["scale"], CHANCE)

    # Top collections by downloads: one per reader in big, none in small.
    r = consumer.get("retrieval/top-collections", start=today, end=today, collection=[big, small])
    top = r.json()["release"]
    assert [g["collection"] for g in top["groups"]] == [big] and top["groups"][0]["rank"] == 1
    assert abs(top["groups"][0]["count"] - READERS) <= bound_at(top["privacy"]["scale"], CHANCE)

    # Content gaps: every search in big found nothing; none was a weak match.
    r = consumer.get("retrieval/content-gaps", start=today, end=today, collection=[big])
    gaps = r.json()["release"]
    assert [(g["collection"], g["gap"]) for g in gaps["groups"]] == [(big, "no results")]
    assert abs(gaps["groups"][0]["count"] - truth) <= bound_at(gaps["privacy"]["scale"], CHANCE)

    for path in ("retrieval/latency", "system/errors"):
        r = consumer.get(path, start=today, end=today)
        assert r.status_code == 200 and r.json()["release"]["privacy"]["groups_in_domain"] > 0, r.text


def test_the_same_question_gets_the_same_release_even_asked_at_once(
    stack: Any, consumer: Analytics, traffic: dict[str, Any]
) -> None:
    today, big, small = traffic["today"], traffic["big"], traffic["small"]
    first = consumer.get("usage/daily", kind="download", start=today, end=today, collection=[small, big])
    assert first.status_code == 200 and not first.json()["cached"], first.text
    spent = first.json()["budget"]["consumer_epsilon_spent"]
    # Spelled differently (order, repetition, default kind and dates written out): the same question.
    again = consumer.get("usage/daily", kind="download", collection=[big, small, big], start=today, end=today)
    assert again.json()["cached"] and again.json()["release"] == first.json()["release"]
    assert again.json()["budget"]["consumer_epsilon_spent"] == spent
    # Six identical new questions at once: one release, one charge, six identical answers.
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: consumer.get("usage/daily", kind="view", start=today, end=today,
                                                       collection=[big]), range(6)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert len({json.dumps(a.json()["release"], sort_keys=True) for a in answers}) == 1
    assert sorted(a.json()["cached"] for a in answers) == [False] + [True] * 5
    outcomes = stack.psql(
        "SELECT outcome, count(*) FROM analytics.privacy_ledger WHERE consumer = "
        f"'{traffic['consumer']}' AND query->>'kind' = 'view' GROUP BY outcome ORDER BY outcome")
    assert outcomes == [("cached", "5"), ("released", "1")]


def test_a_spent_budget_answers_429_with_what_is_left(stack: Any, traffic: dict[str, Any]) -> None:
    admin = Api(stack, stack.admin_api_key)
    name = f"an-{traffic['marker']}-spender"
    r = admin.call("POST", "/api/v1/keys", json={"name": name, "role": "admin"})
    assert r.status_code == 201, r.text
    traffic["keys"][name] = r.json()["api_key"]  # revoked with the others
    spender = Analytics(stack, r.json()["api_key"])
    limit = stack.settings.analytics.consumer_epsilon_per_period
    epsilon = stack.settings.analytics.epsilon_per_release
    fits = int(limit / epsilon + 1e-9)
    assert fits <= 20, "the consumer budget would take too many releases to spend here"
    today = traffic["today"]
    released = [spender.get("usage/daily", kind="search", start=today, end=today,
                            collection=[traffic["big"], f"an-pad-{i}-{traffic['marker']}"]) for i in range(fits)]
    assert [r.status_code for r in released] == [200] * fits
    refused = spender.get("usage/daily", kind="upload", start=today, end=today, collection=[traffic["big"]])
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert set(body) == {"detail", "request_id", "budget"} and "privacy budget exhausted" in body["detail"]
    assert body["budget"]["remaining_epsilon"] < epsilon and body["budget"]["consumer_epsilon_spent"] == limit
    assert int(refused.headers["Retry-After"]) > 0
    # What was released stays readable at no cost.
    assert spender.get("usage/daily", kind="search", start=today, end=today,
                       collection=[traffic["big"], f"an-pad-0-{traffic['marker']}"]).json()["cached"]
    ledger = stack.psql(f"SELECT outcome, epsilon FROM analytics.privacy_ledger WHERE consumer = '{name}' ORDER BY id")
    assert [o for o, _ in ledger] == ["released"] * fits + ["refused", "cached"]
    assert sum(float(e) for _, e in ledger) == pytest.approx(limit)
    # Auditors can trust it: not even the database owner rewrites the ledger.
    broken = subprocess.run(
        ["docker", "exec", stack.service_container("postgres"), "psql", "-X", "-U", "postgres", "-d",
         stack.settings.postgres.database, "-c", f"DELETE FROM analytics.privacy_ledger WHERE consumer = '{name}'"],
        capture_output=True, text=True, timeout=60)
    assert broken.returncode != 0 and "append-only" in broken.stderr


def test_nothing_identifying_reaches_the_analytics_schema_or_its_answers(
    stack: Any, consumer: Analytics, traffic: dict[str, Any]
) -> None:
    assert Analytics.answers, "no analytics answers were collected"
    dump = docker("exec", stack.service_container("postgres"), "pg_dump", "-U", "postgres", "--data-only",
                  "--schema=analytics", stack.settings.postgres.database, timeout=300).stdout
    assert traffic["big"] in dump  # the dump is the real thing
    forbidden = [traffic["query"], traffic["marker"] + " unfindable", f"zebra{traffic['marker']}",
                 traffic["writer"], *traffic["readers"], f"an-{traffic['marker']}-lone",
                 *traffic["keys"].values()]
    for text in forbidden:
        assert text not in dump, f"{text!r} is in the analytics schema"
        for answer in Analytics.answers:
            assert text not in answer, f"{text!r} is in an analytics answer"


def test_the_analytics_role_reads_only_the_events_view(stack: Any, traffic: dict[str, Any]) -> None:
    script = (
        "import json, psycopg\n"
        "from govstack_app.analytics.settings import AnalyticsSettings\n"
        "out = {}\n"
        "for name, sql in [('documents', 'SELECT count(*) FROM public.documents'),\n"
        "                  ('api_keys', 'SELECT count(*) FROM public.api_keys'),\n"
        "                  ('audit_logs', 'SELECT count(*) FROM public.audit_logs'),\n"
        "                  ('raw events', 'SELECT count(*) FROM analytics.events'),\n"
        "                  ('insert event', \"INSERT INTO analytics.events (occurred_at, kind, actor, latency_bucket)"
        " VALUES (date_trunc('minute', now()), 'view', repeat('0', 32), 0)\"),\n"
        "                  ('rewrite ledger', \"UPDATE analytics.privacy_ledger SET epsilon = 0\"),\n"
        "                  ('view', 'SELECT count(*) FROM analytics.actor_day_events')]:\n"
        "    with psycopg.connect(AnalyticsSettings().conninfo()) as conn:\n"
        "        try:\n"
        "            conn.execute(sql)\n"
        "            out[name] = 'allowed'\n"
        "        except psycopg.errors.InsufficientPrivilege:\n"
        "            out[name] = 'denied'\n"
        "print(json.dumps(out))\n"
    )
    result = app_exec(stack, "python3", "-c", script, service="analytics")
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "documents": "denied", "api_keys": "denied", "audit_logs": "denied", "raw events": "denied",
        "insert event": "denied", "rewrite ledger": "denied", "view": "allowed"}
    env = app_exec(stack, "env", service="analytics").stdout
    assert "S3" not in env and "CHROMA" not in env and "ACTOR_KEY" not in env


def test_a_key_scoped_to_collections_may_not_read_analytics(stack: Any, traffic: dict[str, Any]) -> None:
    """Releases cover every collection: a scoped key is refused by name (403), not as unknown."""
    admin = Api(stack, stack.admin_api_key)
    name = f"an-{traffic['marker']}-scoped"
    r = admin.call("POST", "/api/v1/keys", json={"name": name, "role": "writer", "collections": [traffic["small"]]})
    assert r.status_code == 201, r.text
    try:
        r = Analytics(stack, r.json()["api_key"]).get("budget")
        assert r.status_code == 403 and "scoped to collections" in r.json()["detail"], r.text
    finally:
        admin.call("DELETE", f"/api/v1/keys/{name}")


def test_writing_events_never_fails_a_request(stack: Any, traffic: dict[str, Any]) -> None:
    """With the events table gone, searches still answer 200; the lost events are counted."""
    reader = Api(stack, traffic["keys"][traffic["readers"][0]])

    def failed() -> float:
        metrics = app_exec(stack, "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                           "'http://127.0.0.1:8000/metrics', timeout=10).read().decode())").stdout
        name = 'govstack_analytics_events_total{outcome="failed"}'
        return float(next(x for x in metrics.splitlines() if x.startswith(name)).split()[-1])

    before = failed()
    stack.psql("ALTER TABLE analytics.events RENAME TO events_away")
    try:
        for _ in range(3):
            r = reader.call("POST", "/api/v1/search",
                            json={"query": traffic["query"], "collection": traffic["big"], "mode": "keyword"})
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + EVENTS_TIMEOUT_S
        while failed() < before + 3:
            assert time.monotonic() < deadline, "the failed event writes were not counted"
            time.sleep(1)
    finally:
        stack.psql("ALTER TABLE analytics.events_away RENAME TO events")


def test_old_events_are_deleted_by_the_retention_job(stack: Any) -> None:
    days = stack.settings.analytics.events_retention_days
    stack.psql(
        "INSERT INTO analytics.events (occurred_at, kind, actor, collection, latency_bucket, score_bucket) "
        f"VALUES (date_trunc('minute', now()) - interval '{days + 2} days', 'search', repeat('a', 32), "
        "'an-retention-probe', 1, 0)")
    report = json.loads(app_exec(stack, "govstack-app", "purge-events", "--days", str(days),
                                 "--actor", "e2e").stdout.strip().splitlines()[-1])
    assert report["ok"] and report["deleted"] >= 1, report
    assert stack.psql("SELECT count(*) FROM analytics.events WHERE collection = 'an-retention-probe'") == [("0",)]
    audited = stack.psql("SELECT details->>'deleted' FROM audit_logs WHERE action = 'analytics.events_purged' "
                         "AND api_key_name = 'retention:e2e' ORDER BY created_at DESC LIMIT 1")
    assert audited and int(audited[0][0]) == report["deleted"]


def test_the_edge_serves_the_analytics_openapi_and_error_contract(stack: Any) -> None:
    anonymous = Api(stack, None)
    docs = anonymous.call("GET", "/analytics/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = anonymous.call("GET", "/analytics/openapi.json").json()
    assert "/analytics/v1/usage/daily" in spec["paths"]
    missing = anonymous.call("GET", "/analytics/v1/usage/daily")
    assert missing.status_code == 401 and set(missing.json()) == {"detail", "request_id"}
    assert missing.headers["x-request-id"] == missing.json()["request_id"]
    admin = Api(stack, stack.admin_api_key)
    name = f"an-reader-{uuid.uuid4().hex[:8]}"
    reader_only = admin.call("POST", "/api/v1/keys", json={"name": name, "role": "reader"}).json()["api_key"]
    try:
        forbidden = Api(stack, reader_only).call("GET", "/analytics/v1/budget")
        assert forbidden.status_code == 403 and "needs 'admin'" in forbidden.json()["detail"]
    finally:
        admin.call("DELETE", f"/api/v1/keys/{name}")


def test_the_privacy_report_prints_the_ledger_for_auditors(stack: Any, traffic: dict[str, Any]) -> None:
    result = run_govstack("report", "privacy", "-i", stack.inventory, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert "# Privacy budget ledger" in text and "## Budget spent per consumer" in text
    row = next(line for line in text.splitlines() if f"| {traffic['consumer']} |" in line)
    assert row.split("|")[3].strip() != "0"  # it spent something
    asked = ",".join(sorted((traffic["big"], traffic["small"], traffic["empty"])))
    assert f"collections={asked} kind=search" in text
    assert f"an-{traffic['marker']}-spender: usage.daily" in text  # its refusal


_CONNECTS_WITH = (
    "import sys, psycopg\n"
    "from psycopg.conninfo import make_conninfo\n"
    "from govstack_app.analytics.settings import AnalyticsSettings\n"
    "try:\n"
    "    psycopg.connect(make_conninfo(AnalyticsSettings().conninfo(), password=sys.stdin.read())).close()\n"
    "    print('connects')\n"
    "except psycopg.OperationalError:\n"
    "    print('refused')\n"
)


def test_the_analytics_password_rotates_with_no_restart(stack: Any, consumer: Analytics) -> None:
    """`govstack secret rotate postgres_analytics_password` (issue 12's machinery): ALTER ROLE,
    then the file in place; the service's pool reads it per new connection, so the service keeps
    answering without a restart, the new value opens a connection and the old one no longer does."""
    container = stack.service_container("analytics")
    started = docker("inspect", "-f", "{{.State.StartedAt}}", container).stdout.strip()
    path = Path(stack.settings.secrets_dir, "postgres_analytics_password")
    old = path.read_text()
    result = run_govstack("secret", "rotate", "postgres_analytics_password", "--lock-wait", "120",
                          "-i", stack.inventory, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    new = path.read_text()
    assert new != old
    assert app_exec(stack, "python3", "-c", _CONNECTS_WITH, service="analytics", input=new).stdout.strip() == "connects"
    assert app_exec(stack, "python3", "-c", _CONNECTS_WITH, service="analytics", input=old).stdout.strip() == "refused"
    assert consumer.get("budget").status_code == 200
    assert docker("inspect", "-f", "{{.State.StartedAt}}", container).stdout.strip() == started
