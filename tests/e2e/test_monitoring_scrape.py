"""Scrape test: after a deploy every target Prometheus knows is up, and every
job the stack should have is among them (checked through the Prometheus API).

Needs the `stack` fixture (see test_monitoring_alerts.py)."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.full

# First scrapes of freshly started targets: a few scrape intervals.
SETTLE_S = 120


def expected_jobs(settings) -> set[str]:
    jobs = {
        "prometheus", "alertmanager", "blackbox", "app", "worker", "node", "postgres", "nginx", "chroma", "edge-tls",
    }
    if settings.object_store.kind == "seaweedfs":
        jobs |= {"seaweedfs", "s3"}
    if settings.analytics.enabled:
        jobs.add("analytics")
    return jobs


def _targets(stack) -> dict[tuple[str, str], str]:
    return {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in stack.prometheus_query("up")}


def test_every_scrape_target_is_up(stack):
    deadline = time.monotonic() + SETTLE_S
    while True:
        targets = _targets(stack)
        down = sorted(key for key, value in targets.items() if value != "1")
        missing = expected_jobs(stack.settings) - {job for job, _ in targets}
        if (not down and not missing) or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert not missing, f"jobs Prometheus does not scrape: {sorted(missing)}"
    assert not down, f"targets down: {down}"


def test_probes_succeed_and_the_edge_certificate_is_measured(stack):
    probes = {r["metric"]["job"]: r["value"][1] for r in stack.prometheus_query("probe_success")}
    assert probes.get("chroma") == "1", probes
    assert probes.get("edge-tls") == "1", probes
    if stack.settings.object_store.kind == "seaweedfs":
        assert probes.get("s3") == "1", probes
    expiry = stack.prometheus_query('probe_ssl_earliest_cert_expiry{job="edge-tls"} - time()')
    assert expiry and float(expiry[0]["value"][1]) > 86400, expiry


def test_no_alert_fires_on_a_healthy_stack(stack):
    # BackupStale/BackupFailed depend on the backup job, DiskWillFillIn4h on
    # what else the test host does; the availability alerts must be silent.
    firing = stack.prometheus_query('ALERTS{alertstate="firing"}')
    names = {r["metric"]["alertname"] for r in firing}
    assert not names & {"TargetDown", "PostgresDown", "ObjectStoreDown", "VectorStoreDown", "EdgeDown"}, firing
