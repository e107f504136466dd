"""Blue/green under real app load: the idle maximum of authenticated searches
through nginx, then a deploy and a rollback driven at a share of it.

    .venv/bin/python bench/bluegreen_load.py --inventory INV [--seconds 10] [--share 0.8] [--rounds 1]

Searches come from client containers on the stack's edge network, each its
own address with reader keys of its own (tests/support/search_load.py), so
neither edge limit is what is measured. Prints the idle maximum, the driven
rate as a ratio of it and of the issue's 50 searches/s, and the failed
requests, p95 and colors across each release. The stack must be deployed;
it ends serving an alias tag of the image it served. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import Stack  # noqa: E402
from tests.e2e.test_app_support import Api, wait_indexed  # noqa: E402
from tests.support.search_load import SearchClients, ok_rate, release_under_load  # noqa: E402

COLLECTION = "bench-bluegreen"
TARGET_RPS = 50


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inventory", required=True)
    parser.add_argument("--seconds", type=float, default=10, help="idle measurement")
    parser.add_argument("--share", type=float, default=0.8, help="driven rate as a share of the idle maximum")
    parser.add_argument("--rounds", type=int, default=1, help="deploy + rollback pairs")
    args = parser.parse_args()
    stack = Stack(args.inventory)
    response = Api(stack, stack.admin_api_key).upload(
        COLLECTION, "archive.txt", b"The national archive keeps land records since 1902.")
    response.raise_for_status()
    wait_indexed(stack, [int(response.json()["id"])])
    clients = SearchClients.start(stack, COLLECTION)
    try:
        idle = clients.measure_max(seconds=args.seconds)
        idle_max = ok_rate(idle)
        capped = "  (at least: the clients' per-key pacing caps it)" \
            if idle_max >= 0.95 * clients.max_measurable_rps else ""
        print(f"idle maximum        {idle_max:7.1f} searches/s  {idle_max / TARGET_RPS:5.2f} x {TARGET_RPS}/s{capped}")
        print(f"  {idle.summary()}")
        rps = args.share * idle_max
        print(f"driven              {rps:7.1f} searches/s  {rps / idle_max:5.2f} x idle maximum, "
              f"{rps / TARGET_RPS:5.2f} x {TARGET_RPS}/s")
        for _ in range(args.rounds):
            record = json.loads(Path(stack.settings.paths.release_file).read_text())
            version = f"bench-{uuid.uuid4().hex[:8]}"
            subprocess.run(["docker", "tag", f"govstack/app:{record['version']}", f"govstack/app:{version}"],
                           check=True)
            for action in (["deploy", "--version", version], ["rollback"]):
                result, report, ready_at = release_under_load(stack, clients, rps, *action)
                colors = sorted({s.color or "none" for s in report.samples})
                latencies = [s.latency_s for s in report.samples]
                print(f"{action[0]:9} exit {result.returncode}: {report.summary()}; "
                      f"median {statistics.median(latencies) * 1000:.0f} ms; colors {colors}")
                if result.returncode != 0:
                    print(result.stderr[-2000:])
                    return
    finally:
        clients.remove()


if __name__ == "__main__":
    main()
