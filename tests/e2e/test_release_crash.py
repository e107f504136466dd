"""A release (or a restore) crashed at each of its steps, and the command after it.

The controller (the CLI and its pyinfra) is killed at each step of a
blue/green release in turn (GOVSTACK_FAULT, govstack/faults.py): before the
new color starts, after it starts, after it is healthy, after the edge
switch, after the drain and after the old color stops. After each crash,
and after the `deploy`, `rollback` or `up` that follows it:

- traffic is on a healthy color, answered through the edge;
- the release record matches what serves: nginx's live upstream, the color
  that answers, and the image its API runs;
- the ledger says what happened: the crashed attempt is found by the next
  command (the lock the dead CLI held is free at once) and written as
  ``interrupted``, with what served then.

A restore is killed likewise after it stopped the writers, before it
swaps the restored database in and after: the database is always whole and
the next `up` finds the attempt and serves again.

Each command follows crashes on both sides of the switch. Every version is
an alias tag of the serving image (no build). Two commands also run at the
same time: a second one without --lock-wait fails naming the first, and a
rollback that waits acts on the release the deploy before it left (the
state is read only under the lock).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from govstack import faults
from tests.conftest import REPO_ROOT, run_govstack
from tests.e2e.test_app_support import Api


def state(stack, name: str) -> Path:
    return Path(stack.settings.stack_root, "state", name)


def record(stack) -> dict:
    return json.loads(state(stack, "release.json").read_text())


def ledger(stack) -> list[dict]:
    return [json.loads(line) for line in state(stack, "ledger.jsonl").read_text().splitlines() if line.strip()]


def alias(stack, prefix: str) -> str:
    """A new version without a build: the serving image under another tag."""
    version = f"{prefix}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["docker", "tag", f"govstack/app:{record(stack)['version']}", f"govstack/app:{version}"], check=True)
    return version


def crash(stack, point: str, *args: str) -> subprocess.CompletedProcess:
    result = run_govstack(*args, "-i", stack.inventory, timeout=900, env={"GOVSTACK_FAULT": point})
    assert result.returncode == -9, (
        f"the CLI was not killed at {point}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def ok(stack, *args: str) -> subprocess.CompletedProcess:
    result = run_govstack(*args, "-i", stack.inventory, timeout=900)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    return result


def assert_serving_matches_the_record(stack) -> dict:
    """Traffic on a healthy color, and the record names exactly what serves."""
    rec = record(stack)
    color, version = rec["color"], rec["version"]
    live = Path(stack.settings.config_dir, "nginx", "nginx.conf").read_text()
    upstream = re.search(r'map "" \$app_upstream \{\s*default "([^"]+)"', live).group(1)
    assert upstream == f"{stack.plan.app_alias(color)}:{stack.plan.ports['app']}", (
        f"nginx sends traffic to {upstream}, the record names {color}")
    ready = Api(stack, None).call("GET", "/ready")
    assert ready.status_code == 200, ready.text
    assert ready.headers["x-govstack-color"] == color
    project = stack.plan.app_project(color)
    for service in ("api", "worker"):
        # The release switched on the container's own healthcheck passing
        # (operations._all_healthy_or_fail); the engine says "healthy" at its
        # next interval, a few seconds later (bounded wait, no time asserted).
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run(
                ["docker", "ps", "--filter", f"label=com.docker.compose.project={project}",
                 "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Image}} {{.Status}}"],
                capture_output=True, text=True, check=True).stdout.split("\n")[0]
            if "(health: starting)" not in out or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert out.startswith(f"govstack/app:{version} ") and "(healthy)" in out, f"{service} of {color}: {out!r}"
    return rec


def assert_crash_left_an_attempt(stack, action: str, version: str | None) -> None:
    attempt = json.loads(state(stack, "attempt.json").read_text())
    assert (attempt["action"], attempt["version"]) == (action, version)


def assert_found_interrupted(stack, result, action: str, version: str | None, lines_before: int) -> None:
    """The command after a crash wrote the attempt's ledger line and said so."""
    assert f"the {action} of {version or 'the stack'} that " in result.stderr and "was interrupted" in result.stderr
    new = ledger(stack)[lines_before:]
    interrupted = [r for r in new if r["result"] == "interrupted"]
    assert [(r["action"], r["version"]) for r in interrupted] == [(action, version)], new
    assert interrupted[0]["serving"] and interrupted[0]["started"]
    if result.returncode == 0:
        assert not state(stack, "attempt.json").exists()


def idle_runs(stack) -> list[str]:
    idle = "green" if record(stack)["color"] == "blue" else "blue"
    project = stack.plan.app_project(idle)
    return subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                          capture_output=True, text=True, check=True).stdout.split()


def test_crashes_after_the_switch_leave_the_new_release_serving_and_recorded(stack):
    started = time.monotonic()
    before = assert_serving_matches_the_record(stack)

    v4 = alias(stack, "crash-d")
    crash(stack, "after_switch", "deploy", "--version", v4)
    switched = assert_serving_matches_the_record(stack)
    assert (switched["version"], switched["previous"]["version"]) == (v4, before["version"])

    # A rollback finds it, switches back and is killed once the edge drained.
    lines = len(ledger(stack))
    back = crash(stack, "after_drain", "rollback")
    assert_found_interrupted(stack, back, "deploy", v4, lines)
    rolled = assert_serving_matches_the_record(stack)
    assert (rolled["version"], rolled["color"]) == (before["version"], before["color"])
    assert idle_runs(stack), "the crashed rollback stopped the old color before its time"

    lines = len(ledger(stack))
    up = ok(stack, "up")
    assert_found_interrupted(stack, up, "rollback", before["version"], lines)
    assert assert_serving_matches_the_record(stack) == rolled
    assert idle_runs(stack) == []

    v5 = alias(stack, "crash-e")
    crash(stack, "after_stop", "deploy", "--version", v5)
    stopped = assert_serving_matches_the_record(stack)
    assert stopped["version"] == v5 and idle_runs(stack) == []

    # The next deploy finds the attempt; meanwhile a command without --lock-wait
    # fails naming it, and a rollback that waits acts on what that deploy left.
    v6 = alias(stack, "crash-f")
    lines = len(ledger(stack))
    cli = [sys.executable, "-m", "govstack.cli"]
    deploy = subprocess.Popen([*cli, "deploy", "--version", v6, "-i", stack.inventory], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while f"deploy {v6}" not in (state(stack, "lock-holder.json").read_text()
                                     if state(stack, "lock-holder.json").exists() else ""):
            assert time.monotonic() < deadline and deploy.poll() is None, "the deploy never took the lock"
            time.sleep(0.2)
        refused = run_govstack("audit-retention", "-i", stack.inventory, timeout=120)
        assert refused.returncode == 3, refused.stderr
        assert refused.stderr.strip().splitlines()[-1].startswith("govstack: @local: locked by ")
        assert f"(deploy {v6}; pid {deploy.pid} on " in refused.stderr
        rollback = run_govstack("rollback", "--lock-wait", "600", "-i", stack.inventory, timeout=900)
    finally:
        out, err = deploy.communicate(timeout=900)
    assert deploy.returncode == 0, err[-2000:]
    assert_found_interrupted(stack, subprocess.CompletedProcess([], 0, out, err), "deploy", v5, lines)
    assert rollback.returncode == 0, rollback.stderr[-2000:]
    assert "waiting for the lock, held by" in rollback.stderr
    final = assert_serving_matches_the_record(stack)
    assert final["version"] == v5, "the rollback did not act on the release the deploy before it left"
    assert [(r["action"], r["version"], r["result"]) for r in ledger(stack)[-2:]] == [
        ("deploy", v6, "ok"), ("rollback", v5, "ok")]
    print(f"\ncrashes after the switch and their next commands: {time.monotonic() - started:.0f} s")


def test_crashes_before_the_switch_leave_the_old_release_serving(stack):
    started = time.monotonic()
    if not record(stack).get("previous"):  # a rollback needs one (the test after the switch leaves one)
        ok(stack, "deploy", "--version", alias(stack, "crash-0"))
    start = assert_serving_matches_the_record(stack)

    v1 = alias(stack, "crash-a")
    crash(stack, "before_start", "deploy", "--version", v1)
    assert assert_serving_matches_the_record(stack) == start
    assert_crash_left_an_attempt(stack, "deploy", v1)

    # The next deploy finds the attempt (the dead CLI's lock is free) and is itself killed once its color started.
    v2 = alias(stack, "crash-b")
    lines = len(ledger(stack))
    second = crash(stack, "after_start", "deploy", "--version", v2)
    assert_found_interrupted(stack, second, "deploy", v1, lines)
    assert assert_serving_matches_the_record(stack) == start
    assert idle_runs(stack), "the crashed deploy's color should have been started"

    lines = len(ledger(stack))
    up = ok(stack, "up")
    assert_found_interrupted(stack, up, "deploy", v2, lines)
    assert assert_serving_matches_the_record(stack) == start
    assert idle_runs(stack) == [], "up left the interrupted release's color running"
    assert ledger(stack)[-1]["action"] == "up" and ledger(stack)[-1]["result"] == "ok"

    v3 = alias(stack, "crash-c")
    crash(stack, "after_health", "deploy", "--version", v3)
    assert assert_serving_matches_the_record(stack) == start

    lines = len(ledger(stack))
    back = ok(stack, "rollback")
    assert_found_interrupted(stack, back, "deploy", v3, lines)
    rolled = assert_serving_matches_the_record(stack)
    assert (rolled["version"], rolled["color"]) == (start["previous"]["version"], start["previous"]["color"])
    assert (ledger(stack)[-1]["action"], ledger(stack)[-1]["result"]) == ("rollback", "ok")
    print(f"\ncrashes before the switch and their next commands: {time.monotonic() - started:.0f} s")


def kept_containers(stack, color: str) -> list[str]:
    project = stack.plan.app_project(color)
    return subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                          capture_output=True, text=True, check=True).stdout.split()


def test_rollback_starts_the_kept_containers_and_falls_back_when_they_were_removed(stack):
    """A rollback starts the containers the deploy before it kept (stopped);
    once they were removed it takes the full release path, says so on its
    output and in the ledger, and serves the previous release all the same."""
    started = time.monotonic()
    # Two deploys: the previous release is then one recorded with its settings hash.
    ok(stack, "deploy", "--version", alias(stack, "kept-a"))
    v2 = alias(stack, "kept-b")
    ok(stack, "deploy", "--version", v2)
    deployed = assert_serving_matches_the_record(stack)
    previous = deployed["previous"]
    kept = kept_containers(stack, previous["color"])
    assert kept and idle_runs(stack) == [], "the deploy should keep the old color's containers, stopped"

    back = ok(stack, "rollback")
    assert "rollback: started the containers the last release kept" in back.stdout, back.stdout[-2000:]
    assert "Pre-deploy copy" not in back.stdout and "Migrations of" not in back.stdout
    rolled = assert_serving_matches_the_record(stack)
    assert (rolled["color"], rolled["version"]) == (previous["color"], previous["version"])
    assert sorted(kept_containers(stack, previous["color"])) == sorted(kept), "the kept containers were replaced"
    assert (ledger(stack)[-1]["action"], ledger(stack)[-1]["rollback_path"]) == ("rollback", "kept")

    # The containers of v2's color (kept by the rollback) are removed: the next
    # rollback cannot start them and takes the full path, saying why.
    removed = kept_containers(stack, deployed["color"])
    subprocess.run(["docker", "rm", "-f", *removed], check=True, capture_output=True)
    again = ok(stack, "rollback")
    assert "rollback: took the full release path" in again.stdout and "was removed" in again.stdout, again.stdout
    assert "Migrations of" in again.stdout
    final = assert_serving_matches_the_record(stack)
    assert (final["color"], final["version"]) == (deployed["color"], v2)
    line = ledger(stack)[-1]
    assert (line["action"], line["result"]) == ("rollback", "ok")
    assert line["rollback_path"].startswith("full: ") and "was removed" in line["rollback_path"]
    assert not state(stack, "rollback-path.json").exists(), "the ledger line did not take the path record"
    print(f"\nkept-container rollback, then the full-path fallback: {time.monotonic() - started:.0f} s")


def marker(stack, name: str | None = None) -> str | None:
    """A row written after the backup: there while the database is the one
    the restore replaces, gone once the restored one is swapped in."""
    if name:
        stack.psql(f"INSERT INTO app_state (key, value) VALUES ('{name}', 'after the backup')")
        return name
    rows = stack.psql("SELECT key FROM app_state WHERE key LIKE 'crash-marker-%'")
    return rows[0][0] if rows else None


def test_a_restore_crashed_at_each_step_leaves_a_whole_database_and_up_serves_again(stack):
    """Killed after stopping the writers, before the swap and after it: the
    database is always whole (the one it had, or the run's, never a half
    one), the next command finds the attempt, and `up` starts the writers."""
    started = time.monotonic()
    run = json.loads(ok(stack, "backup", "--json").stdout)["run"]
    for point in faults.RESTORE_FAULT_POINTS:
        row = marker(stack, f"crash-marker-{uuid.uuid4().hex[:6]}")
        crash(stack, point, "restore", "--snapshot", run, "--component", "postgres", "--force")
        swapped = point == "restore_after_swap"
        assert marker(stack) == (None if swapped else row), f"after a crash at {point}"
        assert_crash_left_an_attempt(stack, "restore", run)
        assert Api(stack, None).call("GET", "/ready").status_code != 200, "the writers were stopped"

        lines = len(ledger(stack))
        up = ok(stack, "up")
        assert_found_interrupted(stack, up, "restore", run, lines)
        assert_serving_matches_the_record(stack)
        stack.psql("DELETE FROM app_state WHERE key LIKE 'crash-marker-%'")

    # A restore that runs through says so in the ledger too.
    ok(stack, "restore", "--snapshot", run, "--component", "postgres", "--force")
    assert [(r["action"], r["version"], r["result"]) for r in ledger(stack)[-1:]] == [("restore", run, "ok")]
    assert_serving_matches_the_record(stack)
    print(f"\nrestores crashed at each step and their next commands: {time.monotonic() - started:.0f} s")


@pytest.fixture(autouse=True)
def _no_attempt_left(stack):
    yield
    assert not state(stack, "attempt.json").exists(), "a test left an interrupted attempt behind"
