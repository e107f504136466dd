"""`govstack status` and `govstack cost` against the deployed test stack."""

import json
import subprocess
import time

from tests.conftest import FORWARDER_LABEL, run_govstack


def test_status_reports_targets_alerts_release_and_figures(stack):
    deadline = time.monotonic() + 120
    while True:
        result = run_govstack("status", "--json", "-i", stack.inventory, timeout=60)
        assert result.returncode == 0, result.stderr
        [status] = json.loads(result.stdout)
        if all(t["up"] for t in status["targets"]) or time.monotonic() > deadline:
            break
        time.sleep(5)
    release = stack.current_release()
    assert status["serving"] == {"color": release.color, "version": release.version}
    jobs = {t["job"] for t in status["targets"]}
    assert {"prometheus", "app", "postgres", "nginx", "node", "alertmanager"} <= jobs
    assert all(t["up"] for t in status["targets"]), [t for t in status["targets"] if not t["up"]]
    assert status["indexing_backlog"] is not None
    if stack.settings.pitr_enabled:
        assert status["wal_pending_segments"] is not None and status["base_backup_age_s"] is not None
    human = run_govstack("status", "-i", stack.inventory, timeout=60).stdout
    assert f"serving {release.color} {release.version}" in human
    if stack.settings.pitr_enabled:
        assert "WAL archive: lag" in human and "base backup age" in human


def test_status_fails_fast_and_names_prometheus_when_it_is_down(stack):
    stack.compose(stack.settings.project, "stop", "prometheus")
    try:
        started = time.monotonic()
        result = run_govstack("status", "-i", stack.inventory, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        stack.compose(stack.settings.project, "start", "prometheus")
        stack.wait_healthy("prometheus")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("govstack: @local: Prometheus does not answer")
    # No retry loop: the CLI's own start-up dominates (bounded generously).
    assert elapsed < 20, elapsed


def test_cost_prices_every_running_service_and_leaves_out_one_that_goes(stack):
    """Every service of the stack is priced at the settings' rates. A container of the stack's
    project that is removed inside the window (a one-off `compose run --rm`, the old color after a
    switch) is named as not priced, and does not fail the report: `cost` read its stats after it was
    gone and failed with the engine's 404."""
    name = f"{stack.settings.project}-cost-oneoff"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    # Alive when `cost` lists the containers (the CLI starts in 1-3 s), gone before the window ends.
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "--entrypoint", "sleep",
         "--label", f"com.docker.compose.project={stack.settings.project}",
         "--label", "com.docker.compose.service=cost-oneoff",
         "--label", f"{FORWARDER_LABEL}={stack.settings.project}",
         "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
         stack.plan.app_image(stack.current_release().version), "8"],
        check=True, capture_output=True,
    )
    result = run_govstack("cost", "--json", "--window", "14", "-i", stack.inventory, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert {"project": stack.settings.project, "service": "cost-oneoff", "why": "gone during the window"} \
        in report["left_out"]
    services = {(c["project"], c["service"]) for c in report["services"]}
    assert (stack.settings.project, "cost-oneoff") not in services
    assert (stack.settings.project, "postgres") in services
    assert (stack.app_project, "api") in services
    prices = stack.settings.cost
    for c in report["services"]:
        expected = c["cpu_cores"] * prices.cpu_core_hour + c["memory_gib"] * prices.memory_gb_hour
        assert abs(c["per_hour"] - expected) < 1e-4
        assert c["memory_gib"] > 0
