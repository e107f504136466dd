"""A search client of the edge that runs inside a test container on the
stack's edge network, so nginx sees each such container as a client of its
own address (every client on the host's loopback arrives as one bridge
gateway address, and so shares one per-address bucket).

    python3 search_client.py '{"nginx": IP, "port": 8443, "host": "localhost",
                               "keys": [...], "collection": "c", "queries": [...],
                               "rps": 15, "concurrency": 0, "min_interval_s": 0,
                               "max_seconds": 300, "max_requests": 20000, "timeout_s": 15}'

Two shapes of load:
- open loop (``rps`` > 0): a scheduler starts one authenticated search every
  1/rps seconds on a thread of its own, so a slow answer does not lower the
  offered rate; the keys take turns, so each key's share stays under its
  per-key limit;
- closed loop (``concurrency`` > 0): that many workers each send the next
  search as soon as the last one is answered, each with its own key: the
  most this client can get through (``min_interval_s`` paces each
  worker under its key's limit, so a 429 never counts as capacity).

Each request opens a new connection (as short-lived API clients do, and as
a client that keeps none across nginx's reload would). It runs until the line
"stop" arrives on stdin, or its time or request budget runs out,
then prints one JSON line: {"started", "stopped", "samples": [[sent_at,
status or null, latency_s, color or null, error or null], ...]}.
Standard library only (it runs in the app image).
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import threading
import time

# Bounds the threads of an open loop if the stack stalls (each request's
# timeout bounds how long one may hold a slot).
MAX_IN_FLIGHT = 64


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    # The stack's certificate names the public hostname, not the container
    # address this client dials; what is tested here is the switch.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Client:
    def __init__(self, plan: dict):
        self.plan = plan
        self.context = _context()
        self.samples: list[list] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sent = 0
        self.slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    def _take(self) -> bool:
        with self.lock:
            if self.sent >= self.plan["max_requests"]:
                self.stop.set()
                return False
            self.sent += 1
            return True

    def search(self, key: str, query: str) -> None:
        plan = self.plan
        sent_at, start = time.time(), time.monotonic()
        status = color = error = None
        connection = http.client.HTTPSConnection(plan["nginx"], plan["port"], context=self.context,
                                                 timeout=plan["timeout_s"])
        try:
            body = json.dumps({"query": query, "collection": plan["collection"], "k": 3, "mode": "hybrid"})
            connection.request("POST", "/api/v1/search", body=body, headers={
                "Host": plan["host"], "Content-Type": "application/json", "X-API-Key": key})
            response = connection.getresponse()
            text = response.read()
            status, color = response.status, response.getheader("x-govstack-color")
            if not 200 <= status < 300:
                error = text.decode("utf-8", "replace")[:200]
        except (OSError, http.client.HTTPException) as exc:
            error = repr(exc)[:200]
        finally:
            connection.close()
        with self.lock:
            self.samples.append([sent_at, status, round(time.monotonic() - start, 4), color, error])

    def _open_one(self, key: str, query: str) -> None:
        try:
            self.search(key, query)
        finally:
            self.slots.release()

    def open_loop(self, deadline: float) -> list[threading.Thread]:
        keys, queries = self.plan["keys"], self.plan["queries"]
        interval = 1.0 / self.plan["rps"]
        next_at = time.monotonic()
        threads = []
        n = 0
        while not self.stop.is_set() and time.monotonic() < deadline and self._take():
            # A stalled stack holds every slot: waiting here lowers the offered
            # rate rather than growing threads without bound.
            self.slots.acquire()
            thread = threading.Thread(target=self._open_one, args=(keys[n % len(keys)], queries[n % len(queries)]))
            thread.start()
            threads.append(thread)
            n += 1
            next_at += interval
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        return threads

    def closed_loop(self, deadline: float) -> list[threading.Thread]:
        keys, queries = self.plan["keys"], self.plan["queries"]

        pace = self.plan.get("min_interval_s", 0)

        def worker(index: int) -> None:
            n = index
            while not self.stop.is_set() and time.monotonic() < deadline and self._take():
                began = time.monotonic()
                self.search(keys[index % len(keys)], queries[n % len(queries)])
                n += 1
                # Paced under its key's limit, a worker is held back only by the stack.
                self.stop.wait(max(0.0, pace - (time.monotonic() - began)))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(self.plan["concurrency"])]
        for thread in threads:
            thread.start()
        return threads

    def run(self) -> dict:
        def watch_stdin() -> None:
            # EOF alone does not stop it: a measurement runs to its deadline
            # while the caller only waits for the answer.
            if sys.stdin.readline().strip() == "stop":
                self.stop.set()

        threading.Thread(target=watch_stdin, daemon=True).start()
        started = time.time()
        deadline = time.monotonic() + self.plan["max_seconds"]
        if self.plan.get("concurrency"):
            threads = self.closed_loop(deadline)
            for thread in threads:
                thread.join()
        else:
            threads = self.open_loop(deadline)
        stopped = time.time()
        # Requests in flight still count (their timeout bounds the wait).
        for thread in threads:
            thread.join()
        return {"started": started, "stopped": stopped, "samples": self.samples}


def main() -> int:
    plan = json.loads(sys.argv[1])
    print(json.dumps(Client(plan).run()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
