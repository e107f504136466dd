"""Helpers and fixtures for the backup end-to-end tests (test_backup_*.py). No tests here.

Everything goes through the deployed stack: the `govstack backup|restore|drill`
CLI as an operator runs it, the backup service's own `govstack-backup` for
looking inside the repository, and the app's API for real data.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from govstack.backup.plan import host_paths
from govstack.backup.remote import BackupHost
from govstack.remote import testinfra_host
from tests.conftest import run_govstack
from tests.e2e.test_app_support import Api, samples, unique, wait_indexed

# The fixed queries the drill compares: one per sample topic, so every document can answer.
DRILL_QUERIES = [topic[2] for topic in samples.TOPICS.values()]


def cli(stack: Any, *args: str, env: dict[str, str] | None = None, timeout: int = 1800) -> subprocess.CompletedProcess:
    return run_govstack(*args, "-i", stack.inventory, env=env, timeout=timeout)


def cli_json(stack: Any, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = cli(stack, *args, "--json", env=env)
    assert result.returncode == 0, f"govstack {' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return json.loads(result.stdout)


def cause(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("govstack: ")]
    assert lines, f"no 'govstack:' line in stderr:\n{result.stderr[-2000:]}"
    return lines[-1]


def compose(stack: Any, *args: str, timeout: int = 900, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
    s = stack.settings
    result = subprocess.run(["docker", "compose", "-p", s.project, "-f", s.compose_file, *args],
                            capture_output=True, text=True, timeout=timeout, input=input)
    if check:
        assert result.returncode == 0, f"docker compose {' '.join(args[:4])}: {result.stderr[-2000:]}"
    return result


def job(stack: Any, *args: str, extra: tuple[str, ...] = (), check: bool = True,
        input: str | None = None) -> dict[str, Any]:
    """A govstack-backup command that answers JSON, in a one-off container of the service
    (``extra``: more `docker compose run` options, e.g. volumes; ``input``: its stdin)."""
    result = compose(stack, "run", "--rm", "--no-deps", "-T", *extra, "backup", *args, check=False, input=input)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if check:
        assert result.returncode == 0 and lines, f"govstack-backup {' '.join(args)}: {result.stderr[-2000:]}"
    return {**(json.loads(lines[-1]) if lines else {}), "_rc": result.returncode, "_stderr": result.stderr}


def metrics(stack: Any) -> dict[str, float]:
    text = Path(host_paths(stack.settings).metrics_file).read_text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            values[name] = float(value)
    return values


def running_ids(stack: Any, project: str) -> dict[str, str]:
    out = subprocess.run(
        ["docker", "ps", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}",
         "--format", '{{.Label "com.docker.compose.service"}} {{.ID}}'],
        capture_output=True, text=True, check=True).stdout
    return dict(line.split() for line in out.splitlines())


def seed(api: Api, stack: Any, collection: str, salt: str) -> list[int]:
    """One document of every supported type, uploaded through the edge and indexed
    (which writes audit rows, chunks and vectors)."""
    ids = []
    for kind in samples.TOPICS:
        name, data = samples.topic_document(kind, salt=salt)
        r = api.upload(collection, name, data)
        assert r.status_code in (200, 201), r.text
        ids.append(r.json()["id"])
    wait_indexed(stack, ids)
    return ids


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def admin(stack: Any) -> Api:
    return Api(stack, stack.admin_api_key)


@pytest.fixture(scope="module")
def stack_host(stack: Any) -> BackupHost:
    """The orchestration's own view of the test stack (testinfra, local)."""
    return BackupHost(testinfra_host("@local", {}), stack.plan)


@pytest.fixture(scope="module")
def seeded(stack: Any, admin: Api) -> dict[str, Any]:
    collection = unique("bk")
    ids = seed(admin, stack, collection, salt=collection)
    return {"collection": collection, "ids": ids}


@pytest.fixture
def drop_kept_databases(stack: Any):
    """Restores with --force keep what they replace (a renamed database, renamed
    collections); on the test stack they are dropped afterwards."""
    yield
    db = stack.settings.postgres.database
    for (name,) in stack.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{db}\\_pre\\_restore\\_%'"):
        stack.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    client = stack.chroma()
    for coll in client.list_collections():
        name = coll.name if hasattr(coll, "name") else coll
        if "__pre_restore_" in name:
            client.delete_collection(name)


@pytest.fixture
def cleanup_resumed(stack: Any):
    """A restore pauses the app's cleanup until an operator resumes it; the shared stack gets it
    resumed after the test, as the restore runbooks end."""
    yield
    result = cli(stack, "cleanup", "resume", "--yes", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def remove_aside(stack: Any) -> None:
    """Drill leftovers (moved-aside data directories) of the test stack only."""
    aside = host_paths(stack.settings).drill_aside
    assert aside.startswith(stack.settings.data_dir + "/")
    subprocess.run(["rm", "-rf", aside], check=True)


def in_test_stack(stack: Any) -> None:
    """Destructive tests (drill, forced restore, corrupted pack) refuse the
    production defaults: a test inventory has its own root and project."""
    from govstack.settings import Settings

    s, defaults = stack.settings, Settings()
    if s.stack_root == defaults.stack_root or s.project == defaults.project or not os.path.isdir(s.stack_root):
        pytest.skip(f"destructive backup tests refuse to run against {s.stack_root} (project {s.project})")
