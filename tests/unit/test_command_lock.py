"""Every command that changes a host takes the one stack lock (issue 12, section 3).

Each command of the CLI is classified here: it changes the stack (and so
must take the lock) or it does not (and says why). A new command fails
this test until it is classified, so no state-changing command slips in
without the lock.

Each state-changing command then runs twice against a stack root in a
temporary directory, with its action replaced by a tripwire (the lock is
real: bash and flock, govstack/lock.py):

- while another command holds the lock, it exits 3 with one line naming
  the holder, and its action is never reached (it loses nothing and
  changes nothing);
- with the lock free, it reaches its action holding the lock under its own
  name.
"""

from __future__ import annotations

import json
import os

import click
import pytest
from click.testing import CliRunner

from govstack.cli import main
from govstack.inventory import InventoryHost
from govstack.lock import stack_lock
from govstack.release import Release
from govstack.settings import build_settings

# command -> (arguments after the inventory, the module attribute that does its work, under the lock)
STATE_CHANGING = {
    "up": ([], "govstack.cli.run_pyinfra"),
    "deploy": (["--version", "v2"], "govstack.cli.run_pyinfra"),
    "rollback": ([], "govstack.cli.run_pyinfra"),
    "backup": ([], "govstack.backup.cli.backup_now"),
    "restore": (["--snapshot", "latest", "--force"], "govstack.backup.cli.run_restore"),
    "drill": ([], "govstack.backup.cli.run_drill"),
    "audit-retention": ([], "govstack.compliance.cli.run_audit_retention"),
    "report storage --apply": (["--apply", "--drop-leftovers"], "govstack.compliance.cli.collect_storage"),
    "admin-key rotate": ([], "govstack.admin_key.rotate_admin_key"),
    "cleanup pause": (["--reason", "test"], "govstack.reconcile.cli.app_json"),
    "cleanup resume": (["--yes"], "govstack.reconcile.cli._resume"),
    "reconcile report": ([], "govstack.reconcile.cli.collect_reconciliation"),
    "reconcile adopt": (["--all"], "govstack.reconcile.cli.app_json"),
    "secret rotate": (["postgres_app_password"], "govstack.rotation.rotate"),
}
# Commands (or modes of one) that change no host's state, and why they need no lock.
READ_ONLY = {
    "up --dry": "shows what would change (it may show what a running command is changing)",
    "audit-retention --dry-run": "lists what would be dropped",
    "report storage": "a report; without --apply it changes nothing",
    "history": "reads the ledger",
    "check": "the testinfra suite inspects the hosts",
    "secret show": "prints a secret (after its ledger line: one append, which a deploy in flight must not "
                   "delay) or the names",
    "status": "reads Prometheus and the release record",
    "cost": "reads the Docker API",
    "access-review": "reads the API keys (writes a report file of its own on the host)",
    "report residency": "a report",
    "report counts": "a report",
    "report logs": "reads the kept container logs",
    "report sbom": "reads each image's SBOM (copied out of a container it creates and removes, never started)",
    "report privacy": "reads the analytics ledger (the analytics role may not change it: append-only)",
    "report quarantine": "lists the quarantine",
    "cleanup status": "reads whether cleanup is paused",
    "cleanup resume --dry-run": "says what resuming would do",
    "reconcile adopt --dry-run": "says what would be registered",
    "runbook env": "prints variables",
    "runbook list": "lists files",
    "runbook show": "prints a runbook with the inventory's escalation contacts",
    "runbook run": "runs the runbook's govstack commands, which take the lock themselves (holding it here "
                   "would make each of them wait for its own runbook)",
}
HOLDER_COMMAND = "deploy held-by-test"


def leaf_commands(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        names += leaf_commands(command, f"{path} ") if isinstance(command, click.Group) else [path]
    return names


def test_every_command_is_classified_as_locking_or_read_only():
    classified = {name.split(" --")[0] for name in [*STATE_CHANGING, *READ_ONLY]}
    assert sorted(set(leaf_commands(main)) - classified) == [], (
        "a command changes the stack (take govstack.lock.command_lock and add it to STATE_CHANGING) "
        "or it does not (add it to READ_ONLY with the reason)")
    assert classified - set(leaf_commands(main)) == set(), "a classified command no longer exists"


class Tripwire(Exception):
    """The command reached its action."""


@pytest.fixture
def stack(tmp_path):
    """An all-in-one inventory whose stack root is a temporary directory, with
    a release recorded (a rollback has somewhere to go)."""
    root = tmp_path / "stack"
    data = {"stack_root": str(root), "project": "gslocktest"}
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"all_in_one = [('@local', {{'govstack': {data!r}}})]\n")
    host = InventoryHost("@local", build_settings([data], environ={}), (), {})
    state = root / "state"
    state.mkdir(parents=True)
    (state / "release.json").write_text(Release("green", "v1", previous=Release("blue", "v0")).to_json())
    return str(inventory), host, state


@pytest.mark.parametrize(("name", "args", "action"), [(name, *spec) for name, spec in STATE_CHANGING.items()],
                         ids=list(STATE_CHANGING))
def test_a_state_changing_command_takes_the_lock(stack, monkeypatch, name, args, action):
    inventory, host, state = stack
    module, attribute = action.rsplit(".", 1)
    reached = []

    def tripwire(*_args, **_kwargs):
        reached.append(json.loads((state / "lock-holder.json").read_text())["command"])
        raise Tripwire(name)

    monkeypatch.setattr(f"{module}.{attribute}", tripwire)
    monkeypatch.setenv("GOVSTACK_OPERATOR", "alice@ci")
    argv = [*name.split(" --")[0].split(), "-i", inventory, *args]

    with stack_lock([host], HOLDER_COMMAND):
        files_before = sorted(os.listdir(state))
        refused = CliRunner().invoke(main, argv)
    assert refused.exit_code == 3, refused.output
    assert reached == [], f"{name} acted without the lock"
    cause = refused.stderr.strip().splitlines()
    assert len(cause) == 1 and cause[0].startswith("govstack: @local: locked by alice@ci since "), refused.stderr
    assert f"({HOLDER_COMMAND}; pid {os.getpid()} on " in cause[0]
    assert sorted(os.listdir(state)) == files_before, "the refused command left something behind"

    ran = CliRunner().invoke(main, argv)
    assert isinstance(ran.exception, Tripwire), ran.output
    assert len(reached) == 1 and reached[0] != HOLDER_COMMAND and reached[0].split()[0] == name.split()[0], reached
    # Who did what: one ledger line, the action's error as its cause (the lock
    # writes it when the command wrote none), and no attempt left to be taken
    # for an interruption.
    lines = [json.loads(line) for line in (state / "ledger.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["action"].split()[0] == name.split()[0], lines
    assert lines[0]["result"] == "failed" and name in lines[0]["cause"], lines[0]
    assert lines[0]["operator"] == "alice@ci" and lines[0]["os_user"], lines[0]
    assert not (state / "attempt.json").exists()
