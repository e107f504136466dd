"""`make test`'s tier runner: runs `make test-<tier>` for each tier in order, stops at the first
that fails, then prints each tier's wall time and its slowest tests, and exits with the failing
tier's exit code (0 when all passed).

    python -m tests.support.tiers quick full multihost

The tiers' commands stay in the Makefile; this only times them. Per-test times come from
tests/support/durations.py (GOVSTACK_DURATIONS_FILE, one file per tier).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.durations import ENV, read_tests

SLOWEST = 15


def run_tier(tier: str, make: str, timings: Path) -> tuple[int, float]:
    env = {**os.environ, ENV: str(timings / f"{tier}.jsonl")}
    start = time.monotonic()
    rc = subprocess.run([make, "--no-print-directory", f"test-{tier}"], env=env, check=False).returncode
    return rc, time.monotonic() - start


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def summary(results: dict[str, tuple[int, float]], timings: Path, slowest: int = SLOWEST) -> str:
    lines = ["", "=== test time per tier " + "=" * 50]
    for tier, (rc, seconds) in results.items():
        tests = read_tests(timings / f"{tier}.jsonl")
        state = "passed" if rc == 0 else f"FAILED (exit {rc})"
        lines.append(f"{tier:<10} {minutes(seconds):>8}  {len(tests)} tests, {state}")
        for test in sorted(tests, key=lambda t: t["seconds"], reverse=True)[:slowest]:
            mark = "  FAILED" if test["failed"] else ""
            lines.append(f"    {test['seconds']:8.1f}s  {test['nodeid']}{mark}")
    total = sum(seconds for _, seconds in results.values())
    lines.append(f"{'total':<10} {minutes(total):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tiers", nargs="+", help="Makefile targets test-<tier>, in order")
    parser.add_argument("--make", default="make", help="the make that runs the tiers (the Makefile passes its own)")
    args = parser.parse_args(argv)
    results: dict[str, tuple[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="govstack-tiers-") as tmp:
        timings = Path(tmp)
        for tier in args.tiers:
            results[tier] = run_tier(tier, args.make, timings)
            if results[tier][0] != 0:
                break
        print(summary(results, timings), flush=True)
    failed = [rc for rc, _ in results.values() if rc != 0]
    return failed[0] if failed else 0


if __name__ == "__main__":
    sys.exit(main())
