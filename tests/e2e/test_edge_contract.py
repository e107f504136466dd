"""The published OpenAPI is what clients get through the edge: schemathesis (examples, coverage
and fuzzing phases, bounded by max examples) against the deployed nginx, with an admin key of its
own and request rates under the edge's limits. It must find no server error and no status code,
content type, header or schema that the OpenAPI does not document.

What it made with its key is cleaned up afterwards: the keys it created are revoked, and the
collections it created and left empty are dropped (rows only: Chroma collections are made at
indexing)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from tests.e2e.test_app_support import APP_SERVICE, Api, app_exec, docker, sql_literal, unique

# Per operation in the fuzzing phase; the coverage phase adds its own deterministic cases
# (boundaries, missing and wrong-typed fields, unexpected methods), about 400 requests in all.
MAX_EXAMPLES = 5
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "use_after_free",
)


def _toml(value: Any) -> str:
    return json.dumps(value)  # a JSON string or list is a TOML basic string or array


UPLOAD = ("/api/v1/collections/{collection}/documents", "post")


def schemathesis_config(stack: Any, key: str, report: Path, upload_operation_id: str) -> str:
    """schemathesis.toml: the edge, the key, rates under the per-key limits (uploads have their own).

    The upload's rate is chosen by its operation id: an [[operations]] entry's include-path and
    include-method are alternatives (either matches), so naming both would slow every POST and
    every request on the path to the upload rate."""
    edge = stack.settings.edge
    lines = [
        f"base-url = {_toml(stack.base_url)}",
        f"tls-verify = {_toml(stack.verify)}",
        "workers = 1",
        f"rate-limit = {_toml(f'{max(1, edge.api_key_rate_per_s - 2)}/s')}",
        "request-timeout = 60",
        f"headers = {{ \"X-API-Key\" = {_toml(key)} }}",
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        "[phases.stateful]",
        "enabled = false",
        "[reports.junit]",
        "enabled = true",
        f"path = {_toml(str(report))}",
        "[checks]",
        "enabled = false",
        *(f"{check}.enabled = true" for check in CHECKS),
        "[[operations]]",
        f"include-operation-id = {_toml(upload_operation_id)}",
        f"rate-limit = {_toml(f'{edge.upload_key_rate_per_s}/s')}",
        # multipart/form-data carries no types: an "integer" file part or a "boolean" created_by
        # arrives as its text, which is a valid value, and schemathesis calls the 201 a
        # schema-violating request accepted (seen once in ~400 fuzzed uploads). Every other check
        # still runs on the upload.
        "checks.negative_data_rejection.enabled = false",
    ]
    return "\n".join(lines) + "\n"


def test_the_published_openapi_is_what_clients_get_through_the_edge(stack, tmp_path, capsys):
    admin = Api(stack, stack.admin_api_key)
    name = unique("schemathesis")
    created = admin.call("POST", "/api/v1/keys", json={"name": name, "role": "admin"})
    assert created.status_code == 201, created.text
    config = tmp_path / "schemathesis.toml"
    report = tmp_path / "junit.xml"
    spec = admin.call("GET", "/openapi.json").json()
    upload_operation_id = spec["paths"][UPLOAD[0]][UPLOAD[1]]["operationId"]
    config.write_text(schemathesis_config(stack, created.json()["api_key"], report, upload_operation_id))
    cli = Path(sys.executable).with_name("schemathesis")
    started = time.monotonic()
    try:
        result = subprocess.run(
            [str(cli), "--config-file", str(config), "--no-color", "run", f"{stack.base_url}/openapi.json"],
            capture_output=True, text=True, timeout=1200,
            cwd=tmp_path,  # its crash cache (.schemathesis/) stays out of the worktree
        )
    finally:
        admin.call("DELETE", f"/api/v1/keys/{name}")
        maker = sql_literal(name)
        stack.psql(f"UPDATE api_keys SET is_active = false, revoked_at = now() WHERE created_by = {maker}"
                   " AND is_active")
        stack.psql(f"DELETE FROM collections c WHERE created_by = {maker}"
                   " AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.collection_id = c.id)")
    seconds = time.monotonic() - started
    summary = "\n".join(line for line in result.stdout.splitlines() if line.strip())
    suites = ElementTree.parse(report).getroot()
    cases = list(suites.iter("testcase"))
    failed = [case.get("name") for case in cases if case.find("failure") is not None or case.find("error") is not None]
    with capsys.disabled():
        print(f"\nschemathesis: {len(cases)} operations, exit {result.returncode} in {seconds:.0f} s "
              f"(max {MAX_EXAMPLES} examples per operation)\n" + summary[summary.rfind("SUMMARY"):][:1500])
    operations = sum(len(item) for item in spec["paths"].values())
    assert len(cases) == operations, summary[-3000:]
    assert not failed and result.returncode == 0, f"{failed}\n{summary[-6000:]}\n{result.stderr[-2000:]}"


def test_text_postgres_cannot_store_is_a_422_naming_the_field(stack):
    """Found by schemathesis (full run of 2026-12-05): a search query holding NUL reached Postgres
    and answered 500. Through the edge with a real key: 422 naming the field, for every mode and
    for an upload's created_by; the same request without the NUL is served."""
    api = Api(stack, stack.admin_api_key)
    for mode in ("hybrid", "keyword", "vector"):
        refused = api.call("POST", "/api/v1/search",
                           json={"query": "tax\u0000form", "collection": "forms", "mode": mode})
        assert refused.status_code == 422, (mode, refused.status_code, refused.text)
        assert "NUL" in refused.text and "query" in refused.text and refused.json()["request_id"]
    served = api.call("POST", "/api/v1/search",
                      json={"query": "tax form", "collection": unique("nul"), "mode": "hybrid"})
    assert served.status_code in (200, 404), served.text  # no such collection: 404, never 500
    upload = api.call("POST", f"/api/v1/collections/{unique('nul')}/documents", files={"file": ("a.txt", b"text")},
                      data={"created_by": "clerk\x00"})
    assert upload.status_code == 422 and "created_by" in upload.text, (upload.status_code, upload.text)


def test_health_is_the_same_answer_at_the_edge_and_in_the_app(stack):
    edge = Api(stack, None).call("GET", "/health")
    fetch = ("import urllib.request; "
             "print(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=10).read().decode())")
    app = json.loads(app_exec(stack, "python3", "-c", fetch).stdout)
    assert edge.status_code == 200 and edge.headers["Content-Type"] == "application/json"
    assert edge.json() == app == {"status": "ok", "version": stack.current_release().version,
                                  "color": stack.current_release().color}
    # Methods: the edge answers /health itself, and refuses others as the app would (405, Allow).
    refused = Api(stack, None).call("POST", "/health")
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET"
    assert refused.json()["detail"] == "method POST not allowed" and refused.json()["request_id"]



def test_ready_tells_anonymous_clients_which_check_failed_never_why(stack):
    """Chroma frozen (docker pause: connections are accepted, nothing answers) fails /ready's heartbeat
    with a read timeout. Through the edge, without a key, the answer names the check and nothing of the
    cause; the cause is in the app's log."""
    chroma = stack.service_container("chroma")
    api = stack.service_container(APP_SERVICE)
    since = str(int(time.time()) - 1)  # docker logs --since: the host's clock is the containers'
    docker("pause", chroma)
    try:
        ready = Api(stack, None).call("GET", "/ready", retry_429=False)
    finally:
        docker("unpause", chroma)
    assert ready.status_code == 503, ready.text
    assert ready.json() == {"status": "unavailable", "failed": ["chroma"],
                            "checks": {"postgres": "ok", "object_store": "ok", "chroma": "error"}}
    assert not re.search(r"(?i)timeout|error\(|heartbeat|http|\d+\.\d+\.\d+\.\d+|:\d{2,5}\b", ready.text)
    logged = [json.loads(line) for line in docker("logs", "--since", since, api).stdout.splitlines()
              if line.startswith("{") and "readiness check failed" in line]
    assert logged and logged[-1]["check"] == "chroma" and "heartbeat" in logged[-1]["error"], logged
    stack.wait_healthy("chroma")
