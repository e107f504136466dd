"""`govstack status` and `govstack cost` against the deployed test stack."""

import json
import time

from tests.conftest import run_govstack


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


def test_cost_prices_every_running_service(stack):
    result = run_govstack("cost", "--json", "--window", "4", "-i", stack.inventory, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    services = {(c["project"], c["service"]) for c in report["services"]}
    assert (stack.settings.project, "postgres") in services
    assert (stack.app_project, "api") in services
    prices = stack.settings.cost
    for c in report["services"]:
        expected = c["cpu_cores"] * prices.cpu_core_hour + c["memory_gib"] * prices.memory_gb_hour
        assert abs(c["per_hour"] - expected) < 1e-4
        assert c["memory_gib"] > 0
