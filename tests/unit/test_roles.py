"""Split inventories: which host renders which part, and how the parts find each other."""

from __future__ import annotations

import json
import stat

import pytest
import yaml

from govstack import sbom
from govstack.monitoring.render import render_app_target_files, render_prometheus_config
from govstack.plan import StackPlan
from govstack.render import (
    render_app_compose,
    render_compose,
    render_nginx_conf,
    rendered_files,
)
from govstack.roles import (
    ALL_ROLES,
    TopologyError,
    build_topology,
    roles_of,
    shared_secret_values,
)
from govstack.secrets import SECRET_SPECS
from govstack.settings import build_settings
from govstack.tuning import HostResources

HOSTS = {
    "edge1": (("edge", "monitoring"), "10.0.0.10"),
    "app1": (("app",), "10.0.0.21"),
    "app2": (("app",), "10.0.0.22"),
    "data1": (("data",), "10.0.0.31"),
}


def split_plans(**layer) -> dict[str, StackPlan]:
    settings = build_settings([layer], environ={})
    topology = build_topology(
        (name, groups, {"ssh_hostname": address}, settings) for name, (groups, address) in HOSTS.items()
    )
    assert topology is not None
    return {
        name: StackPlan(settings, HostResources(4096, 2, None), roles=topology.member(name).roles,
                        topology=topology, address=topology.member(name).address)
        for name in HOSTS
    }


def test_a_host_in_no_role_group_is_all_in_one():
    assert roles_of(()) == ALL_ROLES
    assert roles_of(("all", "production")) == ALL_ROLES
    assert roles_of(("app", "eu")) == {"app"}
    settings = build_settings([], environ={})
    assert build_topology([("@local", (), {}, settings)]) is None
    assert build_topology([("a", (), {}, settings), ("b", ("edge", "app", "data", "monitoring"), {}, settings)]) is None


def test_a_split_inventory_needs_every_role_and_ip_addresses():
    settings = build_settings([], environ={})
    with pytest.raises(TopologyError, match="'monitoring'"):
        build_topology([("a", ("edge", "app"), {"ssh_hostname": "10.0.0.1"}, settings),
                        ("b", ("data",), {"ssh_hostname": "10.0.0.2"}, settings)])
    with pytest.raises(TopologyError, match="govstack.address"):
        build_topology([("a", ("edge", "app", "monitoring"), {"ssh_hostname": "10.0.0.1"}, settings),
                        ("b", ("data",), {"ssh_hostname": "db.example.gov"}, settings)])
    with_address = build_settings([{"address": "10.0.0.2"}], environ={})
    topology = build_topology([("a", ("edge", "app", "monitoring"), {"ssh_hostname": "10.0.0.1"}, settings),
                               ("b", ("data",), {"ssh_hostname": "db.example.gov"}, with_address)])
    assert topology.data_address == "10.0.0.2"


def test_a_split_inventory_refuses_the_proxy_protocol_its_edge_probe_cannot_speak():
    with pytest.raises(TopologyError, match="edge1: edge.real_ip_header proxy_protocol is for all-in-one hosts"):
        split_plans(edge={"trusted_proxies": ["10.0.9.0/24"], "real_ip_header": "proxy_protocol"})
    assert split_plans(edge={"trusted_proxies": ["10.0.9.0/24"]})


def test_each_host_renders_only_its_part():
    plans = split_plans()
    assert plans["edge1"].services[0] == "nginx" and "postgres" not in plans["edge1"].services
    assert "prometheus" in plans["edge1"].services
    # Every host runs node-exporter and rsyslog; app hosts nothing else in the main project.
    assert plans["app1"].services == ["node-exporter", "rsyslog"]
    assert "nginx-exporter" in plans["edge1"].services and "nginx-exporter" not in plans["data1"].services
    assert {"postgres", "seaweedfs", "chroma"} <= set(plans["data1"].services)
    assert "nginx" not in plans["data1"].services
    files = {name: rendered_files(plan) for name, plan in plans.items()}
    assert set(files["app1"]) == {"/opt/govstack/app/blue.yml", "/opt/govstack/docker-compose.yml",
                                  "/opt/govstack/config/rsyslog/rsyslog.conf"}
    assert "/opt/govstack/config/nginx/nginx.conf.candidate" in files["edge1"]
    assert "/opt/govstack/config/nginx/nginx.conf.candidate" not in files["data1"]
    assert "/opt/govstack/config/postgres/postgresql.conf" in files["data1"]
    edge_services = yaml.safe_load(render_compose(plans["edge1"]))["services"]
    data_services = yaml.safe_load(render_compose(plans["data1"]))["services"]
    assert set(edge_services) == set(plans["edge1"].services)
    assert set(data_services) == set(plans["data1"].services)


def test_data_ports_are_published_on_the_data_hosts_private_address_only():
    services = yaml.safe_load(render_compose(split_plans()["data1"]))["services"]
    assert services["postgres"]["ports"] == ["10.0.0.31:5432:5432"]
    assert services["seaweedfs"]["ports"] == ["10.0.0.31:8333:8333", "10.0.0.31:9327:9327"]
    assert services["chroma"]["ports"] == ["10.0.0.31:8000:8000"]
    assert "ports" not in services.get("backup", {})


def test_prometheus_scrapes_what_runs_on_other_hosts_on_their_private_addresses():
    plans = split_plans()
    monitor = plans["edge1"]
    jobs = {job["job_name"]: job for job in yaml.safe_load(render_prometheus_config(monitor))["scrape_configs"]}

    def targets(job: str) -> dict[str, list[str]]:
        return {group["labels"]["host"]: group["targets"] for group in jobs[job]["static_configs"]}

    # Its own host by Docker DNS name; every other host on its address.
    assert targets("node") == {"edge1": ["node-exporter:9100"], "app1": ["10.0.0.21:9100"],
                               "app2": ["10.0.0.22:9100"], "data1": ["10.0.0.31:9100"]}
    assert targets("nginx") == {"edge1": ["nginx-exporter:9113"]}
    assert targets("seaweedfs") == {"data1": ["10.0.0.31:9327"]}
    assert targets("s3") == {"data1": ["http://10.0.0.31:8333/healthz"]}
    assert targets("chroma") == {"data1": ["http://10.0.0.31:8000/api/v2/heartbeat"]}
    assert targets("edge-tls") == {"edge1": ["https://nginx:8443/health"]}
    workers = json.loads(render_app_target_files(monitor, ("blue",), "blue")["worker.json"])
    assert workers[0]["targets"] == ["10.0.0.21:9201", "10.0.0.22:9201"]
    # What is published for it answers the monitoring host only, on the private address only.
    for name in ("app1", "data1"):
        plan = plans[name]
        compose = yaml.safe_load(render_compose(plan))["services"]
        assert compose["node-exporter"]["ports"] == [f"{plan.address}:9100:9100"]
        openings = dict(plan.firewall_openings)
        assert openings[9100] == ["10.0.0.10"]
    assert dict(plans["data1"].firewall_openings)[9327] == ["10.0.0.10"]
    assert "10.0.0.10" in dict(plans["data1"].firewall_openings)[8000]  # Chroma's heartbeat probe
    worker = yaml.safe_load(render_app_compose(plans["app2"], "green", "v1"))["services"]["worker"]
    assert worker["ports"] == ["10.0.0.22:9202:9100"]
    assert dict(plans["app2"].firewall_openings)[9202] == ["10.0.0.10"]
    # The monitoring host publishes nothing for itself.
    assert monitor.published_metrics_ports == {}


def test_containers_on_a_data_network_reach_local_services_by_name_and_others_by_address():
    """The data network has no route to the host's own address: the data
    host's backup job reaches Postgres, SeaweedFS and Chroma by name, and the
    monitoring host's postgres-exporter the data host by address."""
    from govstack.backup.render import job_config

    plans = split_plans()
    config = job_config(plans["data1"])
    assert (config["pg"]["host"], config["s3"]["endpoint"], config["chroma"]["url"]) == (
        "postgres", "seaweedfs:8333", "http://chroma:8000")
    exporter = yaml.safe_load(render_compose(plans["edge1"]))["services"]["postgres-exporter"]
    assert exporter["environment"]["DATA_SOURCE_URI"].startswith("10.0.0.31:5432/")


def test_app_hosts_reach_the_data_host_and_publish_each_color():
    plan = split_plans()["app2"]
    for color, port in (("blue", 8001), ("green", 8002)):
        compose = yaml.safe_load(render_app_compose(plan, color, "v1"))
        api = compose["services"]["api"]
        assert api["ports"] == [f"10.0.0.22:{port}:8000"]
        assert api["environment"]["GOVSTACK_DATABASE_HOST"] == "10.0.0.31"
        assert api["environment"]["GOVSTACK_CHROMA_HOST"] == "10.0.0.31"
        assert api["environment"]["GOVSTACK_S3_ENDPOINT"] == "10.0.0.31:8333"
        assert api["environment"]["GOVSTACK_TRUSTED_PROXIES"] == "10.0.0.10/32"
        assert "networks" not in compose
        # The analytics service of the color: published the same way, on its own port.
        analytics = compose["services"]["analytics"]
        assert analytics["ports"] == [f"10.0.0.22:{port + 10}:8000"]
        assert analytics["environment"]["GOVSTACK_DATABASE_HOST"] == "10.0.0.31"
        openings = dict(plan.firewall_openings)
        assert openings[port + 10] == openings[port] == ["10.0.0.10"]  # the edge and monitoring host
    targets = json.loads(render_app_target_files(plan, ("blue",), "blue")["analytics.json"])
    assert targets[0]["targets"] == ["10.0.0.21:8011", "10.0.0.22:8011"]


def test_the_edge_upstream_lists_every_app_host_of_the_serving_color():
    conf = render_nginx_conf(split_plans()["edge1"])
    assert "upstream app_blue {" in conf
    assert "server 10.0.0.21:8001 max_fails=1 fail_timeout=10s;" in conf
    assert "server 10.0.0.22:8001 max_fails=1 fail_timeout=10s;" in conf
    assert 'default "app_blue";' in conf
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in conf
    assert "non_idempotent" not in conf.split("proxy_next_upstream ", 1)[1].split(";")[0]
    assert 'set $s3_upstream "10.0.0.31:8333";' in conf
    assert "upstream analytics_blue {" in conf and 'default "analytics_blue";' in conf
    assert "server 10.0.0.21:8011 max_fails=1 fail_timeout=10s;" in conf


def test_shared_secrets_are_made_once_private_and_stable(tmp_path):
    directory = tmp_path / "secrets"
    first = shared_secret_values(directory, {"postgres_password": 40, "s3_access_key": 20})
    assert len(first["postgres_password"]) == 40 and len(first["s3_access_key"]) == 20
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "postgres_password").stat().st_mode) == 0o600
    assert shared_secret_values(directory, {"postgres_password": 40, "s3_access_key": 20}) == first


def test_firewall_drops_other_hosts_but_not_the_hosts_own_containers():
    from govstack.role_operations import firewall_rules

    plan = split_plans()["data1"]
    rules = firewall_rules("GOVSTACK", plan.address, plan.firewall_openings)
    assert rules[:2] == ["GOVSTACK -i docker0 -j RETURN", "GOVSTACK -i br-+ -j RETURN"]
    postgres = [rule for rule in rules if "--ctorigdstport 5432 " in rule]
    assert [rule.split()[2] for rule in postgres[:-1]] == ["10.0.0.10/32", "10.0.0.21/32", "10.0.0.22/32"]
    assert postgres[-1].endswith("--ctorigdst 10.0.0.31 --ctorigdstport 5432 -j DROP")
    assert firewall_rules("GOVSTACK", "10.0.0.10", []) == []


def test_each_host_is_shipped_only_the_images_its_part_runs():
    plans = split_plans()
    app = plans["app1"]
    # The base and the SBOM tool: what the host needs to build an app release itself.
    assert app.host_images == ["govstack/base:bookworm", f"govstack/sbom:{sbom.CYCLONEDX_BOM_VERSION}",
                               "govstack/node-exporter:1.5", "govstack/rsyslog:8.2302",
                               app.app_image(app.release.version)]
    data = plans["data1"].host_images
    assert {"govstack/postgres:15", "govstack/chroma:1.5.9"} <= set(data)
    assert not any(tag.startswith(("govstack/nginx:", "govstack/app:", "govstack/prometheus:")) for tag in data)
    edge = plans["edge1"].host_images
    assert "govstack/nginx:1.22" in edge and "govstack/prometheus:2.42" in edge
    assert not any(tag.startswith(("govstack/postgres:", "govstack/app:")) for tag in edge)


def _secret_files(plan: StackPlan) -> set[str]:
    return set(plan.compose_secrets)


def test_each_host_holds_only_the_secrets_its_roles_read():
    email = {"to": ["ops@example.gov"], "sender": "alerts@example.gov", "smarthost": "smtp.example.gov:587",
             "auth_username": "alerts"}
    plans = split_plans(monitoring={"email": email}, secrets={"alertmanager_smtp_password": "s" * 20})
    # The data host sets the analytics role's password; only the app hosts hold the actor key.
    data = {"postgres_password", "postgres_owner_password", "postgres_app_password", "s3_access_key",
            "s3_secret_key", "restic_password", "postgres_backup_password", "postgres_monitor_password",
            "postgres_analytics_password", "pgbackrest_cipher_pass", "s3_backup_access_key", "s3_backup_secret_key",
            "s3_restore_access_key", "s3_restore_secret_key", "s3_admin_access_key", "s3_admin_secret_key",
            "s3_sse_key"}
    app = {"postgres_owner_password", "postgres_app_password", "s3_access_key", "s3_secret_key", "app_admin_api_key",
           "postgres_analytics_password", "analytics_actor_key"}
    monitoring = {"postgres_monitor_password", "grafana_admin_password", "alertmanager_smtp_password"}
    assert _secret_files(plans["data1"]) == data
    assert _secret_files(plans["app1"]) == _secret_files(plans["app2"]) == app
    # edge1 is edge + monitoring: the edge itself reads none.
    assert _secret_files(plans["edge1"]) == monitoring
    for name, plan in plans.items():
        stale = {path.rsplit("/", 1)[1] for path in plan.stale_secret_files}
        assert not stale & _secret_files(plan), name
        assert stale | _secret_files(plan) >= set(SECRET_SPECS) - {
            "backup_offsite_access_key", "backup_offsite_secret_key", "pgbackrest_offsite_access_key",
            "pgbackrest_offsite_secret_key"}, name
    # What the containers mount is what the host holds.
    assert set(plans["app1"].app_secrets) <= _secret_files(plans["app1"])
    assert set(plans["data1"].backup.secrets) <= _secret_files(plans["data1"])
    for name, plan in plans.items():
        if not plan.services:
            continue
        compose = yaml.safe_load(render_compose(plan))
        assert set(compose.get("secrets", {})) == _secret_files(plan), name
        used = {secret for service in compose["services"].values() for secret in service.get("secrets", [])}
        assert used <= _secret_files(plan), name
    app_compose = yaml.safe_load(render_app_compose(plans["app1"], "blue", "v1"))
    assert set(app_compose["secrets"]) == set(plans["app1"].app_project_secrets) == app
    # Only the one-off migrate service reads the schema owner's password.
    readers = {name for name, service in app_compose["services"].items()
               if "postgres_owner_password" in service.get("secrets", [])}
    assert readers == {"migrate"}
    assert app_compose["services"]["migrate"]["profiles"] == ["migrate"]
    # Least privilege inside the color: the actor key is the API's, the analytics service holds
    # only its role's password.
    services = app_compose["services"]
    assert set(services["api"]["secrets"]) == set(plans["app1"].app_secrets) | {"analytics_actor_key"}
    assert set(services["worker"]["secrets"]) == set(plans["app1"].app_secrets)
    assert services["analytics"]["secrets"] == ["postgres_analytics_password"]


def test_offsite_keys_and_grpc_material_stay_on_the_data_host():
    plans = split_plans(images={"lane": "upstream"},
                        backup={"offsite": {"endpoint": "https://s3.example.gov", "bucket": "offsite-backups"}},
                        secrets={"backup_offsite_access_key": "a" * 20, "backup_offsite_secret_key": "b" * 40})
    data = _secret_files(plans["data1"])
    assert {"backup_offsite_access_key", "backup_offsite_secret_key", "seaweedfs_grpc.key"} <= data
    for name in ("app1", "edge1"):
        assert not {"backup_offsite_access_key", "seaweedfs_grpc.key", "postgres_password",
                    "restic_password"} & _secret_files(plans[name]), name
        assert f"{plans[name].settings.secrets_dir}/seaweedfs_grpc.key" in plans[name].stale_secret_files
    compose = yaml.safe_load(render_compose(plans["data1"]))
    assert set(compose["services"]["seaweedfs"]["secrets"]) <= data


def test_an_all_in_one_host_holds_every_secret_as_before():
    from govstack.secrets import host_secret_names

    settings = build_settings([], environ={})
    plan = StackPlan(settings, HostResources(4096, 2, None))
    everything = sorted(name for name, spec in SECRET_SPECS.items() if spec.generated)
    assert plan.secret_names == everything == host_secret_names(settings, ALL_ROLES)
    assert list(plan.compose_secrets) == everything
    assert plan.stale_secret_files == []
    upstream = StackPlan(build_settings([{"images": {"lane": "upstream"}}], environ={}), HostResources(4096, 2, None))
    assert list(upstream.compose_secrets)[-3:] == ["seaweedfs_grpc_ca.crt", "seaweedfs_grpc.crt", "seaweedfs_grpc.key"]


def test_every_secret_names_the_roles_that_read_it():
    from govstack.roles import ROLES
    from govstack.secrets import SecretSpec

    for spec in SECRET_SPECS.values():
        assert spec.needed_by and spec.needed_by <= set(ROLES), spec.name
    assert not any("edge" in spec.needed_by for spec in SECRET_SPECS.values())
    with pytest.raises(ValueError, match="needed_by"):
        SecretSpec("x", 0, "x")
    with pytest.raises(ValueError, match="needed_by"):
        SecretSpec("x", 0, "x", needed_by=frozenset({"web"}))


def test_govstack_secret_names_the_hosts_that_hold_a_secret(tmp_path):
    from click.testing import CliRunner

    from govstack.cli import main

    inventory = tmp_path / "split.py"
    inventory.write_text(
        'edge = [("e1", {"ssh_hostname": "10.0.0.10"})]\n'
        'monitoring = [("e1", {"ssh_hostname": "10.0.0.10"})]\n'
        'app = [("a1", {"ssh_hostname": "10.0.0.21"}), ("a2", {"ssh_hostname": "10.0.0.22"})]\n'
        'data = [("d1", {"ssh_hostname": "10.0.0.31"})]\n'
    )
    result = CliRunner().invoke(main, ["secret", "postgres_password", "--host", "a1", "--reason", "test",
                                      "-i", str(inventory)])
    assert result.exit_code == 2 and "it is on: d1" in result.output
    result = CliRunner().invoke(main, ["secret", "app_admin_api_key", "--host", "e1", "--reason", "test",
                                      "-i", str(inventory)])
    assert result.exit_code == 2 and "it is on: a1, a2" in result.output
