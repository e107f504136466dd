"""Live alert test: break a component of the deployed test stack and prove
that the alert reaches a webhook receiver, and that its resolution does too.

Needs the deployed test stack with govstack.monitoring.TEST_PROFILE (short
`for:` durations, webhook to TEST_WEBHOOK_URL) through the `stack` fixture:
``.settings``, ``.compose(project, *args)``, ``.prometheus_query(promql)``
(the instant query's ``data.result`` list; raises on a Prometheus error).

The receiver is a container on the stack's internal data network (a server
on the host is not reachable from there): busybox httpd from the offline
Prometheus image, whose CGI appends each POSTed notification to a file.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from govstack import monitoring
from govstack.monitoring.promtool import ensure_tool_image
from govstack.plan import StackPlan

pytestmark = pytest.mark.full

RECEIVER = "montest-alert-receiver"
RECEIVER_URL = urllib.parse.urlsplit(monitoring.TEST_WEBHOOK_URL)
# busybox httpd runs cgi-bin/* with the POST body on stdin (CONTENT_LENGTH
# bytes). Alertmanager's payload is one line of JSON.
RECEIVER_CGI = """#!/bin/sh
head -c "${CONTENT_LENGTH:-0}" >> /tmp/alerts/alerts.jsonl
echo >> /tmp/alerts/alerts.jsonl
printf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'
"""
FIRE_TIMEOUT_S = 180


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=120)


def start_receiver(network: str, workdir: Path, image: str) -> None:
    cgi = workdir / "cgi-bin" / "alerts"
    cgi.parent.mkdir(parents=True)
    cgi.write_text(RECEIVER_CGI)
    for path in (workdir, cgi.parent):
        path.chmod(0o755)
    cgi.chmod(0o755)
    _docker("rm", "-f", RECEIVER, check=False)
    _docker(
        "run", "-d", "--name", RECEIVER, "--network", network,
        "--network-alias", RECEIVER_URL.hostname or "alert-receiver",
        "--user", "10001:10001", "--read-only", "--cap-drop", "ALL",
        "--tmpfs", "/tmp/alerts:uid=10001,gid=10001,mode=0700",
        "-v", f"{workdir}:/srv:ro", "--entrypoint", "busybox", image,
        "httpd", "-f", "-p", str(RECEIVER_URL.port), "-h", "/srv",
    )


def notifications() -> list[dict]:
    """Every webhook payload received so far, oldest first."""
    out = _docker("exec", RECEIVER, "sh", "-c", "cat /tmp/alerts/alerts.jsonl 2>/dev/null || true").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for_notification(alertname: str, status: str, since: int, **labels: str) -> dict:
    """The first alert (with its payload's status) named ``alertname`` whose
    labels include ``labels``, in a notification received after the first
    ``since`` ones."""
    deadline = time.monotonic() + FIRE_TIMEOUT_S
    while time.monotonic() < deadline:
        for payload in notifications()[since:]:
            for alert in payload.get("alerts", []):
                got = alert.get("labels", {})
                if (
                    got.get("alertname") == alertname
                    and alert.get("status") == status
                    and all(got.get(k) == v for k, v in labels.items())
                ):
                    return alert
        time.sleep(2)
    seen = [
        (a["labels"].get("alertname"), a.get("status")) for p in notifications() for a in p.get("alerts", [])
    ]
    raise AssertionError(f"no {status} {alertname} {labels} within {FIRE_TIMEOUT_S}s; received: {seen}")


def firing_alerts(stack, alertname: str) -> list[dict]:
    return stack.prometheus_query(f'ALERTS{{alertname="{alertname}",alertstate="firing"}}')


@pytest.fixture(scope="module")
def receiver(stack, tmp_path_factory):
    settings = stack.settings
    if monitoring.TEST_WEBHOOK_URL not in settings.monitoring.webhook_urls:
        pytest.fail(
            f"the test stack must be deployed with monitoring.TEST_PROFILE (webhook {monitoring.TEST_WEBHOOK_URL})"
        )
    image = ensure_tool_image(settings, "prometheus")
    network = StackPlan(settings, None).networks["data"]
    start_receiver(network, tmp_path_factory.mktemp("alert-receiver"), image)
    yield
    _docker("rm", "-f", RECEIVER, check=False)


def _assert_annotated(alert: dict, settings) -> None:
    annotations = alert.get("annotations", {})
    assert annotations.get("summary") and annotations.get("description"), alert
    assert annotations.get("runbook_url", "").startswith(settings.monitoring.runbook_base_url + "/"), alert


def test_postgres_down_reaches_the_webhook_and_so_does_its_resolution(stack, receiver):
    project = stack.settings.project
    assert not firing_alerts(stack, "PostgresDown"), "PostgresDown fires before the test broke anything"
    since = len(notifications())
    stack.compose(project, "stop", "postgres")
    try:
        fired = wait_for_notification("PostgresDown", "firing", since, component="postgres")
        _assert_annotated(fired, stack.settings)
        assert fired["labels"]["severity"] == stack.settings.monitoring.alerts.postgres_down.severity
    finally:
        stack.compose(project, "start", "postgres")
        stack.wait_healthy("postgres")
    resolved = wait_for_notification("PostgresDown", "resolved", since, component="postgres")
    assert resolved["endsAt"] >= fired["startsAt"]


def test_target_down_on_an_app_color_reaches_the_webhook_and_so_does_its_resolution(stack, receiver):
    up = stack.prometheus_query('up{job="app"} == 1')
    assert up, "no app color is up: nothing to stop"
    # Stop a color that does not serve traffic when there is one.
    target = sorted(up, key=lambda r: r["metric"].get("serving") == "true")[0]["metric"]
    color = target["color"]
    project = StackPlan(stack.settings, None).app_project(color)
    since = len(notifications())
    stack.compose(project, "stop", "api")
    try:
        fired = wait_for_notification("TargetDown", "firing", since, job="app", color=color)
        _assert_annotated(fired, stack.settings)
        assert fired["labels"]["instance"] == target["instance"]
    finally:
        stack.compose(project, "start", "api")
    wait_for_notification("TargetDown", "resolved", since, job="app", color=color)
