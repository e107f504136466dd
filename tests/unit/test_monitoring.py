"""The monitoring tier: settings, rendered Prometheus/Alertmanager files, the
alert rules proven by promtool unit tests, and the dashboards' queries.

promtool and amtool run in the offline-lane images (built here when missing);
those tests skip, with the reason, only when no Docker engine answers.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from govstack.monitoring import promtool
from govstack.monitoring import render as monitoring
from govstack.plan import StackPlan
from govstack.settings import build_settings
from govstack.settings import monitoring as monitoring_settings
from govstack.settings.monitoring import MonitoringSettings
from govstack.tuning import HostResources

HOST = HostResources(memory_mb=8 * 1024, cpus=2)
# The alerts (plus EdgeDown), each of which must exist, be annotated and be tested.
ALERTS = {
    "TargetDown", "PostgresDown", "ObjectStoreDown", "VectorStoreDown", "EdgeDown", "HighErrorRate",
    "DatabaseConnectionsHigh", "VectorSearchLatencyHigh", "IndexingBacklog", "CleanupPaused", "AnalyticsEventsLost",
    "DiskSpaceLow",
    "DiskWillFillIn4h", "HostMemoryHigh", "BackupStale", "BackupFailed", "CertificateExpiringSoon",
    "DocumentsFailing", "WalArchiveFailing", "BaseBackupStale", "BaseBackupFailed",
}
PROFILES = {
    "defaults": MonitoringSettings(),
    "test-profile": MonitoringSettings.model_validate(monitoring_settings.TEST_PROFILE),
}


def plan_for(**layer) -> StackPlan:
    return StackPlan(build_settings([{"stack_root": "/srv/gs", **layer}], environ={}), HOST)


def rules_of(plan, m=None) -> dict[str, dict]:
    """alertname -> rule (the last one of that name), over every rendered rule file."""
    found = {}
    for text in monitoring.render_rule_files(plan, m).values():
        for group in yaml.safe_load(text)["groups"]:
            for rule in group["rules"]:
                found[rule["alert"]] = rule
    return found


def all_rules(plan, m=None) -> list[dict]:
    return [
        rule
        for text in monitoring.render_rule_files(plan, m).values()
        for group in yaml.safe_load(text)["groups"]
        for rule in group["rules"]
    ]


# --- settings -------------------------------------------------------------------------------

def test_defaults_validate_and_durations_parse():
    m = MonitoringSettings()
    assert m.alerts.target_down.duration == "2m" and m.alerts.target_down.seconds == 120
    assert monitoring_settings.duration_seconds("1h30m") == 5400
    with pytest.raises(ValueError):
        monitoring_settings.duration_seconds("5 minutes")


def test_a_partial_override_keeps_the_alerts_other_defaults():
    m = MonitoringSettings.model_validate({"alerts": {"high_error_rate": {"duration": "1m"}}})
    assert m.alerts.high_error_rate.duration == "1m"
    assert m.alerts.high_error_rate.threshold == 0.05
    assert m.alerts.high_error_rate.severity == "critical"


def test_test_profile_only_shortens_the_availability_alerts():
    m = PROFILES["test-profile"]
    assert m.alerts.postgres_down.seconds <= 15 and m.alerts.target_down.seconds <= 15
    assert m.alerts.postgres_down.severity == "critical"
    assert monitoring_settings.TEST_WEBHOOK_URL in m.webhook_urls


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"alerts": {"disk_space_low": {"threshold": 0}}}, "disk_space_low.threshold must be a number above 0"),
        ({"alerts": {"postgres_down": {"duration": "soon"}}}, "String should match pattern"),
        ({"alerts": {"postgres_down": {"severity": "page"}}}, "Input should be 'critical', 'warning' or 'info'"),
        ({"alerts": {"postgres_dwn": {"duration": "1m"}}}, "Extra inputs are not permitted"),
        ({"webhook_urls": ["ftp://x"]}, "is not an http(s) URL"),
        ({"email": {"to": ["ops"], "sender": "a@b.c", "smarthost": "mail:25"}}, "String should match pattern"),
        ({"runbook_base_url": "https://x/runbooks/"}, "String should match pattern"),
        ({"disk_mountpoints": '/host/"data'}, "must not contain quotes"),
    ],
)
def test_bad_monitoring_settings_are_refused(data, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        MonitoringSettings.model_validate(data)


# --- rendered files -------------------------------------------------------------------------

def test_every_alert_exists_with_summary_description_and_runbook():
    plan = plan_for()
    rules = all_rules(plan)
    assert {rule["alert"] for rule in rules} == ALERTS
    base = MonitoringSettings().runbook_base_url
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert annotations["runbook_url"] == f"{base}/alerts.md#{rule['alert'].lower()}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}


def test_every_runbook_link_has_a_section():
    text = (monitoring.REPO_ROOT / "runbooks" / "alerts.md").read_text()
    headings = {line[3:].strip().lower() for line in text.splitlines() if line.startswith("## ")}
    assert {name.lower() for name in ALERTS} <= headings


def test_thresholds_and_durations_come_from_settings():
    m = MonitoringSettings.model_validate(
        {"alerts": {"high_error_rate": {"threshold": 0.2, "duration": "7m"}, "backup_stale": {"threshold": 48}}}
    )
    rules = rules_of(plan_for(), m)
    assert rules["HighErrorRate"]["for"] == "7m"
    assert "> 0.2" in rules["HighErrorRate"]["expr"]
    assert "(limit 20%)" in rules["HighErrorRate"]["annotations"]["description"]
    assert str(48 * 3600) in rules["BackupStale"]["expr"]
    assert rules["DiskWillFillIn4h"]["expr"].count("14400") == 1


def test_prometheus_scrapes_every_job_by_docker_name():
    config = yaml.safe_load(monitoring.render_prometheus_config(plan_for()))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {
        "prometheus", "alertmanager", "blackbox", "app", "worker", "analytics", "node", "postgres", "nginx",
        "seaweedfs", "s3", "chroma", "edge-tls",
    }
    static = {
        name: job["static_configs"][0]["targets"][0] for name, job in jobs.items() if "static_configs" in job
    }
    assert static["postgres"] == "postgres-exporter:9187"
    assert static["nginx"] == "nginx-exporter:9113"
    assert static["node"] == "node-exporter:9100"
    assert static["seaweedfs"] == "seaweedfs:9327"
    assert static["chroma"] == "http://chroma:8000/api/v2/heartbeat"
    assert static["edge-tls"] == "https://nginx:8443/health"
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    # Every target says which component it measures (TargetDown inhibits by it).
    for name, job in jobs.items():
        labelled = all("component" in group.get("labels", {}) for group in job.get("static_configs", []))
        relabelled = any(r.get("target_label") == "component" for r in job.get("relabel_configs", []))
        assert labelled or relabelled, name


def test_an_external_object_store_is_neither_scraped_nor_alerted_on():
    plan = plan_for(object_store={"kind": "external", "endpoint": "s3.example.gov:9000"})
    jobs = {job["job_name"] for job in yaml.safe_load(monitoring.render_prometheus_config(plan))["scrape_configs"]}
    assert not jobs & {"seaweedfs", "s3"}
    assert "ObjectStoreDown" not in rules_of(plan)


def test_app_targets_list_the_running_colors_and_mark_the_serving_one():
    files = monitoring.render_app_targets(("blue", "green"), serving="green")
    app = json.loads(files["app.json"])
    assert [group["targets"] for group in app] == [["app-blue:8000"], ["app-green:8000"]]
    assert [group["labels"]["serving"] for group in app] == ["false", "true"]
    assert json.loads(files["worker.json"])[0]["targets"] == ["app-blue-worker:9100"]
    assert [group["targets"] for group in json.loads(files["analytics.json"])] == [
        ["analytics-blue:8000"], ["analytics-green:8000"]]
    with pytest.raises(ValueError):
        monitoring.render_app_targets(("blue",), serving="green")


def test_monitoring_files_land_under_the_config_dir():
    plan = plan_for()
    files = monitoring.monitoring_files(plan)
    conf = plan.settings.config_dir
    assert f"{conf}/prometheus/prometheus.yml" in files
    assert f"{conf}/alertmanager/alertmanager.yml" in files
    assert f"{conf}/blackbox/config.yml" in files
    assert f"{conf}/prometheus/targets/app.json" in files
    assert {f"{conf}/prometheus/rules/{n}" for n in monitoring.render_rule_files(plan)} <= set(files)
    assert not any("/grafana/" in path for path in files), "Grafana is upstream-lane only"
    upstream = monitoring.monitoring_files(plan_for(images={"lane": "upstream"}))
    assert any(path.endswith("/grafana/provisioning/datasources/prometheus.yml") for path in upstream)


def test_alertmanager_routes_by_severity_and_target_down_inhibits_its_component():
    m = MonitoringSettings.model_validate(
        {
            "webhook_urls": ["https://hooks.example.gov/alerts"],
            "email": {"to": ["ops@example.gov"], "sender": "alerts@example.gov", "smarthost": "mail:587",
                      "auth_username": "alerts"},
        }
    )
    config = yaml.safe_load(monitoring.render_alertmanager_config(plan_for(), m))
    routes = {route["matchers"][0]: route["receiver"] for route in config["route"]["routes"]}
    assert routes == {
        'severity="critical"': "critical", 'severity="warning"': "warning", 'severity="info"': "blackhole",
    }
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["critical"]["webhook_configs"][0] == {
        "url": "https://hooks.example.gov/alerts", "send_resolved": True,
    }
    assert receivers["critical"]["email_configs"][0]["to"] == "ops@example.gov"
    assert "email_configs" not in receivers["warning"]  # e-mail: critical only by default
    assert config["global"]["smtp_auth_password_file"] == "/run/secrets/alertmanager_smtp_password"
    inhibit = config["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['alertname="TargetDown"']
    assert inhibit["equal"] == ["component", "color"]
    assert config["route"]["group_wait"] == "30s"


def test_grafana_provisions_the_prometheus_datasource_every_dashboard_uses():
    files = monitoring.render_grafana_files(plan_for(images={"lane": "upstream"}))
    datasource = yaml.safe_load(files["provisioning/datasources/prometheus.yml"])["datasources"][0]
    assert datasource["uid"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(files["provisioning/dashboards/govstack.yml"])["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    assert {f"dashboards/{n}" for n in ("api.json", "database.json", "vector-search.json", "storage.json",
                                        "backups.json", "bluegreen.json")} <= set(files)


def test_dashboards_are_valid_json_with_queries_on_the_provisioned_datasource():
    uids = set()
    for name, text in monitoring.dashboard_files().items():
        board = json.loads(text)
        assert board["uid"] not in uids, name
        uids.add(board["uid"])
        panels = board["panels"]
        assert panels, name
        for panel in panels:
            assert panel["datasource"]["uid"] == "prometheus", (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "prometheus"
        assert monitoring.dashboard_queries(text), name


# --- promtool / amtool in the offline images -----------------------------------------------

@pytest.fixture(scope="module")
def tools():
    try:
        promtool.ensure_tool_image(None, "prometheus")
        promtool.ensure_tool_image(None, "alertmanager")
    except promtool.ToolImageUnavailable as error:
        pytest.skip(f"promtool/amtool images unavailable: {error}")


def _ok(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # promtool 2.42 prints lint findings as FAILED but still exits 0.
    assert "FAILED" not in output, output
    return output


KINDS = {
    "seaweedfs": {},
    "external": {"object_store": {"kind": "external", "endpoint": "s3.example.gov:9000"}},
}


@functools.cache
def rule_tests_first_rendered_by() -> dict[tuple[str, str], set[str]]:
    """(profile, kind) -> the rule test files whose rendering (the test and the rules it loads)
    no earlier (profile, kind) had. Each distinct rendering is run by promtool exactly once
    (a rule test costs seconds of CPU), whichever worker runs which case."""
    seen, first = set(), {}
    for profile in sorted(PROFILES):
        for kind in sorted(KINDS):
            plan = plan_for(**KINDS[kind])
            rule_files = monitoring.render_rule_files(plan, PROFILES[profile])
            first[profile, kind] = set()
            for name, text in monitoring.render_rule_tests(plan, PROFILES[profile]).items():
                loaded = [rule_files[Path(f).name] for f in yaml.safe_load(text)["rule_files"]]
                if (name, text, *loaded) not in seen:
                    seen.add((name, text, *loaded))
                    first[profile, kind].add(name)
    return first


def test_every_rendering_of_every_rule_test_is_run():
    plan = plan_for()
    assert set().union(*rule_tests_first_rendered_by().values()) == set(monitoring.render_rule_tests(plan))


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_promtool_checks_config_rules_and_unit_tests(tools, profile, kind):
    plan = plan_for(**KINDS[kind])
    chosen = rule_tests_first_rendered_by()[profile, kind]
    results = promtool.check_prometheus(plan, PROFILES[profile], rule_tests=chosen)
    _ok(results["check config"])
    checked = _ok(results["check rules"])
    rule_count = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", checked))
    assert rule_count == len(all_rules(plan, PROFILES[profile]))
    if chosen:
        tested = _ok(results["test rules"])
        assert tested.count("SUCCESS") == len(chosen)
    _ok(results["dashboard queries"])


def test_promtool_catches_a_rule_that_no_longer_matches_its_tests(tools):
    # The tests assume the default thresholds: a changed one must fail them,
    # which proves the tests really evaluate the rules.
    m = MonitoringSettings.model_validate({"alerts": {"host_memory_high": {"threshold": 0.99}}})
    result = promtool.check_prometheus(plan_for(), m, rule_tests=["host.test.yml"])["test rules"]
    assert result.returncode != 0
    assert "HostMemoryHigh" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    plan = plan_for()
    fires, quiet = set(), set()
    for text in monitoring.render_rule_tests(plan).values():
        for case in yaml.safe_load(text)["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == ALERTS, ALERTS - fires
    assert quiet == ALERTS, ALERTS - quiet


@pytest.mark.parametrize(
    "layer",
    [
        {},
        {"webhook_urls": ["https://hooks.example.gov/a", "http://alert-receiver:9099/x"],
         "email": {"to": ["ops@example.gov", "dba@example.gov"], "sender": "am@example.gov",
                   "smarthost": "mail.example.gov:587", "auth_username": "am", "severities": ["critical", "warning"]}},
    ],
    ids=["no-receivers", "webhooks-and-email"],
)
def test_amtool_accepts_the_alertmanager_config(tools, layer):
    result = promtool.check_alertmanager(plan_for(), MonitoringSettings.model_validate(layer))
    assert "SUCCESS" in _ok(result)
