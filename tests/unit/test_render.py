"""Rendering both lanes from settings, validated by Compose itself."""

from __future__ import annotations

import pytest
import yaml

from govstack.plan import StackPlan
from govstack.render import render_compose, render_daemon_json, render_nginx_conf, render_postgres_conf
from govstack.settings import build_settings
from govstack.tuning import HostResources
from tests.conftest import compose_config

HOST = HostResources(memory_mb=24 * 1024, cpus=2)


def plan_for(**layer) -> StackPlan:
    return StackPlan(build_settings([{"stack_root": "/srv/gs", **layer}], environ={}), HOST)


@pytest.fixture(params=["offline", "upstream"])
def lane_plan(request) -> StackPlan:
    return plan_for(images={"lane": request.param})


@pytest.fixture
def rendered(lane_plan, tmp_path):
    """The compose file with its secret files, as Compose needs them to exist."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    plan = StackPlan(lane_plan.settings.model_copy(update={"stack_root": str(tmp_path)}), HOST)
    for name in plan.compose_secrets:
        (secrets / name).write_text("x" * 20)
    path = tmp_path / "docker-compose.yml"
    path.write_text(render_compose(plan))
    return plan, path


def test_compose_file_is_valid_for_compose(rendered, compose_binary):
    _, path = rendered
    result = compose_config(compose_binary, path, "--quiet")
    assert result.returncode == 0, result.stderr


def test_only_nginx_publishes_ports_on_the_edge_ports(rendered, compose_binary):
    plan, path = rendered
    config = yaml.safe_load(compose_config(compose_binary, path, "--format", "yaml").stdout)
    published = {name: svc.get("ports", []) for name, svc in config["services"].items() if svc.get("ports")}
    assert list(published) == ["nginx"]
    public = [port for port in published["nginx"] if port.get("host_ip") != "127.0.0.1"]
    assert sorted(int(port["published"]) for port in public) == [
        plan.settings.edge.http_port,
        plan.settings.edge.https_port,
    ]
    loopback = [int(port["published"]) for port in published["nginx"] if port.get("host_ip") == "127.0.0.1"]
    assert loopback == [plan.settings.monitoring.query_port]


def test_every_service_is_hardened_limited_and_checked(rendered, compose_binary):
    plan, path = rendered
    config = yaml.safe_load(compose_config(compose_binary, path, "--format", "yaml").stdout)
    assert set(config["services"]) == set(plan.services)
    for name, svc in config["services"].items():
        if name == "nginx-exporter" and plan.settings.images.lane == "upstream":
            # FROM scratch: no shell or wget inside; Prometheus' TargetDown watches it.
            assert svc["healthcheck"]["disable"] is True
        else:
            assert svc["healthcheck"]["test"], name
        assert svc["restart"] == "unless-stopped", name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert svc["cap_drop"] == ["ALL"], name
        assert svc["logging"]["driver"] == "json-file", name
        assert svc["logging"]["options"]["max-size"] == plan.settings.engine.log_max_size, name
        limits = svc["deploy"]["resources"]["limits"]
        assert limits["memory"] and float(limits["cpus"]) > 0, name
        assert limits["pids"] == plan.resources(name.replace("-", "_")).pids > 0, name
        assert svc["read_only"] is True, name
        assert svc["user"].split(":")[0] == str(plan.uids[name]), name
        assert str(plan.uids[name]) != "0"


@pytest.mark.parametrize("apparmor", [True, False])
def test_every_container_names_the_apparmor_profile_exactly_when_the_host_has_apparmor(
        tmp_path, compose_binary, apparmor):
    from govstack.render import render_app_compose

    plan = StackPlan(plan_for().settings.model_copy(update={"stack_root": str(tmp_path)}), HOST, apparmor=apparmor)
    (tmp_path / "secrets").mkdir()
    for name in plan.compose_secrets:
        (tmp_path / "secrets" / name).write_text("x" * 20)
    (tmp_path / "stack.yml").write_text(render_compose(plan))
    (tmp_path / "app.yml").write_text(render_app_compose(plan, "blue", "v1"))
    for file in ("stack.yml", "app.yml"):
        config = yaml.safe_load(compose_config(compose_binary, tmp_path / file, "--format", "yaml").stdout)
        for name, svc in config["services"].items():
            wanted = ["no-new-privileges:true", *(["apparmor=docker-default"] if apparmor else [])]
            assert svc["security_opt"] == wanted, (file, name)
            assert svc["read_only"] is True and svc["deploy"]["resources"]["limits"]["pids"] > 0, (file, name)


def test_postgres_pids_follow_its_connections():
    small, big = plan_for(postgres={"max_connections": 50}), plan_for(postgres={"max_connections": 500})
    assert small.resources("postgres").pids > 50
    assert big.resources("postgres").pids - small.resources("postgres").pids == 450
    assert plan_for(resources={"postgres": {"pids": 64}}).resources("postgres").pids == 64


def test_secrets_are_files_never_environment(rendered, compose_binary):
    plan, path = rendered
    config = yaml.safe_load(compose_config(compose_binary, path, "--format", "yaml").stdout)
    for svc in config["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            assert "PASSWORD" not in key or key.endswith("_FILE"), key
            assert "xxxxxxxx" not in str(value)
    used = {secret["file"] for secret in config["secrets"].values()}
    assert used and used <= set(plan.compose_secrets.values())


def test_data_services_sit_on_an_internal_network_only(rendered, compose_binary):
    plan, path = rendered
    config = yaml.safe_load(compose_config(compose_binary, path, "--format", "yaml").stdout)
    data_net = config["networks"]["data"]
    assert data_net["internal"] is True
    for name in [*plan.data_services, *plan.monitoring_services]:
        assert list(config["services"][name]["networks"]) == ["data"], name


def test_upstream_lane_pins_official_images():
    plan = plan_for(images={"lane": "upstream"})
    assert plan.image("postgres").startswith("postgres:17")
    assert plan.image("chroma") == "chromadb/chroma:1.5.9"
    assert plan.image("seaweedfs").startswith("chrislusf/seaweedfs:")
    assert plan.image("nginx").startswith("nginx:1.")
    for service in plan.services:
        assert ":latest" not in plan.image(service) and ":" in plan.image(service)


def test_external_object_store_drops_seaweedfs():
    plan = plan_for(object_store={"kind": "external", "endpoint": "s3.example.gov:9000", "secure": True})
    assert "seaweedfs" not in plan.services
    assert "seaweedfs:" not in render_compose(plan)
    assert plan.s3_endpoint == "s3.example.gov:9000"


def test_postgres_conf_carries_the_tuning():
    plan = plan_for()
    text = render_postgres_conf(plan)
    # 24 GiB host, default share 25 % -> a 6 GiB container -> 1.5 GiB shared_buffers.
    assert plan.postgres_memory_mb == 6 * 1024
    assert "shared_buffers = '1572864kB'" in text
    for key, value in plan.postgres_conf.items():
        assert f"{key} = '{value}'" in text
    assert plan.resources("postgres").memory_mb == plan.postgres_memory_mb


def test_nginx_conf_follows_settings():
    plan = plan_for(edge={"hostname": "docs.example.gov", "api_rate_per_s": 7, "https_port": 8443},
                    app={"max_upload_mb": 12})
    text = render_nginx_conf(plan)
    assert "rate=7r/s" in text
    assert "client_max_body_size 12m;" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "ssl_session_tickets off;" in text
    assert "return 301 https://$host:8443$request_uri;" in text
    assert "limit_req_status 429;" in text


def test_daemon_json_rotates_logs_and_keeps_containers_on_restart():
    import json

    config = json.loads(render_daemon_json(plan_for()))
    assert config["live-restore"] is True
    assert config["log-opts"] == {"max-file": "3", "max-size": "10m"}


def test_readme_settings_table_is_generated_from_the_model():
    from govstack.docs import README, render_readme

    current = README.read_text()
    assert render_readme(current) == current, "README settings table is stale: run `python -m govstack.docs`"
