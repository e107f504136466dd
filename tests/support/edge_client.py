"""A client of the edge that runs inside a test container on the stack's
networks, so nginx sees it at that container's own address on the network a
request goes through (every client on the host's loopback reaches nginx as
one bridge gateway address instead).

    python3 edge_client.py '{"nginx": {"edge": IP, "data": IP}, "port": 8443,
                             "steps": [{"via": "edge", "method": "GET", "path": "/api/v1/collections",
                                        "headers": {...}, "body": null, "count": 50, "until": 429}]}'

Each step sends up to ``count`` requests back to back over one kept-alive
connection per network (opened before the first step, so switching networks
costs no handshake), stopping after the first ``until`` status when given.
Prints one JSON line: {"steps": [[status, ...], ...], "bodies": [last body of each step]}.
Standard library only (it runs in the app image).
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys


def main() -> None:
    plan = json.loads(sys.argv[1])
    context = ssl.create_default_context()
    # The stack's certificate names the public hostname, not the container
    # addresses this client dials; what is tested here is the edge's limits.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connections = {}
    for via, address in plan["nginx"].items():
        connections[via] = http.client.HTTPSConnection(address, plan["port"], context=context, timeout=30)
        connections[via].connect()
    steps, bodies = [], []
    for step in plan["steps"]:
        statuses, body = [], None
        for _ in range(step["count"]):
            connection = connections[step["via"]]
            payload = step.get("body")
            connection.request(step.get("method", "GET"), step["path"],
                               body=json.dumps(payload) if payload is not None else None,
                               headers={"Host": plan.get("host", "localhost"),
                                        **({"Content-Type": "application/json"} if payload is not None else {}),
                                        **step.get("headers", {})})
            response = connection.getresponse()
            body = {"status": response.status, "headers": dict(response.getheaders()),
                    "text": response.read().decode("utf-8", "replace")[:500]}
            statuses.append(response.status)
            if response.will_close:
                connection.close()
                connection.connect()
            if step.get("until") == response.status:
                break
        steps.append(statuses)
        bodies.append(body)
    print(json.dumps({"steps": steps, "bodies": bodies}))


if __name__ == "__main__":
    main()
