"""The data tier and the edge, as the settings say they should be."""

from __future__ import annotations

import json
import shlex

import pytest

from govstack.secrets import SECRET_SPECS, secret_path
from govstack.tuning import size_to_kb


def _inspect(target, container: str) -> dict:
    return json.loads(target.host.check_output(f"docker inspect {container}"))[0]


def _bindings(info: dict) -> list[dict]:
    """Every host binding of a container's published ports ({"HostIp", "HostPort"})."""
    return [binding for bound in (info["NetworkSettings"]["Ports"] or {}).values() if bound for binding in bound]


def test_every_service_runs_healthy_with_its_limits(target):
    plan = target.plan()
    for service in plan.services:
        info = _inspect(target, target.container(service))
        assert info["State"]["Status"] == "running", service
        assert info["State"]["Health"]["Status"] == "healthy", service
        host_config = info["HostConfig"]
        limits = plan.resources(service.replace("-", "_"))
        assert host_config["Memory"] == limits.memory_mb * 2**20, service
        assert host_config["NanoCpus"] == int(limits.cpus * 1e9), service
        assert "no-new-privileges:true" in host_config["SecurityOpt"], service
        assert host_config["CapDrop"] == ["ALL"], service
        assert host_config["LogConfig"]["Config"]["max-size"] == target.settings.engine.log_max_size
        assert info["Config"]["User"] == f"{plan.uids[service]}:{plan.uids[service]}", service


def _runtime_hardening_problems(info: dict, pids: int, apparmor: bool) -> list[str]:
    """What a container lacks of the CIS Docker Benchmark's runtime section (README)."""
    host_config = info["HostConfig"]
    problems = []
    if host_config["PidsLimit"] != pids:
        problems.append(f"pids limit {host_config['PidsLimit']}, not {pids}")
    if not host_config["ReadonlyRootfs"]:
        problems.append("writable root filesystem")
    if host_config["Privileged"]:
        problems.append("privileged")
    if apparmor and info.get("AppArmorProfile") != "docker-default":
        problems.append(f"AppArmor profile {info.get('AppArmorProfile')!r}, not docker-default")
    if not apparmor and any(opt.startswith("apparmor=") for opt in host_config["SecurityOpt"] or []):
        problems.append("names an AppArmor profile on a host without AppArmor")
    return problems


def test_every_container_has_a_pids_limit_a_read_only_root_and_the_host_apparmor_profile(target):
    from govstack.facts import DockerAppArmor

    plan = target.plan()
    apparmor = DockerAppArmor().process(target.host.check_output(DockerAppArmor().command()).splitlines())
    containers = {service: (target.container(service), service.replace("-", "_")) for service in plan.services}
    if plan.has_role("app"):
        release = json.loads(target.host.file(f"{target.settings.stack_root}/state/release.json").content_string)
        project = plan.app_project(release["color"])
        containers.update({service: (target.container(service, project=project), resources)
                           for service, resources in (("api", "app"), ("worker", "worker"))})
    problems = {
        service: found for service, (container, resources) in containers.items()
        if (found := _runtime_hardening_problems(_inspect(target, container), plan.resources(resources).pids,
                                                 apparmor))
    }
    assert not problems, problems


def test_only_the_edge_ports_are_published(target):
    s = target.settings
    plan = target.plan()
    published = {}
    host_ips = {}
    for service in plan.services:
        bindings = [binding for binding in _bindings(_inspect(target, target.container(service)))
                    if binding["HostIp"] != "127.0.0.1"]
        published[service] = sorted(int(binding["HostPort"]) for binding in bindings)
        host_ips[service] = {binding["HostIp"] for binding in bindings}
    # Beyond these, nginx publishes only Prometheus' read API, on loopback;
    # in a split inventory the data host publishes its services, and every
    # host the metrics of what it runs, on its private address only.
    private: dict[str, list[int]] = {}
    for ports in (plan.published_data_ports, plan.published_metrics_ports):
        for service, port in ports.items():
            private.setdefault(service, []).append(port)
    wanted = {service: sorted(ports) for service, ports in private.items()}
    if "nginx" in plan.services:
        wanted["nginx"] = sorted({s.edge.http_port, s.edge.https_port})
    assert {k: v for k, v in published.items() if v} == wanted
    for service in private:
        assert host_ips[service] == {plan.address}, service
    if "nginx" in plan.services:
        listening = target.host.socket.get_listening_sockets()
        for port in (s.edge.http_port, s.edge.https_port):
            assert any(sock.endswith(f":{port}") for sock in listening), port


def test_app_colors_are_published_on_the_private_address_only(target):
    target.requires("app")
    plan = target.plan()
    if not plan.split:
        pytest.skip("all-in-one: the app is reached over the internal network")
    release = json.loads(target.host.file(f"{target.settings.stack_root}/state/release.json").content_string)
    project = plan.app_project(release["color"])

    def published(service: str) -> set[tuple[str, int]]:
        bindings = _bindings(_inspect(target, target.container(service, project=project)))
        return {(binding["HostIp"], int(binding["HostPort"])) for binding in bindings}

    assert published("api") == {(plan.address, plan.app_host_port(release["color"]))}
    # The worker's metrics, for Prometheus on the monitoring hosts.
    wanted = {(plan.address, plan.worker_metrics_host_port(release["color"]))}
    assert published("worker") == (wanted if target.settings.monitoring.enabled else set())


def test_secret_files_belong_to_their_reader_only(target):
    s = target.settings
    plan = target.plan()
    directory = target.host.file(s.secrets_dir)
    assert directory.is_directory and directory.mode == 0o700 and directory.uid == 0
    for name in plan.secret_names:
        spec = SECRET_SPECS[name]
        secret = target.host.file(secret_path(s, name))
        assert secret.is_file, name
        assert secret.mode == 0o600, name
        assert secret.uid == spec.owner_uid, name
        assert len(secret.content_string.strip()) >= 16, name


def test_a_host_holds_only_the_secrets_its_roles_read(target):
    """Least privilege: no secret file beyond this host's set (a split
    inventory's edge holds none, its app hosts never the superuser's)."""
    s = target.settings
    plan = target.plan()
    from govstack.plan import GRPC_FILES

    held = set(target.host.check_output(f"ls -A {shlex.quote(s.secrets_dir)}").split())
    assert set(plan.compose_secrets) <= held
    # Beyond them, at most a supplied secret no longer supplied, or gRPC
    # material of an earlier upstream-lane deploy: still read by these roles.
    readable = {name for name, spec in SECRET_SPECS.items() if spec.needed_by & plan.roles}
    if plan.has_role("data"):
        readable |= set(GRPC_FILES)
    assert held <= readable | set(plan.compose_secrets), (
        f"{target.entry.name} holds secrets its roles do not read: {sorted(held - readable)}")


def test_no_secret_leaks_into_container_environment(target):
    s = target.settings
    plan = target.plan()
    values = [target.host.file(secret_path(s, name)).content_string.strip() for name in plan.secret_names]
    for service in target.plan().services:
        env = " ".join(_inspect(target, target.container(service))["Config"]["Env"] or [])
        for value in values:
            assert value not in env, f"a secret is visible in {service}'s environment"
    if plan.has_role("app"):
        release = json.loads(target.host.file(f"{s.stack_root}/state/release.json").content_string)
        project = plan.app_project(release["color"])
        for service in ("api", "worker"):
            env = " ".join(_inspect(target, target.container(service, project=project))["Config"]["Env"] or [])
            for value in values:
                assert value not in env, f"a secret is visible in {service}'s environment"


def test_postgres_runs_the_rendered_tuning(target):
    target.requires("data")
    plan = target.plan()
    names = ", ".join(f"'{name}'" for name in plan.postgres_conf)
    out = target.host.check_output(
        f"docker exec {target.container('postgres')} psql -U postgres -tA -F'|' "
        f"-c {shlex.quote(f'select name, setting, unit from pg_settings where name in ({names})')}"
    )
    live = {}
    for line in out.splitlines():
        name, setting, unit = line.split("|")
        if unit in ("8kB", "kB", "MB"):
            live[name] = int(setting) * {"8kB": 8, "kB": 1, "MB": 1024}[unit]
        else:
            live[name] = setting
    assert set(live) == set(plan.postgres_conf)
    for name, wanted in plan.postgres_conf.items():
        if isinstance(live[name], int):
            assert live[name] == size_to_kb(wanted), name
        else:
            assert float(live[name]) == float(wanted), name


def _in_netns_of(target, container: str, command: str):
    """Run a host command inside a container's network namespace (loopback of the stack)."""
    pid = target.host.check_output(f"docker inspect --format '{{{{.State.Pid}}}}' {container}")
    return target.host.run(f"nsenter -t {pid} -n {command}")


@pytest.mark.parametrize("keys_ok", [True, False], ids=["generated-keys", "wrong-keys"])
def test_object_store_accepts_only_the_generated_keys(target, keys_ok):
    target.requires("data")
    s = target.settings
    if s.object_store.kind != "seaweedfs":
        pytest.skip("the object store is an external endpoint, not part of this stack")
    access = target.host.file(secret_path(s, "s3_access_key")).content_string.strip()
    secret = target.host.file(secret_path(s, "s3_secret_key")).content_string.strip()
    if not keys_ok:
        secret = secret[::-1]
    result = _in_netns_of(
        target,
        target.container("seaweedfs"),
        f"curl -s -o /dev/null -w '%{{http_code}}' --aws-sigv4 aws:amz:{s.object_store.region}:s3 "
        f"--user {shlex.quote(access + ':' + secret)} http://127.0.0.1:8333/",
    )
    assert result.stdout == ("200" if keys_ok else "403")


def test_chroma_answers_inside_the_stack_only(target):
    target.requires("data")
    plan = target.plan()
    info = _inspect(target, target.container("chroma"))
    networks = info["NetworkSettings"]["Networks"]
    data_network = plan.networks["data"]
    if plan.split:
        # Published for the app hosts on the private address, nowhere else.
        assert {b["HostIp"] for b in _bindings(info)} == {plan.address}
        answer = target.host.run(
            f"curl -s -m 5 -o /dev/null -w '%{{http_code}}' http://{plan.address}:{plan.ports['chroma']}/api/v2/heartbeat"
        )
        assert answer.stdout == "200"
        return
    assert list(networks) == [data_network]
    ip = networks[data_network]["IPAddress"]
    inside = _in_netns_of(
        target, target.container("nginx"), f"curl -s -m 5 -o /dev/null -w '%{{http_code}}' http://{ip}:8000/api/v2/heartbeat"
    )
    assert inside.stdout == "200"
    # From the host: its bridge on that network has no address, so no route
    # leads to Chroma. (Proved from the routing table: a probe packet would
    # leave through the default route, and tests never send traffic there.)
    network_id = target.host.check_output(f"docker network inspect --format '{{{{.Id}}}}' {data_network}")
    bridge = f"br-{network_id[:12]}"
    assert target.host.check_output(f"ip -4 -o addr show dev {bridge}") == ""
    # `ip route get` fails outright on a host without a default route: no route either.
    assert f"dev {bridge}" not in target.host.run(f"ip -4 route get {ip}").stdout


def test_edge_serves_health_on_both_ports_and_redirects(target):
    target.requires("edge")
    s = target.settings
    http = target.host.run(f"curl -s -m 5 -w ' %{{http_code}}' http://127.0.0.1:{s.edge.http_port}/health")
    assert http.stdout.endswith(" 200")
    redirect = target.host.run(
        f"curl -s -m 5 -o /dev/null -w '%{{http_code}} %{{redirect_url}}' http://127.0.0.1:{s.edge.http_port}/x"
    )
    assert redirect.stdout.startswith("301 https://")
    cert = f"{s.config_dir}/nginx/tls/tls.crt"
    https = target.host.run(
        f"curl -s -m 5 --cacert {cert} --resolve {s.edge.hostname}:{s.edge.https_port}:127.0.0.1 "
        f"-w ' %{{http_code}}' https://{s.edge.hostname}:{s.edge.https_port}/health"
    )
    assert https.stdout.endswith(" 200"), https.stderr


def test_tls_key_is_private_to_nginx(target):
    target.requires("edge")
    key = target.host.file(f"{target.settings.config_dir}/nginx/tls/tls.key")
    assert key.mode == 0o600 and key.uid == target.plan().uids["nginx"]


def test_serving_color_is_the_one_in_the_release_record_and_ledger(target):
    import json as _json

    s = target.settings
    release = _json.loads(target.host.file(f"{s.stack_root}/state/release.json").content_string)
    ledger_file = target.host.file(f"{s.stack_root}/state/ledger.jsonl")
    if ledger_file.exists:
        done = [_json.loads(line) for line in ledger_file.content_string.splitlines() if line.strip()]
        done = [record for record in done if record["result"] == "ok"]
        if done:
            assert done[-1]["serving"] == f"{release['color']} {release['version']}"
    plan = target.plan()
    if plan.has_role("app"):
        api = target.container("api", project=plan.app_project(release["color"]))
        info = _inspect(target, api)
        assert info["State"]["Health"]["Status"] == "healthy"
        assert info["Config"]["Image"] == plan.app_image(release["version"])
    if plan.has_role("edge"):
        nginx_conf = target.host.file(f"{s.config_dir}/nginx/nginx.conf").content_string
        if plan.split:
            # Every app host's API of the serving color, in the upstream nginx routes to.
            assert f'default "{plan.app_upstream_name(release["color"])}";' in nginx_conf
            for server in plan.app_upstream_servers(release["color"]):
                assert f"server {server} max_fails=" in nginx_conf
        else:
            assert f'default "{plan.app_alias(release["color"])}:' in nginx_conf


def test_published_ports_are_firewalled_to_the_hosts_that_use_them(target):
    from govstack.role_operations import FIREWALL_CHAIN

    plan = target.plan()
    if not (plan.split and target.settings.firewall and plan.firewall_openings):
        pytest.skip("no port published on a private address here")
    assert target.host.run(f"iptables -w -C DOCKER-USER -j {FIREWALL_CHAIN}").rc == 0
    rules = target.host.check_output(f"iptables -w -S {FIREWALL_CHAIN}")
    for port, sources in plan.firewall_openings:
        port_rules = [line for line in rules.splitlines() if f"--ctorigdstport {port} " in line]
        assert port_rules and port_rules[-1].endswith("-j DROP"), (port, port_rules)
        assert sorted(line.split("-s ", 1)[1].split("/", 1)[0] for line in port_rules[:-1]) == sorted(sources)


def test_backup_service_runs_the_rendered_schedule_unprivileged(target):
    """The schedule is what the settings say (the file the in-container
    scheduler reads is the one rendered on the host), and the job runs as
    its own uid with no capabilities."""
    from govstack.backup.plan import host_paths
    from govstack.backup.render import render_crontab

    target.requires("data")
    if not target.settings.backup.enabled:
        pytest.skip("govstack.backup.enabled is false")
    crontab = target.host.file(host_paths(target.settings).crontab)
    assert crontab.exists and crontab.content_string == render_crontab(target.plan())
    b = target.settings.backup
    line = f"{b.schedule} govstack-backup run" + (" --if-changed" if b.skip_unchanged else "")
    assert f"{line}\n" in crontab.content_string
    info = _inspect(target, target.container("backup"))
    assert info["State"]["Health"]["Status"] == "healthy"
    assert info["Config"]["User"] == f"{target.plan().uids['backup']}:{target.plan().uids['backup']}"
    assert info["HostConfig"]["CapDrop"] == ["ALL"]
    inside = target.host.check_output(f"docker exec {target.container('backup')} cat /etc/govstack-backup/crontab")
    assert inside.strip() == crontab.content_string.strip()


def test_postgres_archives_wal_and_the_sidecar_runs_the_rendered_schedule(target):
    """Point-in-time recovery: archive_mode on with pgBackRest's archive_command, the
    stanza matches the running cluster with a base backup, and the sidecar's crontab
    is the rendered one."""
    from govstack.backup.plan import PITR_SERVICE, pitr_paths
    from govstack.backup.render import render_pgbackrest_crontab

    target.requires("data")
    if not target.settings.pitr_enabled:
        pytest.skip("point-in-time recovery is off (backup.pitr)")
    settings = target.host.check_output(
        f"docker exec {target.container('postgres')} psql -U postgres -tA -F'|' -c "
        "\"select name, setting from pg_settings where name in ('archive_mode', 'archive_timeout', "
        "'track_commit_timestamp')\"")
    values = dict(line.split("|") for line in settings.splitlines())
    assert values == {"archive_mode": "on", "archive_timeout": str(target.settings.backup.pitr.archive_timeout_s),
                      "track_commit_timestamp": "on"}
    crontab = target.host.file(pitr_paths(target.settings).crontab)
    assert crontab.content_string == render_pgbackrest_crontab(target.plan())
    state = json.loads(target.host.check_output(
        f"docker exec {target.container(PITR_SERVICE)} govstack-backup pitr state").splitlines()[-1])
    assert state["ok"] and state["matches_cluster"] and state["backups"] >= 1, state


def test_every_offline_image_the_host_runs_carries_its_sbom_labels(target):
    """Issue 17: each running container of an image built here (the app release aside: a release
    tag is immutable and may predate SBOMs) runs the image the deploy labelled with its SBOM's
    sha256, this host's base image id and the build-inputs hash it would be built from now."""
    from govstack import catalog, images, sbom

    if target.settings.images.lane != "offline":
        pytest.skip("SBOMs are made by the offline lane's builds")
    plan = target.plan()
    base_id = target.host.check_output(
        f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(images.base_image_tag(target.settings))}")
    for image in catalog.offline_builds(target.settings, plan.services):
        info = _inspect(target, target.container(image.service))
        labels = json.loads(target.host.check_output(
            f"docker image inspect --format '{{{{json .Config.Labels}}}}' {shlex.quote(info['Image'])}")) or {}
        assert len(labels.get(sbom.SBOM_SHA_LABEL, "")) == 64, f"{image.tag}: no SBOM label"
        assert labels.get(sbom.BASE_ID_LABEL) == base_id, image.tag
        assert labels.get(images.CONTEXT_HASH_LABEL) == sbom.build_inputs_hash(target.settings, image), image.tag
