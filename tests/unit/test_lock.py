"""The stack lock (govstack/lock.py), on this machine: real bash, real flock.

Two commands at once (the second fails naming the first, or waits for it),
and a holder that dies without releasing (a killed CLI): its lock is free
at once, with nothing to clean up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from govstack.inventory import InventoryHost, load_inventory
from govstack.lock import LockHeld, stack_lock
from govstack.settings import build_settings


@pytest.fixture
def host(tmp_path):
    settings = build_settings([{"stack_root": str(tmp_path / "stack")}], environ={})
    return InventoryHost("@local", settings, (), {})


def holder_file(host) -> dict:
    with open(os.path.join(host.settings.stack_root, "state", "lock-holder.json")) as record:
        return json.load(record)


def test_a_second_command_fails_at_once_naming_the_holder(host, monkeypatch):
    monkeypatch.setenv("GOVSTACK_OPERATOR", "alice@ci")
    with stack_lock([host], "deploy v2") as holder:
        assert holder_file(host)["command"] == "deploy v2"
        monkeypatch.setenv("GOVSTACK_OPERATOR", "bob@laptop")
        started = time.monotonic()
        with pytest.raises(LockHeld) as refused, stack_lock([host], "up"):
            pass
        assert time.monotonic() - started < 30
    message = str(refused.value)
    assert message.startswith(f"@local: locked by alice@ci since {holder.since} (deploy v2; pid {os.getpid()} on ")
    assert message.endswith("wait for it with --lock-wait SECONDS")
    # Released: the next one gets it, and the record is cleared.
    with stack_lock([host], "up"):
        pass
    assert open(os.path.join(host.settings.stack_root, "state", "lock-holder.json")).read() == ""


def test_a_command_that_waits_gets_the_lock_when_the_holder_ends(host):
    order, waited = [], []
    first_in = threading.Event()

    def first():
        with stack_lock([host], "deploy v1"):
            order.append("first in")
            first_in.set()
            time.sleep(3)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(30)
    with stack_lock([host], "rollback", wait_s=120, on_wait=waited.append):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
    assert len(waited) == 1 and waited[0].startswith("@local: waiting for the lock, held by ")
    assert "(deploy v1; pid " in waited[0]


def test_a_command_that_waits_too_short_fails_naming_the_holder(host):
    with stack_lock([host], "restore latest"), pytest.raises(LockHeld, match=r"\(restore latest; pid "):
        with stack_lock([host], "deploy v3", wait_s=1.5):
            pass


def test_a_killed_holder_frees_the_lock_at_once(host, tmp_path):
    """The CLI that held it is killed (SIGKILL: no finally, no cleanup)."""
    script = textwrap.dedent(f"""
        import sys, time
        from govstack.inventory import InventoryHost
        from govstack.lock import stack_lock
        from govstack.settings import build_settings
        host = InventoryHost("@local", build_settings([{{"stack_root": {host.settings.stack_root!r}}}], environ={{}}),
                             (), {{}})
        with stack_lock([host], "deploy doomed"):
            print("locked", flush=True)
            time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=r"\(deploy doomed; pid "):
            with stack_lock([host], "up"):
                pass
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    # No stale lock: free immediately (a few seconds at most for the holder to see end of input).
    with stack_lock([host], "up", wait_s=10):
        pass


def test_an_unwritable_stack_root_is_a_one_line_error_not_a_wait(tmp_path):
    from govstack.lock import LockError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = build_settings([{"stack_root": str(blocker / "stack")}], environ={})
    with pytest.raises(LockError, match=r"^@local: cannot take the lock in .*/state"):
        with stack_lock([InventoryHost("@local", settings, (), {})], "up", wait_s=5):
            pass


def test_admin_key_rotate_takes_the_stack_lock(tmp_path, monkeypatch):
    """`govstack admin-key rotate` is refused while another command holds the lock (exit 3, naming it),
    before it touches the host: the secret file it would replace is not created."""
    from click.testing import CliRunner

    from govstack.cli import main

    root = tmp_path / "stack"
    inventory = tmp_path / "inv.py"
    inventory.write_text(f'local = [("@local", {{"govstack": {{"stack_root": {str(root)!r}}}}})]\n')
    monkeypatch.setenv("GOVSTACK_OPERATOR", "alice@ci")
    [entry] = load_inventory(str(inventory))
    with stack_lock([entry], "deploy v2"):
        result = CliRunner().invoke(main, ["admin-key", "rotate", "-i", str(inventory)])
    assert result.exit_code == 3, result.output
    assert "locked by alice@ci" in result.output and "(deploy v2; pid " in result.output
    assert not (root / "secrets" / "app_admin_api_key").exists()
    assert not any(root.rglob("app_admin_api_key*"))
