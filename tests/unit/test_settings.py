import pytest

from govstack.settings import Settings, SettingsError, build_settings, env_layer


def test_defaults_describe_a_single_host():
    s = build_settings([], environ={})
    assert s == Settings()
    assert s.stack_root == "/opt/govstack"
    assert s.images.lane == "offline"
    assert s.public_url == "https://localhost"
    assert s.secrets_dir == "/opt/govstack/secrets"


def test_layers_deep_merge_in_order_and_environment_wins():
    group = {"edge": {"hostname": "docs.example.gov", "https_port": 8443}, "postgres": {"max_connections": 50}}
    host = {"edge": {"https_port": 9443}}
    env = {"GOVSTACK__POSTGRES__MAX_CONNECTIONS": "200", "UNRELATED": "x"}
    s = build_settings([group, host], environ=env)
    assert s.edge.hostname == "docs.example.gov"  # group value kept
    assert s.edge.https_port == 9443  # host beats group
    assert s.postgres.max_connections == 200  # environment beats both
    assert s.public_url == "https://docs.example.gov:9443"


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"edge": {"htps_port": 1}}, "govstack.edge.htps_port: unknown key"),
        ({"edge": {"https_port": 70000}}, "govstack.edge.https_port: Input should be less than or equal to 65535"),
        ({"images": {"lane": "docker-hub"}}, "govstack.images.lane: Input should be 'offline' or 'upstream'"),
        ({"stack_root": "relative/dir"}, "govstack.stack_root: must be an absolute path below /"),
        ({"stack_root": "/"}, "govstack.stack_root: must be an absolute path below /"),
        ({"object_store": {"kind": "external"}}, "govstack.object_store: endpoint is required when kind is 'external'"),
        ({"resources": {"redis": {"memory_mb": 64, "cpus": 1}}}, "govstack.resources: unknown service 'redis'"),
        ({"secrets": {"root_password": "x" * 20}}, "govstack.secrets: unknown secret 'root_password'"),
        ({"secrets": {"s3_secret_key": "short"}}, "must be 16+ printable characters"),
        ({"edge": {"tls_cert_path": "/etc/ssl/a.pem"}}, "tls_cert_path and tls_key_path must be set together"),
        ({"postgres": {"overrides": {"shared buffers": "1GB"}}}, "is not a postgresql.conf parameter name"),
        ({"project": "Bad_Name"}, "govstack.project: String should match pattern"),
        ({"network": {"data_subnet": "172.29.10.0/24"}}, "overlaps Docker's default address pool 172.29.0.0/16"),
        ({"network": {"data_subnet": "192.168.5.0/24"}}, "overlaps Docker's default address pool 192.168.0.0/16"),
        ({"edge": {"trusted_proxies": ["10.0.0.1/8"]}}, "govstack.edge.trusted_proxies: '10.0.0.1/8' is not a CIDR"),
        ({"edge": {"trusted_proxies": ["lb.example.gov"]}}, "'lb.example.gov' is not a CIDR"),
        ({"edge": {"trusted_proxies": ["0.0.0.0/0"]}}, "would let any client choose its own address"),
        ({"edge": {"real_ip_header": "proxy_protocol"}}, "real_ip_header proxy_protocol needs trusted_proxies"),
        ({"edge": {"real_ip_header": "X-Real-IP"}}, "govstack.edge.real_ip_header: Input should be"),
        ({"resources": {"app": {"pids": 4}}}, "govstack.resources.app.pids: Input should be greater than or equal"),
    ],
)
def test_bad_settings_name_the_key_and_the_reason(layer, message):
    with pytest.raises(SettingsError) as error:
        build_settings([layer], environ={}, source="web1")
    assert message in str(error.value)
    assert str(error.value).startswith("web1: setting ")
    assert "\n" not in str(error.value)


def test_bad_environment_value_is_reported_like_inventory_data():
    with pytest.raises(SettingsError, match="govstack.edge.http_port: Input should be a valid integer"):
        build_settings([], environ={"GOVSTACK__EDGE__HTTP_PORT": "eighty"})


def test_inventory_data_must_be_a_mapping():
    with pytest.raises(SettingsError, match="must be a mapping"):
        build_settings(["not a dict"], environ={})


def test_env_layer_parses_json_scalars_and_nests():
    assert env_layer({"GOVSTACK__APP__MAX_UPLOAD_MB": "10", "GOVSTACK__EDGE__HOSTNAME": "a.b"}) == {
        "app": {"max_upload_mb": 10},
        "edge": {"hostname": "a.b"},
    }


def test_partial_resources_keep_the_other_defaults():
    s = build_settings([{"resources": {"chroma": {"memory_mb": 512}}}], environ={})
    assert s.resources["chroma"].memory_mb == 512
    assert s.resources["chroma"].cpus == Settings().resources["chroma"].cpus
    assert s.resources["nginx"] == Settings().resources["nginx"]


def test_config_hash_ignores_secrets_and_tracks_settings():
    a = build_settings([{"secrets": {"s3_secret_key": "a" * 20}}], environ={})
    b = build_settings([{"secrets": {"s3_secret_key": "b" * 20}}], environ={})
    c = build_settings([{"postgres": {"max_connections": 120}}], environ={})
    assert a.config_hash() == b.config_hash() != c.config_hash()
    assert "aaaa" not in repr(a)
