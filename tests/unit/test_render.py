"""Rendering both lanes from settings, validated by Compose itself."""

from __future__ import annotations

import json
import re

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
        if name == "rsyslog":
            # Root only to read the engine's json-file logs: that one capability, read-only, no network.
            assert svc["cap_add"] == ["DAC_READ_SEARCH"]
            assert svc["network_mode"] == "none"
            containers = [v for v in svc["volumes"] if v["target"] == "/var/lib/docker/containers"]
            assert containers and containers[0]["read_only"] is True
        else:
            assert str(plan.uids[name]) != "0", name


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
        svc = config["services"][name]
        if svc.get("network_mode") == "none":  # rsyslog: no network at all
            assert "networks" not in svc, name
        else:
            assert list(svc["networks"]) == ["data"], name


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


def test_nginx_limits_clients_by_address_and_by_a_hash_of_the_key_never_the_key():
    plan = plan_for(edge={"api_rate_per_s": 40, "api_key_rate_per_s": 7, "upload_key_rate_per_s": 2})
    text = render_nginx_conf(plan)
    zones = dict(re.findall(r"limit_req_zone (\S+) zone=(\w+):", text)[i][::-1] for i in range(4))
    assert zones == {"api": "$binary_remote_addr", "api_key": "$api_key_client",
                     "upload": "$upload_client", "upload_key": "$upload_key_client"}
    assert "zone=api_key:10m rate=7r/s" in text and "zone=upload_key:10m rate=2r/s" in text
    assert "set_sha1 $api_key_sha1 $http_x_api_key;" in text
    assert "$http_x_api_key" not in "".join(re.findall(r"limit_req_zone [^;]*;", text))
    # Every location that proxies to the app passes both limits (the named
    # error location only asks the app which methods a path allows).
    locations = [body for body in re.findall(r"location ([^@][^{]*\{[^}]*\})", text) if "$app_upstream" in body]
    assert len(locations) == 3
    for location in locations:
        assert "zone=api " in location and "zone=api_key " in location, location
    upstream = render_nginx_conf(plan_for(images={"lane": "upstream"}))
    assert "js_set $api_key_client api_key.sha1;" in upstream and "set_sha1" not in upstream


def test_nginx_takes_the_client_address_only_from_trusted_proxies():
    assert "real_ip" not in render_nginx_conf(plan_for())
    text = render_nginx_conf(plan_for(edge={"trusted_proxies": ["10.20.0.0/16", "2001:db8::/64"]}))
    assert re.findall(r"set_real_ip_from (\S+);", text) == ["10.20.0.0/16", "2001:db8::/64"]
    assert "real_ip_header X-Forwarded-For;" in text and "real_ip_recursive on;" in text
    # The app gets the client nginx resolved, never a header a client wrote.
    assert set(re.findall(r"proxy_set_header X-Forwarded-For (\S+);", text)) == {"$remote_addr"}


def test_proxy_protocol_listens_on_the_published_ports_and_keeps_in_stack_ports_plain():
    plan = plan_for(edge={"trusted_proxies": ["10.20.0.0/16"], "real_ip_header": "proxy_protocol"})
    text = render_nginx_conf(plan)
    assert "real_ip_header proxy_protocol;" in text
    assert "listen 8443 ssl http2 proxy_protocol default_server;" in text
    assert "listen 8080 proxy_protocol default_server;" in text
    assert "listen 8444 ssl http2 default_server;" in text and "listen 8079 default_server;" in text
    assert plan.edge_in_stack_port("http") == 8079 and plan.edge_in_stack_port("https") == 8444
    nginx = yaml.safe_load(render_compose(plan))["services"]["nginx"]
    assert "/127.0.0.1/8079 " in nginx["healthcheck"]["test"][-1]
    plain = plan_for()
    assert plain.edge_in_stack_port("https") == 8443 and "proxy_protocol" not in render_nginx_conf(plain)


def test_nginx_errors_have_the_apps_json_shape_and_health_is_the_apps():
    plan = plan_for(app={"max_upload_mb": 12})
    text = render_nginx_conf(plan)
    for status, detail in plan.edge_error_details.items():
        body = re.search(rf"return {status} '(\{{[^']*\}})';", text)
        assert body, status
        assert json.loads(body.group(1).replace("$request_id", "r1")) == {"detail": detail, "request_id": "r1"}
    assert "error_page 502 504 = @error_503;" in text
    health = json.loads(re.search(r"return 200 '(\{[^']*\})';", text).group(1))
    assert health == {"status": "ok", "version": plan.release.version, "color": plan.release.color}


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


@pytest.mark.parametrize("enabled", [True, False])
def test_analytics_runs_beside_the_app_in_each_color_with_least_privilege(enabled, tmp_path, compose_binary):
    from govstack.render import render_app_compose

    plan = StackPlan(plan_for(analytics={"enabled": enabled}).settings.model_copy(
        update={"stack_root": str(tmp_path)}), HOST)
    (tmp_path / "secrets").mkdir()
    for name in plan.compose_secrets:
        (tmp_path / "secrets" / name).write_text("x" * 20)
    path = tmp_path / "green.yml"
    path.write_text(render_app_compose(plan, "green", "v7"))
    result = compose_config(compose_binary, path, "--format", "yaml")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    nginx = render_nginx_conf(plan)
    api_env = services["api"]["environment"]
    if not enabled:
        assert set(services) == {"api", "worker"}
        assert "GOVSTACK_ANALYTICS_ACTOR_KEY_FILE" not in api_env and "/analytics/" not in nginx
        return
    assert set(services) == {"api", "worker", "analytics"} == set(plan.app_services)
    analytics = services["analytics"]
    assert analytics["command"] == ["analytics"] and analytics["image"] == services["api"]["image"]
    assert analytics["user"] == "10001:10001" and analytics["read_only"] is True
    assert analytics["cap_drop"] == ["ALL"] and "no-new-privileges:true" in analytics["security_opt"]
    assert analytics["deploy"]["resources"]["limits"]["memory"]
    assert list(analytics["networks"]) == ["data"]  # no egress, nothing published
    assert [s["source"] for s in analytics["secrets"]] == ["postgres_analytics_password"]
    env = analytics["environment"]
    assert env["GOVSTACK_ANALYTICS_DATABASE_USER"] == "govstack_analytics" and env["GOVSTACK_APP_COLOR"] == "green"
    assert not any(key.startswith(("GOVSTACK_S3", "GOVSTACK_CHROMA", "GOVSTACK_ADMIN")) for key in env)
    # Only the API can pseudonymise; the worker keeps the events to their retention.
    assert api_env["GOVSTACK_ANALYTICS_ACTOR_KEY_FILE"] == "/run/secrets/analytics_actor_key"
    assert "GOVSTACK_ANALYTICS_ACTOR_KEY_FILE" not in services["worker"]["environment"]
    assert services["worker"]["environment"]["GOVSTACK_ANALYTICS_EVENTS_RETENTION_DAYS"] == "90"
    assert "analytics_actor_key" not in [s["source"] for s in services["worker"]["secrets"]]
    # The edge sends /analytics/ to the serving color's analytics service.
    assert "location /analytics/ {" in nginx and 'default "analytics-blue:8000";' in nginx
