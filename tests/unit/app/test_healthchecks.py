"""The app's container healthchecks: shell commands (no Python start per check) that prove what
`govstack-app healthcheck` proves. The rendered commands run here under bash against a real HTTP
server and real heartbeat files; the worker's loop touches its heartbeat only after Postgres
answered."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
import time
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import yaml
from govstack_app import worker as worker_module

from govstack.plan import StackPlan
from govstack.render import render_app_compose
from govstack.settings import build_settings
from govstack.tuning import HostResources


@pytest.fixture(scope="module")
def checks() -> dict[str, list[str]]:
    plan = StackPlan(build_settings([{"stack_root": "/srv/gs"}], environ={}), HostResources(memory_mb=8192, cpus=2))
    services = yaml.safe_load(render_app_compose(plan, "blue", "v1"))["services"]
    tests = {name: services[name]["healthcheck"]["test"] for name in ("api", "worker")}
    for test in tests.values():
        assert test[:3] == ["CMD", "bash", "-c"], test
    return {name: test[3] for name, test in tests.items()} | {"app_port": str(plan.ports["app"])}


def run(script: str) -> int:
    return subprocess.run(["bash", "-c", script], capture_output=True, timeout=30, check=False).returncode


# -- worker ------------------------------------------------------------------------------------
def test_worker_check_tests_the_heartbeat_the_worker_writes_with_its_age_limit(checks, tmp_path):
    script = checks["worker"]
    assert str(worker_module.HEARTBEAT_FILE) in script
    assert f"'-{worker_module.HEARTBEAT_MAX_AGE_S} seconds'" in script
    heartbeat = tmp_path / "heartbeat"
    here = script.replace(str(worker_module.HEARTBEAT_FILE), str(heartbeat))
    assert run(here) != 0, "no heartbeat file yet"
    heartbeat.touch()
    assert run(here) == 0
    stale = time.time() - worker_module.HEARTBEAT_MAX_AGE_S - 5
    os.utime(heartbeat, (stale, stale))
    assert run(here) != 0, "a heartbeat older than the limit"


class FailingPool:
    """A pool whose Postgres is down; it stops the worker after the first attempt."""

    def __init__(self, worker: list[Any]) -> None:
        self.worker = worker

    def connection(self, timeout: float = 0) -> Any:
        self.worker[0].stop.set()
        raise psycopg.OperationalError("connection refused")


class IdlePool:
    """Postgres up, another color indexing: the worker's one query answers, then it stops."""

    def __init__(self, worker: list[Any]) -> None:
        self.worker = worker

    def connection(self, timeout: float = 0) -> Any:
        worker, row = self.worker[0], {"value": "green"}

        class Conn:
            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                worker.stop.set()

            def execute(self, sql: str, *args: object) -> Any:
                return SimpleNamespace(fetchone=lambda: row)

        return Conn()


@pytest.mark.parametrize(("pool", "touched"), [(FailingPool, False), (IdlePool, True)])
def test_worker_touches_its_heartbeat_only_after_postgres_answered(pool, touched, tmp_path, monkeypatch):
    heartbeat = tmp_path / "heartbeat"
    monkeypatch.setattr(worker_module, "HEARTBEAT_FILE", heartbeat)
    holder: list[Any] = []
    settings = SimpleNamespace(app_color="blue", worker_batch_size=4)
    svc = SimpleNamespace(pool=pool(holder), settings=settings, embedder=SimpleNamespace(model_name="m"))
    worker = worker_module.Worker(svc)
    worker._last_backlog = worker._last_maintenance = time.monotonic()  # no maintenance queries now
    holder.append(worker)
    worker.run()
    assert heartbeat.exists() is touched


# -- api ---------------------------------------------------------------------------------------
class Ready(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        Ready.paths.append(self.path)
        self.send_response(Ready.status)
        self.end_headers()
        self.wfile.write(b'{"status": "ready"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ready_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_api_check_asks_ready_and_passes_only_on_200(checks, ready_server):
    script = checks["api"]
    port = str(ready_server.server_address[1])
    assert f"/dev/tcp/127.0.0.1/{checks['app_port']} " in script
    here = script.replace(f"/dev/tcp/127.0.0.1/{checks['app_port']} ", f"/dev/tcp/127.0.0.1/{port} ")
    Ready.paths.clear()
    Ready.status = 200
    assert run(here) == 0
    assert Ready.paths == ["/ready"]
    Ready.status = 503
    assert run(here) != 0, "/ready answered 503 (a backing service is down)"


def test_api_check_fails_when_nothing_listens(checks):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    port = str(server.server_address[1])
    server.server_close()  # the port was free a moment ago; nothing listens now
    here = checks["api"].replace(f"/dev/tcp/127.0.0.1/{checks['app_port']} ", f"/dev/tcp/127.0.0.1/{port} ")
    assert run(here) != 0
