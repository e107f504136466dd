"""`make test`'s tier runner: real make, real pytest runs, in a throwaway directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

MAKEFILE = """\
test-fast:
\t{python} -m pytest -q -p no:cacheprovider -p tests.support.durations fast_test.py
test-broken:
\t{python} -m pytest -q -p no:cacheprovider -p tests.support.durations broken_test.py
test-workers:
\t{python} -m pytest -q -p no:cacheprovider -p tests.support.durations -n 2 fast_test.py
test-never:
\ttouch never-ran
test-ping:
\t{python} rendezvous.py ping pong
test-pong:
\t{python} rendezvous.py pong ping
"""

# Each side leaves its own file, then waits (bounded) for the other's: both pass only when the
# two tiers run at the same time.
RENDEZVOUS = """\
import pathlib, sys, time

mine, theirs = sys.argv[1:]
pathlib.Path(mine).touch()
for _ in range(300):
    if pathlib.Path(theirs).exists():
        print(f"{mine} met {theirs}")
        sys.exit(0)
    time.sleep(0.1)
print(f"{mine} never met {theirs}")
sys.exit(1)
"""

FAST = """\
import time

def test_quick():
    pass

def test_slower():
    time.sleep(0.3)
"""

BROKEN = """\
def test_passes():
    pass

def test_breaks():
    assert 1 == 2
"""


def run_tiers(tmp_path: Path, *tiers: str) -> subprocess.CompletedProcess:
    (tmp_path / "Makefile").write_text(MAKEFILE.format(python=sys.executable))
    (tmp_path / "fast_test.py").write_text(FAST)
    (tmp_path / "broken_test.py").write_text(BROKEN)
    (tmp_path / "rendezvous.py").write_text(RENDEZVOUS)
    return subprocess.run(
        [sys.executable, "-m", "tests.support.tiers", "--make", "make", *tiers],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )


def summary_lines(result: subprocess.CompletedProcess) -> list[str]:
    out = result.stdout
    assert "=== test time per tier" in out, out + result.stderr
    return out[out.index("=== test time per tier"):].splitlines()


def test_tiers_are_timed_and_the_first_failing_one_stops_the_run(tmp_path):
    result = run_tiers(tmp_path, "fast", "broken", "never")
    # make reports a failed recipe as 2, whatever pytest's own code was.
    assert result.returncode == 2, result.stdout + result.stderr
    assert not (tmp_path / "never-ran").exists()
    lines = summary_lines(result)
    assert [line.split()[0] for line in lines[1:] if not line.startswith(" ")] == [
        "fast", "broken", "tiers", "wall", "===", "[broken]", "===", "[broken]"]
    fast = lines.index(next(line for line in lines if line.startswith("fast ")))
    assert "2 tests, passed" in lines[fast]
    # slowest first, each with its seconds
    assert [line.split()[-1] for line in lines[fast + 1 : fast + 3]] == [
        "fast_test.py::test_slower",
        "fast_test.py::test_quick",
    ]
    assert float(lines[fast + 1].split()[0].rstrip("s")) >= 0.3
    broken = next(line for line in lines if line.startswith("broken "))
    assert "2 tests, FAILED (exit 2)" in broken
    assert any(line.strip().endswith("broken_test.py::test_breaks  FAILED") for line in lines)
    # The summary ends with each failed test and why, for a log cut to its tail.
    failed = lines.index(next(line for line in lines if line.startswith("=== failed tests")))
    assert lines[failed + 1] == "[broken] broken_test.py::test_breaks"
    assert lines[failed + 2].strip() == "broken_test.py:5: assert 1 == 2", lines[failed:]


def test_a_tier_on_several_workers_records_each_test_once(tmp_path):
    # The quick tier runs pytest-xdist: the workers load the recorder too, only the controller writes.
    result = run_tiers(tmp_path, "workers")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = summary_lines(result)
    assert "2 tests, passed" in next(line for line in lines if line.startswith("workers "))
    assert sorted(line.split()[-1] for line in lines if line.strip().endswith(("test_quick", "test_slower"))) == [
        "fast_test.py::test_quick", "fast_test.py::test_slower"]


def test_tiers_joined_by_plus_run_at_the_same_time_each_timed_and_prefixed(tmp_path):
    result = run_tiers(tmp_path, "fast", "ping+pong", "never")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ping] ping met pong" in result.stdout
    assert "[pong] pong met ping" in result.stdout
    # A step after the concurrent one still runs when all of its tiers passed.
    assert (tmp_path / "never-ran").exists()
    lines = summary_lines(result)
    assert [line.split()[0] for line in lines[1:] if not line.startswith(" ")] == [
        "fast", "ping", "pong", "never", "tiers", "wall"]


def test_a_failing_tier_of_a_concurrent_step_stops_the_run_after_that_step(tmp_path):
    # broken fails; fast, beside it, still finishes and is reported.
    result = run_tiers(tmp_path, "broken+fast", "never")
    assert result.returncode == 2, result.stdout + result.stderr
    assert not (tmp_path / "never-ran").exists()
    lines = summary_lines(result)
    assert any(line.startswith("broken ") and "2 tests, FAILED (exit 2)" in line for line in lines)
    assert any(line.startswith("fast ") and "2 tests, passed" in line for line in lines)


def test_a_tier_named_twice_or_blank_is_refused(tmp_path):
    for steps in (("fast", "fast+never"), ("fast+",)):
        result = run_tiers(tmp_path, *steps)
        assert result.returncode != 0
        assert "each tier once" in result.stderr
        assert not (tmp_path / "never-ran").exists()


def test_the_summary_ends_with_each_tiers_first_failure(tmp_path):
    # A log cut to its tail (CI shows the last lines) still names the failure that came first.
    result = run_tiers(tmp_path, "broken+fast")
    lines = summary_lines(result)
    assert lines[-3:] == ["=== 1 failed; the first of each tier " + "=" * 30,
                          "[broken] broken_test.py::test_breaks",
                          "    broken_test.py:5: assert 1 == 2"], lines
