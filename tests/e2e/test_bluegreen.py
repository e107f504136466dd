"""Blue/green releases under load: zero failed requests, and the failure cases
that must leave traffic where it was."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_govstack
from tests.e2e.test_app_support import Api, wait_indexed
from tests.support.search_load import SearchClients, ok_rate, release_under_load

SEARCH_COLLECTION = "bluegreen"
# Authenticated searches/s through nginx across a deploy and a rollback (issue 15).
MIN_RPS = 50
DRIVE_RPS = 60
IDLE_SECONDS = 10


@pytest.fixture(scope="module")
def searchable(stack):
    """One indexed document, so searches under load have something to find."""
    api = Api(stack, stack.admin_api_key)
    response = api.upload(SEARCH_COLLECTION, "archive.txt", b"The national archive keeps land records since 1902.")
    assert response.status_code in (200, 201), response.text
    wait_indexed(stack, [int(response.json()["id"])])
    return SEARCH_COLLECTION


def release(stack) -> dict:
    return json.loads(Path(stack.settings.stack_root, "state", "release.json").read_text())


def live_nginx_conf(stack) -> str:
    return Path(stack.settings.config_dir, "nginx", "nginx.conf").read_text()


def tag_current_image_as(stack, version: str) -> None:
    """Obtain a version without building (an image that already exists is that version)."""
    current = f"govstack/app:{release(stack)['version']}"
    subprocess.run(["docker", "tag", current, f"govstack/app:{version}"], check=True)


@pytest.fixture(scope="module")
def search_clients(stack, searchable):
    """Client containers nginx sees as distinct addresses, each with reader keys of its own."""
    clients = SearchClients.start(stack, searchable)
    yield clients
    clients.remove()


@pytest.fixture(scope="module")
def driven_rps(search_clients) -> float:
    """The rate the switch is driven at: DRIVE_RPS searches/s when the idle
    stack answers them with room to spare; on a machine that cannot answer
    even MIN_RPS when idle, 80 % of what it does answer (printed, both)."""
    idle = search_clients.measure_max(seconds=IDLE_SECONDS)
    assert not idle.failures, f"{len(idle.failures)} failed idle searches, e.g. {idle.failures[:3]}"
    idle_max = ok_rate(idle)
    capped = " (at least: the clients' pacing under the per-key limits caps it)" \
        if idle_max >= 0.95 * search_clients.max_measurable_rps else ""
    rps = min(DRIVE_RPS, max(MIN_RPS, 0.8 * idle_max)) if idle_max >= MIN_RPS else 0.8 * idle_max
    print(f"\nidle maximum {idle_max:.1f} searches/s through nginx{capped}; "
          f"driving the switch at {rps:.1f}/s ({rps / idle_max:.0%} of it): {idle.summary()}")
    return rps


def assert_zero_failures(result, report, action: str, rps: float) -> None:
    assert result.returncode == 0, f"{action} failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    print(f"\n{action} at {rps:.1f} searches/s offered: {report.summary()}")
    # The load was what this test claims (a stalled client would offer less).
    assert report.rate >= 0.9 * rps, f"load was only {report.rate:.1f} searches/s of {rps:.1f}"
    failures = report.failures
    assert not failures, f"{len(failures)} failed requests, e.g. {failures[:3]}"
    colors = {sample.color for sample in report.samples}
    assert colors <= {"blue", "green"}, f"answers from unknown colors: {colors}"


def test_deploy_and_rollback_under_load_fail_no_request(stack, search_clients, driven_rps):
    before = release(stack)
    version = f"bg-{uuid.uuid4().hex[:8]}"
    tag_current_image_as(stack, version)

    result, report, ready_at = release_under_load(stack, search_clients, driven_rps, "deploy", "--version", version)
    assert_zero_failures(result, report, f"deploy {version}", driven_rps)
    after = release(stack)
    assert after["version"] == version and after["color"] != before["color"]
    assert after["previous"]["version"] == before["version"]
    served = report.first_served_by(after["color"])
    assert served is not None and ready_at is not None, "the new color never answered"
    print(f"new color {after['color']} ready -> first request served by it: {served - ready_at:.2f} s")
    # Only the new color still runs; the old one is kept, stopped, for rollback.
    old_api = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"name={stack.settings.project}-{before['color']}-api",
         "--format", "{{.State}}"], capture_output=True, text=True, check=True).stdout.split()
    assert old_api == ["exited"]

    result, report, _ = release_under_load(stack, search_clients, driven_rps, "rollback")
    assert_zero_failures(result, report, "rollback", driven_rps)
    assert release(stack)["version"] == before["version"]
    assert release(stack)["color"] == before["color"]

    history = run_govstack("history", "--json", "-i", stack.inventory).stdout
    records = [json.loads(line) for line in history.splitlines()]
    assert [(r["action"], r["version"], r["result"]) for r in records[-2:]] == [
        ("deploy", version, "ok"), ("rollback", before["version"], "ok")]
    assert all(r["config_hash"] == stack.settings.config_hash() for r in records[-2:])


def test_version_that_never_gets_ready_is_not_switched_to(stack, tmp_path):
    before, conf_before = release(stack), live_nginx_conf(stack)
    version = f"never-ready-{uuid.uuid4().hex[:6]}"
    # Migrations work, the API never starts: its healthcheck never passes.
    (tmp_path / "Dockerfile").write_text(
        f"FROM govstack/app:{before['version']}\n"
        'ENTRYPOINT ["sh", "-c", "[ \\"$0\\" = migrate ] && exec govstack-app migrate; exec sleep infinity"]\n'
    )
    subprocess.run(["docker", "build", "-q", "-t", f"govstack/app:{version}", str(tmp_path)], check=True,
                   capture_output=True)
    result = run_govstack("deploy", "--version", version, "-i", stack.inventory, timeout=900,
                          env={"GOVSTACK__HEALTHY_TIMEOUT_S": "25"})
    assert result.returncode != 0
    cause = result.stderr.strip().splitlines()[-1]
    assert cause.startswith(f"govstack: deploy of {version} failed, traffic stays on the previous color")
    assert "did not become healthy" in cause
    assert release(stack) == before
    assert live_nginx_conf(stack) == conf_before
    api = Api(stack, stack.admin_api_key)
    assert api.call("GET", "/ready").status_code == 200
    idle = stack.plan.app_project("green" if before["color"] == "blue" else "blue")
    stack.compose(idle, "-f", f"{stack.settings.stack_root}/app/{idle.rsplit('-', 1)[1]}.yml", "stop", "-t", "5")
    last = json.loads(run_govstack("history", "--json", "-i", stack.inventory).stdout.splitlines()[-1])
    assert (last["version"], last["result"]) == (version, "failed")


def test_rejected_nginx_config_keeps_the_old_one_serving(stack):
    before, conf_before = release(stack), live_nginx_conf(stack)
    version = f"badedge-{uuid.uuid4().hex[:6]}"
    tag_current_image_as(stack, version)
    result = run_govstack("deploy", "--version", version, "-i", stack.inventory, timeout=900,
                          env={"GOVSTACK__EDGE__EXTRA_SERVER_CONFIG": "no_such_directive on;"})
    assert result.returncode != 0
    assert "nginx rejected the new config" in result.stderr
    assert release(stack) == before
    assert live_nginx_conf(stack) == conf_before
    health = Api(stack, None).call("GET", "/ready")
    assert health.status_code == 200 and health.headers["x-govstack-color"] == before["color"]
    # The candidate is rendered again, valid, by the next converge.
    idle_color = "green" if before["color"] == "blue" else "blue"
    stack.compose(stack.plan.app_project(idle_color), "-f", f"{stack.settings.stack_root}/app/{idle_color}.yml",
                  "stop", "-t", "5")
    assert run_govstack("up", "-i", stack.inventory).returncode == 0
    assert live_nginx_conf(stack) == conf_before


def test_second_concurrent_deploy_is_refused_naming_the_holder(stack):
    version = f"lock-{uuid.uuid4().hex[:6]}"
    tag_current_image_as(stack, version)
    holder = Path(stack.settings.stack_root, "state", "lock-holder.json")
    first = subprocess.Popen([str(REPO_ROOT / ".venv" / "bin" / "govstack"), "deploy", "--version", version,
                              "-i", stack.inventory], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while f"deploy {version}" not in (holder.read_text() if holder.exists() else ""):
            assert time.monotonic() < deadline and first.poll() is None, "the first deploy never took the lock"
            time.sleep(0.2)
        second = run_govstack("deploy", "--version", version, "-i", stack.inventory, timeout=120)
        assert second.returncode == 3
        assert "locked by" in second.stderr and f"(deploy {version}; pid {first.pid} on " in second.stderr
    finally:
        out, err = first.communicate(timeout=900)
    assert first.returncode == 0, err[-2000:]
    assert holder.read_text() == "", "the lock's holder record was not cleared"
