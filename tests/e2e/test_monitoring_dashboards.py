"""Every PromQL expression of every dashboard runs against the live
Prometheus without an error, and the core panels have data.

In the offline lane there is no Grafana: this is how its dashboards are
proven. Needs the `stack` fixture (see test_monitoring_alerts.py)."""

from __future__ import annotations

import time

import pytest

from govstack.monitoring import render as monitoring

pytestmark = pytest.mark.full

# Panels that must show data on a freshly deployed stack without traffic
# (API requests include the scrapes of /metrics). Backup panels are not
# core: they need a backup run.
CORE_PANELS = {
    ("api.json", "Responses by status"),
    ("api.json", "Requests in flight"),
    ("api.json", "Edge: active connections"),
    ("database.json", "Postgres"),
    ("database.json", "Connections used of max_connections"),
    ("database.json", "Database size"),
    ("database.json", "Connections by database"),
    ("vector-search.json", "Chroma heartbeat"),
    ("vector-search.json", "Unindexed documents"),
    ("vector-search.json", "Indexing backlog"),
    ("storage.json", "Data filesystem free"),
    ("storage.json", "S3 gateway"),
    ("storage.json", "Host memory used"),
    ("storage.json", "Host CPU busy"),
    ("bluegreen.json", "Colors up"),
    ("bluegreen.json", "Version per color"),
    ("bluegreen.json", "Targets up by job"),
}
# rate() needs two samples in its window.
SETTLE_S = 90

QUERIES = [
    (name, title, expr)
    for name, text in monitoring.dashboard_files().items()
    for title, expr in monitoring.dashboard_queries(text)
]


def test_core_panels_exist():
    assert CORE_PANELS <= {(name, title) for name, title, _ in QUERIES}


@pytest.mark.parametrize(("dashboard", "title", "expr"), QUERIES, ids=[f"{n}:{t}" for n, t, _ in QUERIES])
def test_dashboard_query_runs(stack, dashboard, title, expr):
    result = stack.prometheus_query(expr)
    if (dashboard, title) not in CORE_PANELS:
        return
    if "S3" in title and stack.settings.object_store.kind != "seaweedfs":
        return
    deadline = time.monotonic() + SETTLE_S
    while not result and time.monotonic() < deadline:
        time.sleep(5)
        result = stack.prometheus_query(expr)
    assert result, f"core panel {dashboard} / {title!r} has no data: {expr}"
