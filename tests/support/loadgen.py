"""A bounded load generator for zero-downtime tests (loopback only).

Open loop: a scheduler per kind submits `GET /health` and authenticated
searches at fixed rates to a thread pool, so a slow response does not lower
the offered rate. Each request uses a new connection (as short-lived API
clients do). It stops when told to, or when its time or request budget runs
out. Every response is recorded: status, latency, and the `X-Govstack-Color`
header of app responses.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests


@dataclass
class Sample:
    at: float  # time.time() when the request was sent
    kind: str
    status: int | None  # None: connection error / timeout
    latency_s: float
    color: str | None
    error: str | None = None


@dataclass
class Report:
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    stopped: float = 0.0

    @property
    def failures(self) -> list[Sample]:
        return [s for s in self.samples if s.status is None or not 200 <= s.status < 300]

    @property
    def rate(self) -> float:
        return len(self.samples) / max(self.stopped - self.started, 1e-9)

    def p95(self, kind: str | None = None) -> float:
        latencies = sorted(s.latency_s for s in self.samples if kind in (None, s.kind))
        return statistics.quantiles(latencies, n=20)[-1] if len(latencies) >= 20 else max(latencies, default=0)

    def first_served_by(self, color: str) -> float | None:
        times = [s.at for s in self.samples if s.color == color and s.status and 200 <= s.status < 300]
        return min(times) if times else None

    def summary(self) -> str:
        by_kind = {k: sum(1 for s in self.samples if s.kind == k) for k in {s.kind for s in self.samples}}
        return (
            f"{len(self.samples)} requests in {self.stopped - self.started:.1f} s = {self.rate:.1f}/s {by_kind}, "
            f"failed {len(self.failures)}, p95 {self.p95() * 1000:.0f} ms "
            f"(search p95 {self.p95('search') * 1000:.0f} ms)"
        )


class LoadGenerator:
    def __init__(self, base_url: str, verify: str, api_key: str, collection: str, *,
                 health_rps: float = 50, search_rps: float = 2, max_seconds: float = 600,
                 max_requests: int = 60000, timeout_s: float = 15):
        self.base_url = base_url.rstrip("/")
        self.verify = verify
        self.api_key = api_key
        self.collection = collection
        self.plan = [("health", health_rps), ("search", search_rps)]
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.timeout_s = timeout_s
        self.report = Report()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Bounds the requests in flight (and so the threads) if the stack stalls.
        self._pool = ThreadPoolExecutor(max_workers=64)
        self._submitted = 0

    def _one(self, kind: str) -> Sample:
        sent = time.time()
        start = time.monotonic()
        try:
            if kind == "health":
                response = requests.get(f"{self.base_url}/health", verify=self.verify, timeout=self.timeout_s)
            else:
                response = requests.post(
                    f"{self.base_url}/api/v1/search",
                    json={"query": "archive records", "collection": self.collection, "k": 3, "mode": "hybrid"},
                    headers={"X-API-Key": self.api_key},
                    verify=self.verify,
                    timeout=self.timeout_s,
                )
            return Sample(sent, kind, response.status_code, time.monotonic() - start,
                          response.headers.get("x-govstack-color"),
                          None if response.ok else response.text[:200])
        except requests.RequestException as error:
            return Sample(sent, kind, None, time.monotonic() - start, None, repr(error)[:200])

    def _record(self, kind: str) -> None:
        sample = self._one(kind)
        with self._lock:
            self.report.samples.append(sample)

    def _run(self, kind: str, rps: float) -> None:
        interval = 1.0 / rps
        next_at = time.monotonic()
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self._submitted >= self.max_requests:
                    return
                self._submitted += 1
            self._pool.submit(self._record, kind)
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> LoadGenerator:
        self.report.started = time.time()
        for kind, rps in self.plan:
            thread = threading.Thread(target=self._run, args=(kind, rps), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.report.stopped = time.time()
        # Requests in flight still count (their timeout bounds the wait).
        self._pool.shutdown(wait=True)
