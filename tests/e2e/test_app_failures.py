# ruff: noqa: F811  (pytest fixtures are imported from test_app_support and used as arguments)
"""The app under failure, on the real stack: bad inputs leave nothing behind, a worker killed
mid-batch loses nothing and indexes every document exactly once, two workers never take the same
document, and a Postgres outage during an upload burst never leaves a half-present document."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import pytest
import requests
from govstack_app import samples
from govstack_app.db import POOL_WAIT_S

from .test_app_support import (  # noqa: F401 - fixtures are used by name
    APP_SERVICE,
    POSTGRES_SERVICE,
    WORKER_SERVICE,
    Api,
    admin,
    app_exec,
    chroma_ids,
    collection,
    config,
    docker,
    keys,
    object_exists,
    reader,
    sha256,
    sql_literal,
    wait_indexed,
    writer,
)

HTTP_JOIN_S = 180
# A request waits up to POOL_WAIT_S for a connection, so an outage shorter than that is ridden out and
# proves nothing about the failure path. Postgres stays down until an upload was both sent and answered
# inside the outage: one in flight when it stopped may take POOL_WAIT_S to fail, the next as long again.
POSTGRES_OUTAGE_MAX_S = 2 * POOL_WAIT_S + 20


def count_objects(stack: Any, bucket: str) -> int:
    return sum(1 for _ in stack.s3().list_objects(bucket, recursive=True))


def collection_rows(stack: Any, name: str) -> tuple[int, int]:
    (colls,) = stack.psql(f"SELECT count(*) FROM collections WHERE name = {sql_literal(name)}")[0]
    (docs,) = stack.psql(
        "SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id"
        f" WHERE c.name = {sql_literal(name)}"
    )[0]
    return int(colls), int(docs)


def long_pdf(tag: str, pages: int = 6) -> bytes:
    """A PDF that takes the worker a few seconds (many chunks), unique per tag."""
    lines = [
        f"Document {tag} page {{p}} line {i}: the county licensing office reviews permit applications, "
        "inspects premises and publishes decisions."
        for i in range(45)
    ]
    return samples.make_pdf([[ln.format(p=p) for ln in lines] for p in range(1, pages + 1)])


def container_running(name: str) -> bool:
    r = docker("inspect", "-f", "{{.State.Running}}", name, check=False)
    return r.stdout.strip() == "true"


def wait_healthy(stack: Any, service: str, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = app_exec(stack, "govstack-app", "healthcheck", what, service=service, check=False, timeout=30)
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{service} not healthy after {timeout}s: {r.stdout} {r.stderr}")
        time.sleep(2)


def assert_indexed_exactly_once(stack: Any, collection: str, doc_ids: list[int], interrupted: int = 0) -> None:
    """Each document's chunks and vectors exist once. An attempt is counted before it starts, so a
    document a killed worker was busy with shows two attempts (at most `interrupted` of them)."""
    state = wait_indexed(stack, doc_ids)
    retried = [doc_id for doc_id, s in state.items() if s["attempts"] == 2]
    assert len(retried) <= interrupted, f"documents attempted twice: {retried} ({state})"
    for doc_id, s in state.items():
        assert s["attempts"] in (1, 2), f"document {doc_id} was attempted {s['attempts']} times"
        rows = stack.psql(f"SELECT chunk_index FROM chunks WHERE document_id = {doc_id} ORDER BY chunk_index")
        indexes = [int(r[0]) for r in rows]
        assert indexes == list(range(s["chunk_count"])), f"document {doc_id}: chunks {indexes}"
        vectors = chroma_ids(stack, collection, doc_id)
        assert vectors == sorted(f"{doc_id}:{i}" for i in indexes), f"document {doc_id}: vectors {vectors}"


# ---------------------------------------------------------------------------------------------
def test_bad_inputs_get_their_status_and_leave_nothing(
    stack: Any, writer: Api, collection: str, config: dict[str, Any]
) -> None:
    bucket = config["s3_bucket"]
    before = count_objects(stack, bucket)
    bomb = samples.make_docx_bomb(config["max_unpacked_bytes"] + 1024 * 1024)
    assert len(bomb) < config["max_upload_bytes"]  # small on the wire, huge unpacked
    cases = {
        "png": ("photo.png", samples.make_png(), 415),
        "zip": ("archive.docx", samples.make_plain_zip(), 415),
        "binary": ("blob.bin", b"\x00\x01\x02\x03" * 1000, 415),
        "bomb": ("bomb.docx", bomb, 413),
        "empty": ("empty.txt", b"", 422),
    }
    for name, (filename, data, want) in cases.items():
        r = writer.upload(collection, filename, data)
        assert r.status_code == want, (name, r.status_code, r.text[:300])
        assert r.headers.get("content-type", "").startswith("application/json"), name
        assert r.json()["detail"], name

    # over the upload limit: refused (by nginx or the app) with 413
    oversize = b"a" * (config["max_upload_bytes"] + 1)
    try:
        r = writer.upload(collection, "big.txt", oversize)
        assert r.status_code == 413, (r.status_code, r.text[:300])
    except requests.ConnectionError:
        pytest.fail("the edge reset the connection instead of answering 413")

    assert collection_rows(stack, collection) == (0, 0)
    assert count_objects(stack, bucket) == before

    # filenames are sanitized; object names are the server's
    r = writer.upload(collection, "../../etc/pass\u202ewd.txt", b"sanitized name")
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "passwd.txt"
    (object_name,) = stack.psql(f"SELECT object_name FROM documents WHERE id = {int(r.json()['id'])}")[0]
    assert re.fullmatch(r"c\d+/[0-9a-f]{32}", object_name)
    assert writer.call("DELETE", f"/api/v1/collections/{collection}/documents/{r.json()['id']}").status_code == 204


# ---------------------------------------------------------------------------------------------
def test_worker_killed_mid_batch_resumes_and_indexes_each_document_once(
    stack: Any, writer: Api, collection: str
) -> None:
    worker = stack.service_container(WORKER_SERVICE)
    ids = []
    # Frozen while the batch arrives: uploads are spaced by the edge's per-key upload rate, and
    # the worker (ONNX embeddings) used to index them as fast as they came, leaving no batch to cut.
    docker("pause", worker)
    try:
        for i in range(8):
            r = writer.upload(collection, f"permit-{i}.pdf", long_pdf(f"{collection}-{i}", pages=4))
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    finally:
        docker("unpause", worker)
    id_list = ",".join(map(str, ids))

    # kill (SIGKILL, no goodbye) once some but not all are indexed
    deadline = time.monotonic() + 240
    while True:
        (done,) = stack.psql(f"SELECT count(*) FROM documents WHERE is_indexed AND id IN ({id_list})")[0]
        if 1 <= int(done) <= len(ids) - 3:
            break
        assert int(done) < len(ids) - 2, "the worker finished before it could be killed; make documents longer"
        assert time.monotonic() < deadline, "the worker indexed nothing"
        time.sleep(0.2)
    docker("kill", "--signal", "KILL", worker)
    (at_kill,) = stack.psql(f"SELECT count(*) FROM documents WHERE is_indexed AND id IN ({id_list})")[0]
    time.sleep(3)
    if not container_running(worker):  # (a restart policy may already have brought it back)
        (later,) = stack.psql(f"SELECT count(*) FROM documents WHERE is_indexed AND id IN ({id_list})")[0]
        assert int(later) == int(at_kill), "a killed worker went on indexing"
        docker("start", worker)
    wait_healthy(stack, WORKER_SERVICE, "worker")
    assert_indexed_exactly_once(stack, collection, ids, interrupted=1)


# ---------------------------------------------------------------------------------------------
def test_two_workers_never_index_the_same_document(stack: Any, writer: Api, collection: str) -> None:
    worker = stack.service_container(WORKER_SERVICE)
    log = f"/tmp/{collection}-worker2.log"
    # a second worker process with the same configuration, next to the container's own
    docker(
        "exec",
        "-d",
        worker,
        "sh",
        "-c",
        f"echo $$ > {log}.pid; exec timeout -s TERM 400 govstack-app worker > {log} 2>&1",
    )
    try:
        time.sleep(3)
        ids = []
        for i in range(8):
            r = writer.upload(collection, f"licence-{i}.pdf", long_pdf(f"{collection}-{i}", pages=2))
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        assert_indexed_exactly_once(stack, collection, ids)
    finally:
        docker("exec", worker, "sh", "-c", f"kill -TERM $(cat {log}.pid)", check=False)
    time.sleep(2)
    second = app_exec(stack, "cat", log, service=WORKER_SERVICE).stdout
    by_second = {
        json.loads(ln)["document_id"] for ln in second.splitlines() if ln.startswith("{") and '"document indexed"' in ln
    }
    first_logs = docker("logs", "--since", "15m", worker).stdout + docker("logs", "--since", "15m", worker).stderr
    by_first = {
        json.loads(ln)["document_id"]
        for ln in first_logs.splitlines()
        if ln.startswith("{") and '"document indexed"' in ln and json.loads(ln)["document_id"] in ids
    }
    assert '"worker started"' in second, second[-2000:]
    assert by_first | by_second >= set(ids), (by_first, by_second)
    assert not (by_first & by_second & set(ids)), f"indexed by both workers: {by_first & by_second}"
    assert by_second & set(ids), "the second worker got no document (the test proves nothing); make documents longer"


def answered_during_outage(results: list[dict[str, Any]], down_since: float) -> list[dict[str, Any]]:
    """Uploads sent after Postgres stopped and already answered; nginx's own 429s never reach the app."""
    return [r for r in list(results) if r["sent"] >= down_since and r["status"] != 429]


# ---------------------------------------------------------------------------------------------
def test_postgres_outage_during_upload_burst_leaves_no_half_present_document(
    stack: Any, writer: Api, collection: str, config: dict[str, Any]
) -> None:
    bucket = config["s3_bucket"]
    postgres = stack.service_container(POSTGRES_SERVICE)
    results: list[dict[str, Any]] = []
    stop = threading.Event()

    def burst() -> None:
        for i in range(120):
            if stop.is_set():
                return
            data = f"Upload {i} of burst {collection}: road maintenance notice number {i}.\n".encode()
            sent = {"i": i, "sha": sha256(data), "sent": time.monotonic()}
            try:
                r = writer.call(
                    "POST",
                    f"/api/v1/collections/{collection}/documents",
                    files={"file": (f"notice-{i}.txt", data)},
                    retry_429=False,
                )
                json_body = r.headers.get("content-type", "").startswith("application/json")
                results.append(
                    {**sent, "status": r.status_code, "answered": time.monotonic(),
                     "body": r.json() if json_body else r.text[:200]}
                )
                if r.status_code == 429:
                    time.sleep(1.1)
            except requests.RequestException as exc:
                results.append({**sent, "status": None, "answered": time.monotonic(), "body": repr(exc)})
            time.sleep(0.3)

    t = threading.Thread(target=burst, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while sum(1 for r in results if r["status"] in (200, 201)) < 3:
            assert time.monotonic() < deadline, f"no uploads succeeded before the outage: {results[-3:]}"
            time.sleep(0.2)
        docker("stop", "--time", "10", postgres, timeout=60)
        down_since = time.monotonic()
        while not answered_during_outage(results, down_since):
            if time.monotonic() - down_since > POSTGRES_OUTAGE_MAX_S:
                break
            time.sleep(0.5)
        back_at = time.monotonic()
        docker("start", postgres)
        wait_healthy(stack, APP_SERVICE, "api", timeout=180)
        time.sleep(5)
    finally:
        stop.set()
        t.join(timeout=HTTP_JOIN_S)
    assert not t.is_alive()

    statuses = [r["status"] for r in results]
    during = answered_during_outage([r for r in results if r["answered"] <= back_at], down_since)
    assert during, f"no upload was both sent and answered during the {back_at - down_since:.0f} s outage: {statuses}"
    not_refused = [r for r in during if r["status"] != 503 or "postgres" not in json.dumps(r["body"])]
    assert not not_refused, f"uploads during the outage must be refused 503 naming postgres: {not_refused[:3]}"
    bad = [r for r in results if r["status"] not in (200, 201, 429, 502, 503, 504)]
    assert not bad, f"unexpected answers (want 2xx, 429 or 50x-unavailable): {bad[:5]}"

    # every 2xx is present afterwards, with its object and the right bytes
    ok = [r for r in results if r["status"] in (200, 201)]
    assert ok
    for r in ok:
        rows = stack.psql(f"SELECT id, object_name FROM documents WHERE sha256 = {sql_literal(r['sha'])}")
        assert len(rows) == 1, (r, rows)
        assert int(rows[0][0]) == r["body"]["id"]
        stat = stack.s3().stat_object(bucket, rows[0][1])
        assert {k.lower(): v for k, v in stat.metadata.items()}["x-amz-meta-sha256"] == r["sha"]

    # no row anywhere in the collection points at a missing object
    rows = stack.psql(
        "SELECT d.id, d.object_name, c.id FROM documents d JOIN collections c ON c.id = d.collection_id"
        f" WHERE c.name = {sql_literal(collection)}"
    )
    for doc_id, object_name, _ in rows:
        assert object_exists(stack, bucket, object_name), f"document {doc_id} has no object"

    # orphans (an object whose row never committed) are found by the cleanup and moved to the quarantine
    out = app_exec(stack, "govstack-app", "cleanup", "--min-age", "0", timeout=300)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["dry_run"] is False
    coll_id = int(rows[0][2])
    names = {o.object_name for o in stack.s3().list_objects(bucket, prefix=f"c{coll_id}/", recursive=True)}
    assert names == {r[1] for r in rows}, f"orphans left: {names - {r[1] for r in rows}}"

    # and the worker, which lost its database too, indexes every stored document
    wait_healthy(stack, WORKER_SERVICE, "worker")
    wait_indexed(stack, [int(r[0]) for r in rows])
