"""`make test`'s tier runner: runs `make test-<tier>` for each step in order, stops after the
first step with a failing tier, then prints each tier's wall time and its slowest tests, the
run's overall wall time and each tier's first failure, and exits with the first failing tier's
exit code (0 when all passed).

    python -m tests.support.tiers quick images full-main+full-drills+multihost

A step joins tiers with `+` to run them at the same time (separate stacks, projects, ports and
subnets: most of their time is spent waiting on containers, not on the two cores); each line
they print is prefixed with its tier's name. The tiers' commands stay in the Makefile; this only
schedules and times them. Per-test times come from tests/support/durations.py
(GOVSTACK_DURATIONS_FILE, one file per tier).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.durations import ENV, read_tests

SLOWEST = 15
FIRST_REASON_LINES = 4


def _command(tier: str, make: str) -> list[str]:
    return [make, "--no-print-directory", f"test-{tier}"]


def _env(tier: str, timings: Path) -> dict[str, str]:
    return {**os.environ, ENV: str(timings / f"{tier}.jsonl")}


def run_tier(tier: str, make: str, timings: Path) -> tuple[int, float]:
    start = time.monotonic()
    rc = subprocess.run(_command(tier, make), env=_env(tier, timings), check=False).returncode
    return rc, time.monotonic() - start


def _relay(tier: str, stream, lock: threading.Lock) -> None:
    """Copy a concurrent tier's output line by line, each line prefixed with the tier."""
    for line in iter(stream.readline, b""):
        with lock:
            sys.stdout.buffer.write(f"[{tier}] ".encode() + line)
            sys.stdout.buffer.flush()
    stream.close()


def run_step(tiers: list[str], make: str, timings: Path) -> dict[str, tuple[int, float]]:
    """Run one step's tiers: one alone in the foreground, several at once."""
    if len(tiers) == 1:
        return {tiers[0]: run_tier(tiers[0], make, timings)}
    lock = threading.Lock()
    started: dict[str, tuple[subprocess.Popen, threading.Thread, float]] = {}
    sys.stdout.flush()
    for tier in tiers:
        proc = subprocess.Popen(_command(tier, make), env=_env(tier, timings), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        relay = threading.Thread(target=_relay, args=(tier, proc.stdout, lock), daemon=True)
        relay.start()
        started[tier] = (proc, relay, time.monotonic())
    results: dict[str, tuple[int, float]] = {}
    # Each tier's time ends when it does, not when the step's slowest tier does.
    pending = dict(started)
    while pending:
        for tier, (proc, relay, start) in list(pending.items()):
            if proc.poll() is not None:
                relay.join()
                results[tier] = (proc.returncode, time.monotonic() - start)
                del pending[tier]
        if pending:
            time.sleep(0.2)
    return {tier: results[tier] for tier in tiers}


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def summary(results: dict[str, tuple[int, float]], timings: Path, wall: float | None = None,
            slowest: int = SLOWEST) -> str:
    lines = ["", "=== test time per tier " + "=" * 50]
    for tier, (rc, seconds) in results.items():
        tests = read_tests(timings / f"{tier}.jsonl")
        state = "passed" if rc == 0 else f"FAILED (exit {rc})"
        lines.append(f"{tier:<12} {minutes(seconds):>8}  {len(tests)} tests, {state}")
        for test in sorted(tests, key=lambda t: t["seconds"], reverse=True)[:slowest]:
            mark = "  FAILED" if test["failed"] else ""
            lines.append(f"    {test['seconds']:8.1f}s  {test['nodeid']}{mark}")
    total = sum(seconds for _, seconds in results.values())
    lines.append(f"{'tiers':<12} {minutes(total):>8}  (sum of the tiers' own times)")
    if wall is not None:
        lines.append(f"{'wall':<12} {minutes(wall):>8}  (start to end; tiers joined by + overlap)")
    # Last, so a log cut to its tail still says why.
    failures = [(tier, test) for tier in results for test in read_tests(timings / f"{tier}.jsonl") if test["failed"]]
    if failures:
        lines.append("=== failed tests " + "=" * 56)
        for tier, test in failures:
            lines.append(f"[{tier}] {test['nodeid']}")
            lines.extend(f"    {line}" for line in test.get("reason", "(no reason recorded)").splitlines())
        # A shared stack's first failure often causes the later ones: each tier's first, whole
        # name and the reason's first lines, last of all.
        lines.append(f"=== {len(failures)} failed; the first of each tier " + "=" * 30)
        for tier in results:
            first = next((test for name, test in failures if name == tier), None)
            if first:
                lines.append(f"[{tier}] {first['nodeid']}")
                lines.extend(f"    {line}" for line in first.get("reason", "").splitlines()[:FIRST_REASON_LINES])
    return "\n".join(lines)


def parse_steps(words: list[str]) -> list[list[str]]:
    steps = [word.split("+") for word in words]
    names = [tier for step in steps for tier in step]
    if any(not tier for tier in names) or len(set(names)) != len(names):
        raise SystemExit(f"tiers: each tier once, joined by + without blanks: {' '.join(words)}")
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="+",
                        help="Makefile targets test-<tier>, in order; tiers joined by + run at the same time")
    parser.add_argument("--make", default="make", help="the make that runs the tiers (the Makefile passes its own)")
    args = parser.parse_args(argv)
    steps = parse_steps(args.steps)
    results: dict[str, tuple[int, float]] = {}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="govstack-tiers-") as tmp:
        timings = Path(tmp)
        for step in steps:
            results.update(run_step(step, args.make, timings))
            if any(results[tier][0] != 0 for tier in step):
                break
        print(summary(results, timings, wall=time.monotonic() - start), flush=True)
    failed = [rc for rc, _ in results.values() if rc != 0]
    return failed[0] if failed else 0


if __name__ == "__main__":
    sys.exit(main())
