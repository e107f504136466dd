"""`govstack up` starts pyinfra before it takes the stack lock, held at a gate
(govstack/gate.py): the deploy reports the inventory's hosts, then does
nothing until the CLI says go (govstack.cli.GatedDeploy). Real pyinfra runs
a deploy file that passes the gate and then writes a marker, so "did nothing"
is seen on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from govstack.cli import GatedDeploy
from govstack.gate import GATE_ENV, GATE_SHUT_EXIT, gate_fds
from govstack.inventory import hosts_from_dump, load_inventory
from tests.conftest import REPO_ROOT


def _deploy(tmp_path, marker):
    path = tmp_path / "gated_deploy.py"
    path.write_text(textwrap.dedent(f"""
        from pathlib import Path

        from pyinfra import host, inventory

        from govstack import gate

        gate.wait_at_gate(inventory)
        print("past the gate", host.name, flush=True)
        with open({str(marker)!r}, "a") as out:
            out.write(host.name + "\\n")
    """))
    return str(path)


def _inventory(tmp_path, body):
    path = tmp_path / "inventory.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


ONE_HOST = """
    web = (
        [("@local", {"govstack": {"edge": {"https_port": 9443}}, "ssh_port": 2222})],
        {"govstack": {"edge": {"hostname": "docs.example.gov"}, "project": "gated"}},
    )
"""


def test_the_deploy_reports_what_the_inventory_child_does_and_acts_only_after_go(tmp_path, capfd):
    marker = tmp_path / "ran"
    inventory = _inventory(tmp_path, ONE_HOST)
    gated = GatedDeploy(inventory, _deploy(tmp_path, marker))
    try:
        entries = gated.hosts()
        assert entries is not None
        assert not marker.exists(), "the deploy went on before the go"
        [reported] = hosts_from_dump(inventory, entries)
        [child] = load_inventory(inventory)
        assert (reported.name, reported.groups, reported.data) == (child.name, child.groups, child.data)
        assert reported.settings == child.settings
        assert reported.settings.edge.https_port == 9443 and reported.settings.project == "gated"
        code, _ = gated.proceed()
    finally:
        gated.close()
    assert code == 0
    assert marker.read_text() == "@local\n"
    assert "past the gate @local" in capfd.readouterr().out


def test_a_shut_gate_ends_the_deploy_having_done_nothing_and_printed_nothing(tmp_path, capfd):
    marker = tmp_path / "ran"
    gated = GatedDeploy(_inventory(tmp_path, ONE_HOST), _deploy(tmp_path, marker))
    assert gated.hosts() is not None
    gated.close()
    assert gated.proc.returncode == GATE_SHUT_EXIT
    assert not marker.exists()
    assert capfd.readouterr().out == ""
    gated.close()  # twice: nothing more


GREENLETS = """
import json, os, sys

from gevent import monkey

monkey.patch_all()
import gevent
from pyinfra.api import Inventory

from govstack import gate

hosts_r, hosts_w = os.pipe()
go_r, go_w = os.pipe()
os.environ[gate.GATE_ENV] = f"{hosts_w},{go_r}"
inventory = Inventory((["one", "two", "three"], {}))
passed = []

def host(name):
    gate.wait_at_gate(inventory)
    passed.append(name)

def controller():
    report = b""
    while chunk := os.read(hosts_r, 65536):
        report += chunk
    print("REPORT", json.dumps(sorted(entry["name"] for entry in json.loads(report))), flush=True)
    print("BEFORE GO", json.dumps(passed), flush=True)
    os.write(go_w, b"go\\n")

# The controller answers from a real thread: the gate's read may block the whole process.
answered = monkey.get_original("_thread", "allocate_lock")()
answered.acquire()

def answer():
    try:
        controller()
    finally:
        answered.release()

monkey.get_original("_thread", "start_new_thread")(answer, ())
gevent.joinall([gevent.spawn(host, name) for name in ("one", "two", "three")], timeout=60)
answered.acquire(timeout=60)
print("AFTER GO", json.dumps(sorted(passed)), flush=True)
gate.wait_at_gate(inventory)  # open for good: no second report, no wait
print("DONE", flush=True)
"""


def test_every_host_waits_at_the_gate_and_the_hosts_are_reported_once(tmp_path):
    """pyinfra runs the deploy file once per host, in greenlets of one gevent-patched process."""
    script = tmp_path / "greenlets.py"
    script.write_text(GREENLETS)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in result.stdout.splitlines())
    assert json.loads(lines["REPORT"]) == ["one", "three", "two"]
    assert json.loads(lines["BEFORE"].removeprefix("GO ")) == []
    assert json.loads(lines["AFTER"].removeprefix("GO ")) == ["one", "three", "two"]
    assert "DONE" in lines


def test_a_deploy_that_ends_before_its_gate_reports_nothing(tmp_path):
    gated = GatedDeploy(_inventory(tmp_path, "hosts = [('@local', {})]\nraise RuntimeError('broken')\n"),
                        _deploy(tmp_path, tmp_path / "ran"))
    try:
        assert gated.hosts() is None
    finally:
        gated.close()
    assert gated.proc.returncode not in (0, GATE_SHUT_EXIT)


def test_without_the_variable_the_gate_is_open_and_a_malformed_one_is_an_error():
    assert gate_fds(None) is None and gate_fds("") is None
    assert gate_fds("7,9") == (7, 9)
    for bad in ("7", "7,9,11", "a,b", "7;9", "-1,3"):
        with pytest.raises(ValueError, match=GATE_ENV):
            gate_fds(bad)
    assert GATE_ENV not in os.environ
