"""What writing usage events costs a search, as a difference and a ratio against a baseline
measured in the same run.

    /work/tools/slot .venv/bin/python bench/analytics_events.py [INVENTORY] [--requests N] [--mode keyword]

Two extra API processes of the serving color are started from its own Compose service (same
image, environment, secrets, limits and network; no network alias, so the edge never routes to
them): one as deployed (usage events on) and one with the events' HMAC secret unset (events off).
A client container on the stack's internal network then sends the same searches to both,
alternating in random order, straight to port 8000 (no edge, no rate limit), and prints p50/p95 of
each, their difference in ms and the ratio. Keyword searches by default: the fastest kind, so the
one where a fixed cost shows most. Prints; asserts nothing. Both processes are removed afterwards.

The events are written by a background thread from a bounded in-process queue
(govstack_app/analytics/events.py): the request pays for an HMAC and a non-blocking queue put.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import Stack  # noqa: E402
from tests.e2e.test_app_support import Api, wait_indexed  # noqa: E402

WORDS = ("archive land registry record county survey title deed boundary parcel owner transfer "
         "court judgment appeal ministry budget allocation health clinic school enrolment water").split()

CLIENT = r"""
import json, random, statistics, sys, time
import httpx
cfg = json.loads(sys.stdin.read())
targets = cfg["targets"]
timings = {name: [] for name in targets}
with httpx.Client(timeout=30, headers={"X-API-Key": cfg["key"]}) as http:
    for name, base in targets.items():  # warm up both: connections, caches, first-call costs
        for query in cfg["queries"][:20]:
            http.post(base + "/api/v1/search", json={"query": query, "collection": cfg["collection"],
                                                      "mode": cfg["mode"], "k": 5}).raise_for_status()
    for i in range(cfg["requests"]):
        query = cfg["queries"][i % len(cfg["queries"])]
        order = list(targets)
        random.shuffle(order)
        for name in order:
            started = time.perf_counter()
            r = http.post(targets[name] + "/api/v1/search", json={"query": query, "collection": cfg["collection"],
                                                                  "mode": cfg["mode"], "k": 5})
            timings[name].append(time.perf_counter() - started)
            r.raise_for_status()
print(json.dumps(timings))
"""


def compose(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return stack.compose(stack.app_project, *args)


# What a request pays for its event, measured in the API image: the middleware's _record (HMAC,
# minute, buckets, the queue put) on a recorder whose writer is not started, so nothing competes.
RECORD_COST = r"""
import json, time
from govstack_app.analytics.events import EventRecorder, UsageEventsMiddleware
recorder = EventRecorder(lambda: None, capacity=1_000_000)
middleware = UsageEventsMiddleware(None, recorder, b"k" * 64)
scope = {"client": ("10.0.0.9", 40000), "state": {"api_key_name": "reports-team",
                                                    "usage_event": ("search", "land-records", 2)}}
costs = []
for _ in range(50_000):
    started = time.perf_counter()
    middleware._record(scope, 200, time.time(), 0.004)
    costs.append(time.perf_counter() - started)
costs.sort()
n = len(costs)
print(json.dumps({"p50": costs[n // 2], "p95": costs[int(n * 0.95)], "p999": costs[int(n * 0.999)]}))
"""


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def p95_difference_interval(on: list[float], off: list[float], rounds: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of p95(on) - p95(off): how much of the difference is noise."""
    import random

    rng = random.Random(16)
    diffs = sorted(quantile(rng.choices(on, k=len(on)), 0.95) - quantile(rng.choices(off, k=len(off)), 0.95)
                   for _ in range(rounds))
    return diffs[int(rounds * 0.025)], diffs[int(rounds * 0.975)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("inventory", nargs="?", default=str(REPO / "tests" / "inventories" / "test_local.py"))
    parser.add_argument("--requests", type=int, default=400, help="searches per process")
    parser.add_argument("--mode", default="keyword", choices=["keyword", "vector", "hybrid"])
    args = parser.parse_args()

    stack = Stack(args.inventory)
    admin = Api(stack, stack.admin_api_key)
    tag = uuid.uuid4().hex[:8]
    collection = f"bench-events-{tag}"
    names = {"events on": f"{stack.app_project}-bench-events-on-{tag}",
             "events off": f"{stack.app_project}-bench-events-off-{tag}"}
    key_name = f"bench-events-{tag}"
    try:
        ids = []
        for i in range(5):
            text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(300))
            r = admin.upload(collection, f"doc-{i}.txt", f"Document {i}\n\n{text}\n".encode())
            assert r.status_code in (200, 201), r.text
            ids.append(int(r.json()["id"]))
        wait_indexed(stack, ids, timeout=900)
        r = admin.call("POST", "/api/v1/keys", json={"name": key_name, "role": "reader"})
        assert r.status_code == 201, r.text
        key = r.json()["api_key"]

        # No --use-aliases: the extra processes are not app-<color>, nginx never sees them.
        compose(stack, "run", "-d", "--no-deps", "--name", names["events on"], "api")
        compose(stack, "run", "-d", "--no-deps", "--name", names["events off"], "--entrypoint", "env", "api",
                "-u", "GOVSTACK_ANALYTICS_ACTOR_KEY_FILE", "govstack-app", "api")
        deadline = time.monotonic() + 180
        for name in names.values():
            while subprocess.run(["docker", "exec", name, "govstack-app", "healthcheck", "api"],
                                 capture_output=True).returncode != 0:
                assert time.monotonic() < deadline, f"{name} did not become ready"
                time.sleep(1)

        queries = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5) % len(WORDS)]} records" for i in range(50)]
        config = {"key": key, "collection": collection, "mode": args.mode, "requests": args.requests,
                  "queries": queries, "targets": {label: f"http://{name}:8000" for label, name in names.items()}}
        image = stack.plan.app_image(stack.current_release().version)
        out = subprocess.run(
            ["docker", "run", "--rm", "-i", "--network", stack.plan.networks["data"], "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges", "--entrypoint", "python3", image, "-c", CLIENT],
            input=json.dumps(config), capture_output=True, text=True, timeout=3600, check=True,
        ).stdout
        timings = json.loads(out.strip().splitlines()[-1])
        written = stack.psql(
            f"SELECT count(*) FROM analytics.events WHERE collection = '{collection}'")[0][0]  # noqa: S608

        on, off = timings["events on"], timings["events off"]
        low, high = p95_difference_interval(on, off)
        print(f"{args.mode} searches, {args.requests} per process, interleaved in random order, direct to :8000")
        for label, samples in (("events off (baseline)", off), ("events on", on)):
            p50, p95, p99 = (quantile(samples, q) * 1000 for q in (0.5, 0.95, 0.99))
            print(f"  {label:22} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  p99 {p99:6.2f} ms")
        p95_on, p95_off = quantile(on, 0.95), quantile(off, 0.95)
        print(f"  p95 difference {(p95_on - p95_off) * 1000:+.2f} ms (ratio {p95_on / p95_off:.3f}; 95 % bootstrap "
              f"interval {low * 1000:+.2f} .. {high * 1000:+.2f} ms); p50 ratio "
              f"{quantile(on, 0.5) / quantile(off, 0.5):.3f}")
        print(f"  usage events written for the bench collection: {written} "
              f"(the events-on process's {args.requests} searches plus warm-up; uploads by the serving API)")
        cost = json.loads(subprocess.run(
            ["docker", "exec", "-i", names["events on"], "python3", "-c", RECORD_COST],
            capture_output=True, text=True, timeout=600, check=True).stdout.strip().splitlines()[-1])
        print(f"  what a request pays for its event (the middleware's _record, 50 000 calls in the API image): "
              f"p50 {cost['p50'] * 1e6:.1f} us  p95 {cost['p95'] * 1e6:.1f} us  p99.9 {cost['p999'] * 1e6:.1f} us")
    finally:
        for name in names.values():
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        admin.call("DELETE", f"/api/v1/keys/{key_name}")
        stack.close()


if __name__ == "__main__":
    main()
