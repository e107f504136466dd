# ruff: noqa: F811  (pytest fixtures are imported from test_app_support and used as arguments)
"""Issue 11's failure corpus against the deployed stack: every hostile document is refused at
upload (413/415 with a JSON reason) or ends `failed` with a readable index_error within 60 s; the
worker container is never restarted (restart count, start time and PID unchanged), and a normal
document uploaded right after each one is indexed within 60 s.

The corpus is sized from the deployed limits (`govstack-app config`), generated in code
(tests/support/corpus.py), and shares the session's stack.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from typing import Any

import pytest

from tests.support import corpus

from .test_app_support import (  # noqa: F401 - fixtures are used by name
    WORKER_SERVICE,
    Api,
    admin,
    app_exec,
    config,
    docker,
    keys,
    samples,
    sql_literal,
    unique,
    writer,
)

# The bound for each document to settle, and for the normal one after it.
SETTLE_S = 60
UPLOAD_REFUSALS = {"too_large": 413, "unsupported": 415}


def worker_identity(stack: Any) -> tuple[str, str, str]:
    """What changes when the worker container restarts: restart count, start time, PID."""
    name = stack.service_container(WORKER_SERVICE)
    out = docker("inspect", "-f", "{{.RestartCount}} {{.State.StartedAt}} {{.State.Pid}}", name).stdout.split()
    return out[0], out[1], out[2]


def container_healthy(stack: Any) -> bool:
    name = stack.service_container(WORKER_SERVICE)
    return docker("inspect", "-f", "{{.State.Health.Status}}", name, check=False).stdout.strip() == "healthy"


def document_state(stack: Any, doc_id: int) -> tuple[bool, bool, str, int]:
    ((indexed, failed, error, attempts),) = stack.psql(
        f"SELECT is_indexed, index_failed, coalesce(index_error, ''), index_attempts FROM documents WHERE id = {doc_id}"
    )
    return indexed in (True, "t"), failed in (True, "t"), error, int(attempts)


def wait_settled(stack: Any, doc_id: int, timeout: float = SETTLE_S) -> tuple[bool, bool, str, int]:
    """Poll until the document is indexed or failed; a bounded wait, not a speed assertion."""
    deadline = time.monotonic() + timeout
    while True:
        state = document_state(stack, doc_id)
        if state[0] or state[1]:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"document {doc_id} still pending after {timeout} s: {state}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def hostile_corpus(config: dict[str, Any]) -> list[tuple[corpus.Hostile, bytes]]:
    items = corpus.failure_corpus(
        config["max_unpacked_bytes"],
        config["pdf_max_stream_bytes"],
        config["max_text_bytes"],
        config["pdf_max_objects"],
    )
    built = [(item, item.make()) for item in items]
    for item, data in built:
        assert len(data) <= config["max_upload_bytes"], f"{item.name} would be refused for its size alone"
    return built


@pytest.fixture(scope="module")
def worker_before(stack: Any) -> tuple[str, str, str]:
    return worker_identity(stack)


def test_failure_corpus(
    stack: Any, writer: Api, hostile_corpus: list[tuple[corpus.Hostile, bytes]], worker_before: tuple[str, str, str]
) -> None:
    collection = unique("hostile")
    outcomes: dict[str, str] = {}
    for item, data in hostile_corpus:
        response = writer.upload(collection, item.filename, data)
        if item.upload is not None:
            assert response.status_code == UPLOAD_REFUSALS[item.upload], (
                item.name,
                response.status_code,
                response.text,
            )
            assert response.headers["content-type"].startswith("application/json"), item.name
            assert response.json()["detail"], item.name
            outcomes[item.name] = f"{response.status_code}: {response.json()['detail']}"
        else:
            assert response.status_code == 201, (item.name, response.status_code, response.text[:300])
            doc_id = int(response.json()["id"])
            indexed, failed, error, attempts = wait_settled(stack, doc_id)
            assert failed and not indexed, (item.name, error)
            assert re.search(item.extraction, error), (item.name, error)
            assert attempts >= 1, item.name
            outcomes[item.name] = f"failed after {attempts}: {error}"
        # A normal document right after: indexed within the same bound.
        name, normal = samples.topic_document("txt", salt=f"{item.name}-{unique('n')}")
        response = writer.upload(collection, name, normal)
        assert response.status_code == 201, response.text
        indexed, failed, error, _ = wait_settled(stack, int(response.json()["id"]))
        assert indexed and not failed, (item.name, "normal document after it", error)
        assert worker_identity(stack) == worker_before, f"the worker restarted after {item.name}"
    print("\n".join(f"{name}: {outcome}" for name, outcome in outcomes.items()))


def worker_metric(stack: Any, name: str, labels: str) -> float:
    script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())"
    text = app_exec(stack, "python3", "-c", script, service=WORKER_SERVICE).stdout
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_an_attempt_is_counted_before_the_work_and_survives_a_killed_worker(stack: Any, writer: Api) -> None:
    """The worker is killed (SIGKILL from the host) while it extracts a document: the attempt is
    already committed, nothing else is; after the restart and its backoff the document is indexed
    on its second attempt."""
    collection = unique("attempts")
    response = writer.upload(collection, "drawings.pdf", corpus.pdf_slow_to_extract(text=f"Register {collection}"))
    assert response.status_code == 201, response.text
    doc_id = int(response.json()["id"])
    deadline = time.monotonic() + SETTLE_S
    while document_state(stack, doc_id)[3] == 0:  # not claimed yet
        assert time.monotonic() < deadline, "the worker never claimed the document"
        time.sleep(0.1)
    restarts, _, pid = worker_identity(stack)
    os.kill(int(pid), signal.SIGKILL)  # the container's main process: the restart policy brings it back
    indexed, failed, error, attempts = document_state(stack, doc_id)
    assert (indexed, failed, error, attempts) == (False, False, "", 1)

    deadline = time.monotonic() + 180
    while worker_identity(stack)[0] == restarts or not container_healthy(stack):
        assert time.monotonic() < deadline, "the worker did not come back"
        time.sleep(1)
    indexed, failed, error, attempts = wait_settled(stack, doc_id, timeout=120)
    assert indexed and not failed and attempts == 2, (error, attempts)


def set_indexing_color(stack: Any, color: str) -> None:
    """The blue/green switch's own lever (govstack.operations.indexing_color_set): only the
    named color's worker indexes."""
    stack.psql(
        "INSERT INTO app_state (key, value) VALUES ('indexing_color', "
        f"{sql_literal(color)}) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
    )


def test_attempts_that_all_ended_without_an_outcome_fail_the_document(
    stack: Any, writer: Api, config: dict[str, Any]
) -> None:
    """As if the worker had died during every attempt: indexing is paused, a document gets
    index_max_attempts started attempts, indexing resumes, and the next claim fails it (cause
    attempts) instead of trying once more."""
    collection = unique("given-up")
    rows = stack.psql("SELECT value FROM app_state WHERE key = 'indexing_color'")
    before = worker_metric(stack, "govstack_documents_failed_total", 'cause="attempts"')
    set_indexing_color(stack, "paused-by-test")
    try:
        time.sleep(3)  # the worker finishes what it holds and sees the pause
        name, data = samples.topic_document("md", salt=collection)
        response = writer.upload(collection, name, data)
        assert response.status_code == 201, response.text
        doc_id = int(response.json()["id"])
        stack.psql(
            f"UPDATE documents SET index_attempts = {int(config['index_max_attempts'])},"
            f" index_error = 'timeout: extraction took longer than 40 s' WHERE id = {doc_id}"
        )
    finally:
        if rows:
            set_indexing_color(stack, rows[0][0])
        else:
            stack.psql("DELETE FROM app_state WHERE key = 'indexing_color'")
    indexed, failed, error, attempts = wait_settled(stack, doc_id)
    assert failed and not indexed and attempts == config["index_max_attempts"], (error, attempts)
    assert error.startswith(f"attempts: {attempts} attempts started and none finished"), error
    assert error.endswith("last error: timeout: extraction took longer than 40 s"), error
    assert worker_metric(stack, "govstack_documents_failed_total", 'cause="attempts"') == before + 1


# Runs in the API container against the app itself (nginx streams uploads through unbuffered, but
# its per-client upload rate would space the connections out): every slot is taken by an upload
# whose body never finishes, plus one more. Parameters come on stdin, the verdict on stdout.
SPOOL_PROBE = r"""
import json, os, select, socket, sys, time
from govstack_app.settings import Settings

params = json.load(sys.stdin)
settings = Settings()
slots = settings.max_concurrent_uploads
boundary = "govstack-spool-probe"
part = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="held.txt"\r\n'
        'Content-Type: text/plain\r\n\r\n').encode()
declared = len(part) + (1 << 20) + len(f"\r\n--{boundary}--\r\n")
head = (f"POST /api/v1/collections/{params['collection']}/documents HTTP/1.1\r\nHost: app\r\n"
        + (f"X-API-Key: {params['key']}\r\n" if params["key"] else "")
        + f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {declared}\r\n\r\n").encode()
conns = []
for _ in range(slots + 1):
    conn = socket.create_connection(("127.0.0.1", 8000), timeout=30)
    conn.sendall(head + part + b"x" * 65536)  # a body that never finishes: the slot stays taken
    conns.append(conn)
answers = {}
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    ready, _, _ = select.select([c for c in conns if c not in answers], [], [], 1)
    for conn in ready:
        answer = b""
        while chunk := conn.recv(65536):  # the refusal closes the connection (its body was never read)
            answer += chunk
        answers[conn] = answer.decode(errors="replace")
    if answers and not ready:
        break  # one quiet second after the first answer: the held uploads are still waiting
spool = os.statvfs("/tmp")
print(json.dumps({
    "slots": slots,
    "slot_bytes": settings.upload_slot_bytes,
    "spool_bytes": spool.f_blocks * spool.f_frsize,
    "answers": list(answers.values()),
}))
for conn in conns:
    conn.close()
"""


def test_uploads_beyond_the_spool_are_refused_with_503_and_give_their_slots_back(stack: Any, writer: Api) -> None:
    """Every upload slot held by an upload whose body has not finished, plus one more: only that
    one is answered, 503 with Retry-After and a JSON reason, before its body is read; the /tmp
    tmpfs holds every admitted upload at its limit. Once the held uploads go away, uploads are
    admitted again."""
    collection = unique("spool")
    probe = app_exec(
        stack,
        "python3",
        "-c",
        SPOOL_PROBE,
        input=json.dumps({"collection": collection, "key": writer.key}),
        timeout=90,
    )
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["slots"] >= 1
    assert result["spool_bytes"] >= result["slots"] * result["slot_bytes"], result
    assert len(result["answers"]) == 1, result["answers"]
    head, _, body = result["answers"][0].partition("\r\n\r\n")
    status, *header_lines = head.split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert status.startswith("HTTP/1.1 503"), head
    assert headers["retry-after"].isdigit(), head
    assert "too many uploads in progress" in json.loads(body)["detail"], body

    name, data = samples.topic_document("txt", salt=collection)
    deadline = time.monotonic() + SETTLE_S  # the app sees the held uploads' disconnects
    while (response := writer.upload(collection, name, data)).status_code == 503:
        assert time.monotonic() < deadline, response.text
        time.sleep(1)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("key", [None, "gsk_not_a_key_0123456789abcdef"], ids=["anonymous", "invalid-key"])
def test_uploads_without_a_valid_key_never_hold_a_spool_slot(stack: Any, key: str | None) -> None:
    """The spool's slots go only to keys that may upload: slots + 1 anonymous (or wrong-key)
    uploads whose bodies never finish are all answered 401 at once, none is held."""
    probe = app_exec(
        stack,
        "python3",
        "-c",
        SPOOL_PROBE,
        input=json.dumps({"collection": unique("spool"), "key": key}),
        timeout=90,
    )
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert len(result["answers"]) == result["slots"] + 1, result["answers"]
    for answer in result["answers"]:
        assert answer.startswith("HTTP/1.1 401"), answer[:200]
