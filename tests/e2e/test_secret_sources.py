"""Issue 12 §1 on the all-in-one stack: a deploy never replaces a secret that
data needs. With the owner's Postgres password gone from the host while its
data directory exists, `govstack up` stops before any operation, with one
line naming the secret and the host, and no secret file changes; `govstack
deploy` on a stack lacking a secret of this version stops the same way. (Hosts that
disagree need two hosts: tests/multihost/test_secrets.py.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import run_govstack


def secret_digests(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def test_up_stops_before_any_operation_when_a_secret_postgres_data_needs_is_gone(stack):
    secrets = Path(stack.settings.secrets_dir)
    before = secret_digests(secrets)
    target = secrets / "postgres_password"
    aside = secrets.parent / f".{target.name}.kept-by-test"
    target.rename(aside)
    try:
        result = run_govstack("up", "-i", stack.inventory, timeout=900)
    finally:
        aside.rename(target)
    assert result.returncode != 0, result.stdout[-2000:]
    cause = result.stderr.strip().splitlines()[-1]
    assert "deploy stopped before changing anything: postgres_password is on no host" in cause, cause
    assert "holds an initialised Postgres data directory" in cause, cause
    assert "--> Starting operation" not in result.stdout, "operations ran"
    assert secret_digests(secrets) == before


def test_deploy_on_a_stack_lacking_a_secret_of_this_version_stops_before_any_change(stack):
    """A stack set up by an older bundle lacks the schema owner's password:
    `govstack deploy` (which creates no secret, unlike `up`) must stop before
    moving ownership or migrating, or the serving color could not restart."""
    secrets = Path(stack.settings.secrets_dir)
    before = secret_digests(secrets)
    serving = stack.current_release()
    target = secrets / "postgres_owner_password"
    aside = secrets.parent / f".{target.name}.kept-by-test"
    target.rename(aside)
    try:
        result = run_govstack("deploy", "-i", stack.inventory, "--version", "never-started", timeout=900)
    finally:
        aside.rename(target)
    output = result.stdout + result.stderr
    assert result.returncode != 0, result.stdout[-2000:]
    assert "secret postgres_owner_password missing" in output and "run `govstack up` first" in output, output[-2000:]
    assert "--> Starting operation" not in result.stdout, "operations ran"
    assert stack.current_release() == serving
    assert secret_digests(secrets) == before
