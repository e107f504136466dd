"""Who did what (issue 18, section 4): a secret is shown only with a reason and
after its ledger line; every ledger line names the OS user and SSH identity
beside the operator name anyone can set."""

from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner

from govstack.cli import main
from govstack.who import ssh_key_fingerprint


@pytest.fixture
def stack(tmp_path):
    """An all-in-one inventory on this machine whose stack root is a temporary directory,
    holding one secret."""
    root = tmp_path / "stack"
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"all_in_one = [('@local', {{'govstack': {{'stack_root': {str(root)!r}}}}})]\n")
    (root / "secrets").mkdir(parents=True)
    (root / "secrets" / "postgres_password").write_text("s3cr3t-value\n")
    return str(inventory), root


def ledger_lines(root) -> list[dict]:
    path = root / "state" / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_reveal_needs_a_reason_and_is_recorded_with_who_and_from_where(stack, monkeypatch):
    inventory, root = stack
    monkeypatch.setenv("GOVSTACK_OPERATOR", "anyone-can-say-this")
    monkeypatch.setenv("SSH_CLIENT", "192.0.2.7 51515 22")
    monkeypatch.delenv("SSH_USER_AUTH", raising=False)

    for reason in ([], ["--reason", "  "]):
        refused = CliRunner().invoke(main, ["secret", "postgres_password", *reason, "-i", inventory])
        assert refused.exit_code == 2 and "s3cr3t" not in refused.output, refused.output
    assert ledger_lines(root) == []

    shown = CliRunner().invoke(main, ["secret", "postgres_password", "--reason", "INC-42 restore check",
                                      "-i", inventory])
    assert shown.exit_code == 0 and shown.stdout.strip() == "s3cr3t-value", shown.output
    [line] = ledger_lines(root)
    assert line["action"] == "reveal" and line["secret"] == "postgres_password" and line["result"] == "revealed"
    assert line["reason"] == "INC-42 restore check" and line["operator"] == "anyone-can-say-this"
    assert line["os_user"] and line["controller"] and line["ssh_from"] == "192.0.2.7" and line["time"]
    assert "s3cr3t" not in json.dumps(line)

    history = CliRunner().invoke(main, ["history", "-i", inventory])
    assert "reveal" in history.output and "postgres_password" in history.output and "INC-42" in history.output


def test_no_ledger_line_no_secret(stack):
    inventory, root = stack
    (root / "state").mkdir()
    (root / "state" / "ledger.jsonl").mkdir()  # not a file: the append fails
    refused = CliRunner().invoke(main, ["secret", "postgres_password", "--reason", "x", "-i", inventory])
    assert refused.exit_code == 1 and "not shown" in refused.output and "s3cr3t" not in refused.output


def test_the_ssh_key_fingerprint_is_the_one_ssh_keygen_prints(tmp_path):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, blob = (key.with_suffix(".pub")).read_text().split()[:2]
    expected = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(key.with_suffix(".pub"))],
                              capture_output=True, text=True, check=True).stdout.split()[1]
    auth = tmp_path / "auth-info"  # sshd's ExposeAuthInfo file
    auth.write_text(f"publickey {kind} {blob}\n")
    assert ssh_key_fingerprint(str(auth)) == expected
    auth.write_text("password\n")
    assert ssh_key_fingerprint(str(auth)) is None
    assert ssh_key_fingerprint(str(tmp_path / "absent")) is None
    assert ssh_key_fingerprint(None) is None


def test_a_reveal_over_ssh_records_the_key_that_logged_in(stack, monkeypatch, tmp_path):
    """With sshd's ExposeAuthInfo, the ledger line names the login key's fingerprint (as
    ssh-keygen -l prints it), which no variable of ours can set."""
    inventory, root = stack
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    expected = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(key.with_suffix(".pub"))],
                              capture_output=True, text=True, check=True).stdout.split()[1]
    auth = tmp_path / "auth-info"
    auth.write_text(f"publickey {kind} {blob}\n")
    monkeypatch.setenv("SSH_CLIENT", "198.51.100.9 40000 22")
    monkeypatch.setenv("SSH_USER_AUTH", str(auth))
    shown = CliRunner().invoke(main, ["secret", "postgres_password", "--reason", "INC-43", "-i", inventory])
    assert shown.exit_code == 0, shown.output
    [line] = ledger_lines(root)
    assert line["ssh_key"] == expected and line["ssh_from"] == "198.51.100.9"
