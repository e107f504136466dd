"""The analytics service as the settings say it should be: in the serving color, hardened, on
its own Postgres role that reads only the events view, reached through the edge, scraped."""

from __future__ import annotations

import json
import shlex

import pytest


def _release(target) -> dict:
    return json.loads(target.host.file(f"{target.settings.stack_root}/state/release.json").content_string)


def _inspect(target, container: str) -> dict:
    return json.loads(target.host.check_output(f"docker inspect {container}"))[0]


@pytest.fixture
def analytics(target):
    if not target.settings.analytics.enabled:
        pytest.skip("analytics is disabled (analytics.enabled)")
    return target


def test_analytics_runs_in_the_serving_color_hardened_with_its_own_secret_only(analytics):
    target = analytics
    target.requires("app")
    plan = target.plan()
    release = _release(target)
    project = plan.app_project(release["color"])
    info = _inspect(target, target.container("analytics", project=project))
    host_config = info["HostConfig"]
    assert info["State"]["Health"]["Status"] == "healthy"
    assert info["Config"]["Image"] == plan.app_image(release["version"])
    assert info["Config"]["User"] == f"{plan.uids['analytics']}:{plan.uids['analytics']}"
    assert host_config["ReadonlyRootfs"] is True and host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host_config["SecurityOpt"]
    limits = plan.resources("analytics")
    assert host_config["Memory"] == limits.memory_mb * 2**20 and host_config["NanoCpus"] == int(limits.cpus * 1e9)
    secrets = sorted(m["Destination"] for m in info["Mounts"] if m["Destination"].startswith("/run/secrets/"))
    assert secrets == ["/run/secrets/postgres_analytics_password"]
    if plan.split:
        bound = {(b["HostIp"], int(b["HostPort"])) for p in (info["NetworkSettings"]["Ports"] or {}).values()
                 if p for b in p}
        assert bound == {(plan.address, plan.analytics_host_port(release["color"]))}
    else:
        assert list(info["NetworkSettings"]["Networks"]) == [plan.networks["data"]]  # no egress
    # Only the API of the color can turn a key name into its pseudonym.
    for service in ("api", "worker", "analytics"):
        mounts = _inspect(target, target.container(service, project=project))["Mounts"]
        has_key = any(m["Destination"] == "/run/secrets/analytics_actor_key" for m in mounts)
        assert has_key == (service == "api"), service


def test_the_analytics_role_reads_only_the_events_view(analytics):
    target = analytics
    target.requires("data")
    plan = target.plan()
    role = plan.analytics_role
    checks = {
        "has_table_privilege(r, 'public.documents', 'SELECT')": "f",
        "has_table_privilege(r, 'public.api_keys', 'SELECT')": "f",
        "has_table_privilege(r, 'public.audit_logs', 'SELECT')": "f",
        "has_table_privilege(r, 'analytics.events', 'SELECT')": "f",
        "has_table_privilege(r, 'analytics.events', 'INSERT')": "f",
        "has_table_privilege(r, 'analytics.actor_day_events', 'SELECT')": "t",
        "has_table_privilege(r, 'analytics.privacy_ledger', 'INSERT')": "t",
        "has_table_privilege(r, 'analytics.privacy_ledger', 'UPDATE')": "f",
        "has_table_privilege(r, 'analytics.privacy_ledger', 'DELETE')": "f",
        "has_function_privilege(r, 'analytics.consumer_of_key(text)', 'EXECUTE')": "t",
        "(SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles WHERE rolname = r)": "f",
    }
    sql = f"SELECT {', '.join(checks)} FROM (SELECT '{role}'::text AS r) AS x"  # noqa: S608 - fixed text
    out = target.host.check_output(
        f"docker exec {target.container('postgres')} psql -X -U postgres -d {target.settings.postgres.database} "
        f"-tA -F'|' -c {shlex.quote(sql)}")
    assert dict(zip(checks, out.split("|"), strict=True)) == checks


def test_the_edge_routes_analytics_to_the_serving_color(analytics):
    target = analytics
    target.requires("edge")
    s = target.settings
    plan = target.plan()
    color = _release(target)["color"]
    conf = target.host.file(f"{s.config_dir}/nginx/nginx.conf").content_string
    if plan.split:
        assert f'default "{plan.analytics_upstream_name(color)}";' in conf
        for server in plan.analytics_upstream_servers(color):
            assert f"server {server} max_fails=" in conf
    else:
        assert f'default "{plan.analytics_alias(color)}:' in conf
    cert = f"{s.config_dir}/nginx/tls/tls.crt"
    spec = target.host.check_output(
        f"curl -sf -m 10 --cacert {cert} --resolve {s.edge.hostname}:{s.edge.https_port}:127.0.0.1 "
        f"https://{s.edge.hostname}:{s.edge.https_port}/analytics/openapi.json")
    assert json.loads(spec)["info"]["title"] == "GovStack privacy-preserving analytics"


def test_prometheus_scrapes_the_serving_colors_analytics(analytics):
    target = analytics
    target.requires("monitoring")
    if not target.settings.monitoring.enabled:
        pytest.skip("monitoring is disabled")
    color = _release(target)["color"]
    listed = json.loads(target.host.file(
        f"{target.settings.config_dir}/prometheus/targets/analytics.json").content_string)
    serving = [group for group in listed if group["labels"]["serving"] == "true"]
    assert [group["labels"]["color"] for group in serving] == [color]
    config = target.host.file(f"{target.settings.config_dir}/prometheus/prometheus.yml").content_string
    assert "job_name: analytics" in config
