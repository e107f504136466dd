"""Per-test wall time of one pytest run, written for `make test`'s closing summary.

Registered by tests/conftest.py; it records only when GOVSTACK_DURATIONS_FILE names a file (the
tier runner, tests/support/tiers.py, sets it per tier). A test's time is its setup, call and
teardown together, so a module-scoped deploy counts against the first test that needs it.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

ENV = "GOVSTACK_DURATIONS_FILE"


class DurationRecorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = defaultdict(float)
        self.failed: set[str] = set()
        self.reasons: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] += report.duration
        if report.failed:
            self.failed.add(report.nodeid)
            self.reasons.setdefault(report.nodeid, failure_reason(report))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        tests = [
            {"nodeid": nodeid, "seconds": round(seconds, 3), "failed": nodeid in self.failed,
             **({"reason": self.reasons[nodeid]} if nodeid in self.reasons else {})}
            for nodeid, seconds in self.seconds.items()
        ]
        # One tier may run pytest more than once: each run appends its own record.
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"exitstatus": int(exitstatus), "tests": tests}) + "\n")


REASON_CHARS = 800


def failure_reason(report: pytest.TestReport) -> str:
    """The failing line's message (an assertion's text and its explanation), bounded: what a
    reader of the run's closing summary needs when the full log is out of reach."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    if crash is not None and crash.path:
        text = f"{Path(crash.path).name}:{crash.lineno}: {text}"
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def register(config: pytest.Config) -> None:
    """Called from tests/conftest.py's pytest_configure."""
    target = os.environ.get(ENV)
    # Under pytest-xdist the controller receives every worker's reports: only it records.
    if hasattr(config, "workerinput"):
        return
    if target and not config.pluginmanager.has_plugin("govstack-durations"):
        config.pluginmanager.register(DurationRecorder(Path(target)), "govstack-durations")


def read_tests(path: Path) -> list[dict]:
    """Every test recorded in one tier's file (all its pytest runs); none if it never ran."""
    if not path.exists():
        return []
    tests: list[dict] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            tests.extend(json.loads(line)["tests"])
    return tests


def pytest_configure(config: pytest.Config) -> None:
    """As a plugin of its own (`pytest -p tests.support.durations`), outside this repo's conftest."""
    register(config)
