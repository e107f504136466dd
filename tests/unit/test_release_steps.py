"""Pieces of the blue/green release and the restore that need no stack: the drain probe, the fault points."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from govstack import faults
from govstack.operations import edge_drain_command

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_drain_probe_does_not_find_its_own_command_line():
    """It looks for nginx workers "shutting down" in /proc/*/cmdline; its own
    shell's command line carries the pattern, so a literal pattern always
    matched and every drain waited its whole timeout. Here (no nginx) it must
    find nothing."""
    probe = re.search(r"exec -T nginx sh -c '(.*?)' >/dev/null", edge_drain_command("p", "f.yml", 30)).group(1)
    result = subprocess.run(["sh", "-c", probe], capture_output=True, text=True, timeout=30)
    # Non-zero: nothing found (1), or a process that ended while it read /proc (2).
    assert result.returncode != 0 and result.stdout.strip() == "", f"the probe found {result.stdout.strip()!r}"


def test_every_fault_point_is_a_step_of_the_release_in_order():
    source = (REPO_ROOT / "deploys" / "release.py").read_text()
    assert tuple(re.findall(r'^fault_point\("(\w+)"\)', source, re.M)) == faults.RELEASE_FAULT_POINTS


def test_every_restore_fault_point_is_a_step_of_the_restore_in_order():
    source = (REPO_ROOT / "govstack" / "backup" / "ops.py").read_text()
    # restore_postgres (the swap) is defined above restore(), which calls it between its two points.
    found = re.findall(r'crash_at\("(\w+)"\)', source)
    assert sorted(found) == sorted(faults.RESTORE_FAULT_POINTS) and len(found) == len(set(found))
    assert source.index("def restore_postgres") < source.index('crash_at("restore_before_swap")') < source.index(
        'ALTER DATABASE "{db}" RENAME TO "{kept}"')


def test_an_unknown_fault_point_is_refused(monkeypatch):
    monkeypatch.setenv(faults.FAULT_ENV, "after_swich")
    with pytest.raises(faults.FaultError, match="is not a fault point; choose one of before_start"):
        faults.wanted_fault()
    monkeypatch.setenv(faults.FAULT_ENV, "after_switch")
    assert faults.wanted_fault() == "after_switch"
    monkeypatch.delenv(faults.FAULT_ENV)
    assert faults.wanted_fault() is None
