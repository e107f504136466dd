"""The e2e modules share one deployed stack per tier, and most of them act through the bootstrap
admin key in the stack's secret file. A module that leaves that key refused (a rotation that half
failed, a restore of a database older than the key) would fail every later module with a bare
401, far from its cause: each module's end checks the key, names the module that broke it, and
repairs it for the modules after."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import run_govstack


def _file_key(stack: Any) -> str:
    return Path(stack.settings.secrets_dir, "app_admin_api_key").read_text().strip()


def _key_status(stack: Any, key: str) -> int:
    """GET /api/v1/keys with ``key`` through the edge: 200 or 401 once the app answers (a module
    may end while the app still starts); 0 when it never did within a minute."""
    deadline = time.monotonic() + 60
    while True:
        try:
            status = requests.get(f"{stack.base_url}/api/v1/keys", headers={"X-API-Key": key},
                                  verify=stack.verify, timeout=10).status_code
        except requests.RequestException:
            status = 0
        if status in (200, 401) or time.monotonic() > deadline:
            return status if status in (200, 401) else 0
        time.sleep(2)


@pytest.fixture(scope="module", autouse=True)
def bootstrap_key_kept(request: pytest.FixtureRequest) -> Any:
    stack = request.getfixturevalue("stack")
    yield
    module = request.module.__name__
    key = _file_key(stack)
    problems = []
    if key != stack.admin_api_key:
        problems.append("changed the secret file's key without telling the stack fixture (stack.admin_api_key)")
        stack.admin_api_key = key
    if _key_status(stack, key) == 401:
        problems.append("left the secret file's bootstrap admin key refused (401)")
        repaired = run_govstack("admin-key", "rotate", "--lock-wait", "300", "-i", stack.inventory, timeout=900)
        stack.admin_api_key = _file_key(stack)
        problems.append("repaired with `govstack admin-key rotate`" if repaired.returncode == 0
                        else f"and `govstack admin-key rotate` failed to repair it: {repaired.stderr[-1000:]}")
    if problems:
        pytest.fail(f"{module}: " + "; ".join(problems), pytrace=False)
