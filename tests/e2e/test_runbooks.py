"""Every runbook's executable blocks, in order, against the deployed test stack.

A runbook stops at its first failing block (the error names the runbook, the block and the
Markdown line). The variables an operator would choose are set here: the backup run to restore
(a fresh one, so no test loses data), the collection to rebuild, the version to deploy (an alias of
the serving image, so nothing is built), a second stack to move to, and CONFIRM_ROLLBACK=yes so that
the rollback blocks run too. Destructive runbooks restore what they destroy and leave the stack
healthy; move-to-new-host's second stack is removed afterwards.

GOVSTACK_RUNBOOKS=name,name limits the run to some runbooks (all by default).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from govstack.runbook import RunbookResult, parse_runbook, run_runbook, stack_environment, summarize
from tests.conftest import REPO_ROOT, run_govstack
from tests.e2e.test_app_support import Api, wait_indexed

RUNBOOKS = REPO_ROOT / "runbooks"
# Read-only and cheap first, destructive later; move-to-new-host last (a second stack).
ORDER = [
    "README", "alerts", "privacy-analytics", "incident-communication", "disk-full",
    "rebuild-vector-index", "blue-green-deploy", "restore-objects", "restore-vectors",
    "rotate-secrets", "move-to-new-host",
]
# Run by other modules, not here as well (read from their run_runbook calls, not listed twice):
# - the site runbooks by the multi-host lane, where they are written for (each block on its host
#   group): on one host their blocks are the same commands on the same machine (~7 minutes here);
# - dr-drill by the drill test, which reads the evidence of the drill the runbook ran (one drill,
#   ~4 minutes, instead of two).
SITE_LANE = REPO_ROOT / "tests" / "multihost" / "test_site_runbooks.py"
DRILL_TEST = REPO_ROOT / "tests" / "e2e" / "test_backup_drill.py"
RUN_ELSEWHERE = {
    SITE_LANE.name: frozenset(re.findall(r'\brun_runbook\(deployed, "([a-z-]+)"', SITE_LANE.read_text())),
    DRILL_TEST.name: frozenset(re.findall(r'\brun_runbook\(RUNBOOKS / "([a-z-]+)\.md"', DRILL_TEST.read_text())),
}
NEEDS_SNAPSHOT = {"restore-objects", "restore-vectors"}
MOVE_TARGET = {
    "stack_root": "/var/lib/govstack-move-test",
    "project": "gsmove",
    "images": {"lane": "offline"},
    # Below the kernel's ephemeral port range (32768+), where a client socket may hold a port.
    "edge": {"hostname": "localhost", "http_port": 29080, "https_port": 29443},
    "healthy_timeout_s": 240,
    "network": {"data_subnet": "10.253.41.0/24"},
    "monitoring": {"enabled": False},
}
RESULTS: list[RunbookResult] = []


def selected() -> list[str]:
    wanted = os.environ.get("GOVSTACK_RUNBOOKS")
    names = ORDER if not wanted else [n for n in ORDER if n in wanted.split(",")]
    elsewhere = frozenset().union(*RUN_ELSEWHERE.values())
    missing = {p.stem for p in RUNBOOKS.glob("*.md")} - set(ORDER) - elsewhere
    assert not missing, f"runbooks neither in ORDER nor run by {', '.join(RUN_ELSEWHERE)}: {missing}"
    for module, theirs in RUN_ELSEWHERE.items():
        assert theirs, f"{module} runs no runbook: its run_runbook calls are not where this module looks"
        assert not theirs & set(ORDER), f"run by {module} already: {theirs & set(ORDER)}"
    return names


@functools.cache
def registered_commands() -> frozenset[str]:
    out = run_govstack("--help", timeout=120).stdout
    return frozenset(re.findall(r"^  ([a-z][a-z-]*)\s", out.split("Commands:", 1)[-1], re.MULTILINE))


def missing_commands(name: str) -> list[str]:
    """`govstack` subcommands the runbook's executable blocks use that the CLI does not have (yet)."""
    used = {m for block in parse_runbook(RUNBOOKS / f"{name}.md") if block.kind == "run"
            for m in re.findall(r"\bgovstack ([a-z][a-z-]*)", block.code)}
    return sorted(used - registered_commands())


@pytest.fixture(scope="module")
def runbook_vars(stack, tmp_path_factory):
    """What the operator would choose, made on the test stack."""
    admin = Api(stack, stack.admin_api_key)
    collection = f"runbook-{uuid.uuid4().hex[:6]}"
    ids = []
    for name, text in (("policy.txt", b"Records retention policy: keep land records for 30 years."),
                       ("notice.md", b"# Road maintenance notice\n\nThe north road closes in May.")):
        response = admin.upload(collection, name, text)
        assert response.status_code in (200, 201), response.text
        ids.append(int(response.json()["id"]))
    wait_indexed(stack, ids)
    version = f"rb-{uuid.uuid4().hex[:8]}"
    current = json.loads(Path(stack.settings.stack_root, "state", "release.json").read_text())["version"]
    subprocess.run(["docker", "tag", f"govstack/app:{current}", f"govstack/app:{version}"], check=True)
    inventory = tmp_path_factory.mktemp("move") / "move_target.py"
    inventory.write_text(f"move_target = [('@local', {{'govstack': {MOVE_TARGET!r}}})]\n")
    # disk-full drops a replication slot nobody reads (SLOT): one made for it.
    slot = f"runbook_{uuid.uuid4().hex[:6]}"
    postgres = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={stack.settings.project}",
         "--filter", "label=com.docker.compose.service=postgres"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    subprocess.run(["docker", "exec", postgres, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-c",
                    f"select pg_create_physical_replication_slot('{slot}')"], check=True, capture_output=True)
    # S3_GRACE_S: rotate-secrets keeps the old S3 key pair this long (300 s by default; nothing
    # here holds a presigned URL across the rotation).
    # The destructive blocks' confirmations: what they drop on the test stack is made for it
    # (the slot) or kept by the restores before them.
    return {"COLLECTION": collection, "VERSION": version, "NEW_INVENTORY": str(inventory), "NEW_HOST": "",
            "CONFIRM_ROLLBACK": "yes", "S3_GRACE_S": "5", "SLOT": slot,
            "CONFIRM_DROP_LEFTOVERS": "yes", "CONFIRM_AUDIT_RETENTION": "yes"}


def fresh_backup(stack) -> str:
    result = run_govstack("backup", "-i", stack.inventory, "--json", timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)["run"]


def healthy(stack) -> None:
    """Every container of the stack and of the serving color running and healthy."""
    deadline = time.monotonic() + 300
    color = json.loads(Path(stack.settings.stack_root, "state", "release.json").read_text())["color"]
    while True:
        bad = []
        for project in (stack.settings.project, f"{stack.settings.project}-{color}"):
            out = subprocess.run(
                ["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
                 "--filter", "label=com.docker.compose.oneoff=False", "--format", "{{.Names}} {{.Status}}"],
                capture_output=True, text=True, check=True).stdout
            bad += [line for line in out.splitlines() if "(healthy)" not in line]
        if not bad:
            return
        assert time.monotonic() < deadline, f"not healthy after the runbook: {bad}"
        time.sleep(3)


@pytest.mark.parametrize("name", selected())
def test_runbook(stack, runbook_vars, name, capsys):
    missing = missing_commands(name)
    assert not missing, f"{name}.md uses `govstack {'`, `govstack '.join(missing)}`, which the CLI does not have"
    env = {**stack_environment(stack.inventory), **runbook_vars}
    if name in NEEDS_SNAPSHOT:
        env["SNAPSHOT"] = fresh_backup(stack)
    try:
        result = run_runbook(RUNBOOKS / f"{name}.md", env, out=sys.stdout)
    except BaseException:
        # A runbook that failed half-way may have left the app stopped: converge the stack for the
        # tests that follow, then report the failure.
        run_govstack("up", "-i", stack.inventory, timeout=1800)
        raise
    finally:
        if name == "rotate-secrets":
            # The rest of the session (and the hosts tier) uses the new bootstrap key.
            stack.admin_api_key = Path(stack.settings.secrets_dir, "app_admin_api_key").read_text().strip()
        if name == "move-to-new-host":
            subprocess.run([sys.executable, "-m", "tests.e2e.teardown", runbook_vars["NEW_INVENTORY"]],
                           cwd=REPO_ROOT, check=False)
    RESULTS.append(result)
    healthy(stack)
    with capsys.disabled():
        print(f"\n{name}: {result.executed} executed, {result.manual} manual, {result.human} human, "
              f"{result.seconds:.0f} s")


def test_executed_and_manual_blocks(capsys):
    if not RESULTS:
        pytest.skip("no runbook ran")
    with capsys.disabled():
        print("\n" + summarize(RESULTS))
    assert sum(r.executed for r in RESULTS) > sum(r.manual for r in RESULTS)
