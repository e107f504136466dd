"""A client of the edge that runs inside a test container on the stack's
networks, so nginx sees it at that container's own address on the network a
request goes through (every client on the host's loopback reaches nginx as
one bridge gateway address instead).

    python3 edge_client.py '{"nginx": {"edge": IP, "data": IP}, "port": 8443,
                             "steps": [{"via": "edge", "method": "GET", "path": "/api/v1/collections",
                                        "headers": {...}, "body": null, "count": 50, "until": 429,
                                        "parallel": 8}]}'

Each step sends up to ``count`` requests back to back over kept-alive
connections to nginx's address on that network (``parallel`` of them at
once, so the offered rate beats a bucket's refill however slow the machine
is), stopping at the first ``until`` status when given. Every step's
connections are opened before the first step, so no step waits for a
handshake. Prints one JSON line: {"steps": [[status, ...], ...], "bodies":
[the first ``until`` answer, else the last, of each step], "ended": [seconds
from the first step's start to each step's last answer]}: a test of a bucket
drained by one step and tried by the next knows how long it had to refill.
Standard library only (it runs in the app image).
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import threading
import time


def _connection(address: str, port: int) -> http.client.HTTPSConnection:
    context = ssl.create_default_context()
    # The stack's certificate names the public hostname, not the container
    # addresses this client dials; what is tested here is the edge's limits.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(address, port, context=context, timeout=30)
    connection.connect()
    return connection


def _send(connection: http.client.HTTPSConnection, step: dict, host: str) -> dict:
    payload = step.get("body")
    headers = {"Host": host, **step.get("headers", {})}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    connection.request(step.get("method", "GET"), step["path"],
                       body=json.dumps(payload) if payload is not None else None, headers=headers)
    response = connection.getresponse()
    answer = {"status": response.status, "headers": dict(response.getheaders()),
              "text": response.read().decode("utf-8", "replace")[:500]}
    if response.will_close:
        connection.close()
        connection.connect()
    return answer


def run_step(step: dict, plan: dict, connections: list[http.client.HTTPSConnection]) -> tuple[list[int], dict | None]:
    statuses: list[int] = []
    found: list[dict] = []
    last: list[dict] = []
    lock = threading.Lock()
    stop = threading.Event()
    budget = [step["count"]]

    def worker(connection: http.client.HTTPSConnection) -> None:
        while not stop.is_set():
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            answer = _send(connection, step, plan.get("host", "localhost"))
            with lock:
                statuses.append(answer["status"])
                last[:] = [answer]
                if step.get("until") == answer["status"]:
                    found.append(answer)
                    stop.set()

    threads = [threading.Thread(target=worker, args=(connection,)) for connection in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses, (found or last or [None])[0]


def main() -> None:
    plan = json.loads(sys.argv[1])
    per_step = [[_connection(plan["nginx"][step["via"]], plan["port"]) for _ in range(step.get("parallel", 1))]
                for step in plan["steps"]]
    steps, bodies, ended = [], [], []
    started = time.monotonic()
    for step, connections in zip(plan["steps"], per_step, strict=True):
        statuses, body = run_step(step, plan, connections)
        ended.append(round(time.monotonic() - started, 3))
        steps.append(statuses)
        bodies.append(body)
        for connection in connections:
            connection.close()
    print(json.dumps({"steps": steps, "bodies": bodies, "ended": ended}))


if __name__ == "__main__":
    main()
