"""Clients that nginx sees as distinct: a test container on the stack's own
networks reaches nginx at two addresses (its edge-network and its
data-network address), and with edge.trusted_proxies covering its data
address it is a load balancer passing X-Forwarded-For. Limits per address,
per API key, and realip only from trusted proxies are proved with it.

Every burst is bounded in count and stops at the first 429; a test that
drained a bucket waits for it to refill before the next one (nothing here
asserts a time).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
import uuid

import pytest
import requests

from tests.conftest import FORWARDER_LABEL, REPO_ROOT

CLIENT_SCRIPT = REPO_ROOT / "tests" / "support" / "edge_client.py"
COLLECTIONS = "/api/v1/collections"


def trusted_data_address(stack) -> str | None:
    """An address on the stack's data network that edge.trusted_proxies covers (the last one)."""
    data = ipaddress.ip_network(stack.settings.network.data_subnet)
    for cidr in stack.settings.edge.trusted_proxies:
        network = ipaddress.ip_network(cidr)
        if network.version == 4 and network.subnet_of(data):
            hosts = list(network.hosts()) or [network.network_address]
            return str(hosts[-1])
    return None


class EdgeClient:
    def __init__(self, stack, container: str):
        self.stack, self.container = stack, container
        nginx = json.loads(subprocess.run(["docker", "inspect", stack.service_container("nginx")],
                                          capture_output=True, text=True, check=True).stdout)[0]
        networks = nginx["NetworkSettings"]["Networks"]
        self.nginx = {via: networks[stack.plan.networks[via]]["IPAddress"] for via in ("edge", "data")}

    def run(self, *steps: dict) -> tuple[list[list[int]], list[dict]]:
        statuses, bodies, _ = self.timed(*steps)
        return statuses, bodies

    def timed(self, *steps: dict) -> tuple[list[list[int]], list[dict], list[float]]:
        """run(), and the seconds from the first step's start to each step's last answer."""
        plan = {"nginx": self.nginx, "port": self.stack.plan.ports["nginx_https"],
                "host": self.stack.settings.edge.hostname, "steps": list(steps)}
        result = subprocess.run(["docker", "exec", self.container, "python3", "/edge_client.py", json.dumps(plan)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        return answer["steps"], answer["bodies"], answer["ended"]


@pytest.fixture(scope="module")
def edge_client(stack):
    """The client container: on the edge network, and on the data network at
    the trusted address when the inventory trusts one there."""
    name = f"{stack.settings.project}-testclient"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", stack.plan.networks["edge"],
         "-v", f"{CLIENT_SCRIPT}:/edge_client.py:ro", "--entrypoint", "python3", "--read-only",
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--pids-limit", "64",
         "--label", f"{FORWARDER_LABEL}={stack.settings.project}",
         stack.plan.app_image(stack.current_release().version), "-c", "import time; time.sleep(3600)"],
        check=True, capture_output=True,
    )
    trusted = trusted_data_address(stack)
    connect = ["docker", "network", "connect", *(["--ip", trusted] if trusted else []),
               stack.plan.networks["data"], name]
    subprocess.run(connect, check=True, capture_output=True)
    yield EdgeClient(stack, name)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.fixture(scope="module")
def two_keys(stack):
    """Two reader keys of their own (each with its own per-key bucket)."""
    keys = []
    for _ in range(2):
        response = requests.post(f"{stack.base_url}/api/v1/keys", headers={"X-API-Key": stack.admin_api_key},
                                 json={"name": f"limits-{uuid.uuid4().hex[:8]}", "role": "reader"},
                                 verify=stack.verify, timeout=30)
        assert response.status_code == 201, response.text
        keys.append(response.json()["api_key"])
    return keys


def _bound(rate: int, burst: int) -> int:
    """More requests than a bucket of rate + burst can pass in the seconds a burst takes."""
    return 3 * (rate + burst) + 30


# Connections a burst uses at once: however slow the machine, the offered rate beats the refill.
PARALLEL = 8


def _refill(rate: int, burst: int) -> None:
    """Wait until a drained bucket is full again, so the next test starts fresh."""
    time.sleep(burst / rate + 1)


def _assert_json_429(body: dict) -> None:
    assert body["status"] == 429
    assert body["headers"]["Content-Type"].startswith("application/json")
    error = json.loads(body["text"])
    assert error["detail"] == "rate limit exceeded" and error["request_id"]
    assert body["headers"]["Retry-After"] == "1"


def test_a_client_over_its_address_limit_gets_429_and_another_address_does_not(stack, edge_client):
    edge = stack.settings.edge
    statuses, bodies = edge_client.run(
        # No key: the app answers 401 at once, so only the address limit counts.
        {"via": "edge", "path": COLLECTIONS, "count": _bound(edge.api_rate_per_s, edge.api_burst), "until": 429,
         "parallel": PARALLEL},
        {"via": "data", "path": COLLECTIONS, "count": 3},
    )
    assert 429 in statuses[0], f"no 429 after {len(statuses[0])} requests"
    assert len(statuses[0]) > edge.api_burst, statuses[0]
    _assert_json_429(bodies[0])
    assert statuses[1] == [401, 401, 401]
    _refill(edge.api_rate_per_s, edge.api_burst)


def test_a_key_over_its_limit_gets_429_at_every_address_and_another_key_does_not(stack, edge_client, two_keys):
    edge = stack.settings.edge
    first, second = two_keys
    tries = edge.api_key_burst + 5  # a bucket of its own (per address: api_burst) would pass them all
    statuses, bodies, ended = edge_client.timed(
        {"via": "edge", "path": COLLECTIONS, "headers": {"X-API-Key": first},
         "count": _bound(edge.api_key_rate_per_s, edge.api_key_burst), "until": 429, "parallel": PARALLEL},
        # The same key from another address: the bucket follows the key, so only what refilled
        # since the drain passes (one token per 1/rate s; the wait is measured, not assumed).
        {"via": "data", "path": COLLECTIONS, "headers": {"X-API-Key": first}, "count": tries, "parallel": PARALLEL},
        {"via": "data", "path": COLLECTIONS, "headers": {"X-API-Key": second}, "count": 3},
    )
    assert 429 in statuses[0], f"no 429 after {len(statuses[0])} requests"
    assert len(statuses[0]) > edge.api_key_burst, statuses[0]
    _assert_json_429(bodies[0])
    refilled = 1 + int((ended[1] - ended[0]) * edge.api_key_rate_per_s)
    assert statuses[1].count(200) <= min(refilled, tries - 1), (statuses[1], ended)
    assert statuses[1].count(429) == len(statuses[1]) - statuses[1].count(200), statuses[1]
    assert statuses[2] == [200, 200, 200]
    _refill(edge.api_key_rate_per_s, edge.api_key_burst)


def test_only_a_trusted_proxy_chooses_the_client_address(stack, edge_client):
    if trusted_data_address(stack) is None:
        pytest.skip("the inventory trusts no proxy address on the stack's data network (edge.trusted_proxies)")
    edge = stack.settings.edge
    bound = _bound(edge.api_rate_per_s, edge.api_burst)

    def forwarded(address: str) -> dict:
        return {"X-Forwarded-For": address}

    statuses, _ = edge_client.run(
        # Through the trusted proxy, each forwarded address is a client of its own.
        {"via": "data", "path": COLLECTIONS, "headers": forwarded("198.51.100.1"), "count": bound, "until": 429,
         "parallel": PARALLEL},
        {"via": "data", "path": COLLECTIONS, "headers": forwarded("198.51.100.2"), "count": 3},
        # From an untrusted address the header is ignored: it drains its own bucket…
        {"via": "edge", "path": COLLECTIONS, "headers": forwarded("198.51.100.3"), "count": bound, "until": 429,
         "parallel": PARALLEL},
        # …and not the one of the address it named.
        {"via": "data", "path": COLLECTIONS, "headers": forwarded("198.51.100.3"), "count": 3},
    )
    assert 429 in statuses[0], f"no 429 after {len(statuses[0])} requests"
    assert statuses[1] == [401, 401, 401]
    assert 429 in statuses[2], f"no 429 after {len(statuses[2])} requests"
    assert statuses[3] == [401, 401, 401]
    _refill(edge.api_rate_per_s, edge.api_burst)


def test_the_app_records_the_client_nginx_resolved(stack, edge_client):
    if trusted_data_address(stack) is None:
        pytest.skip("the inventory trusts no proxy address on the stack's data network (edge.trusted_proxies)")
    name = f"realip-{uuid.uuid4().hex[:8]}"
    statuses, bodies = edge_client.run(
        {"via": "data", "method": "POST", "path": "/api/v1/keys", "count": 1,
         "headers": {"X-API-Key": stack.admin_api_key, "X-Forwarded-For": "203.0.113.9, 198.51.100.77"},
         "body": {"name": name, "role": "reader"}},
    )
    assert statuses == [[201]], bodies
    rows = stack.psql(f"SELECT host(client_ip) FROM audit_logs WHERE action = 'key.create' AND resource_id = '{name}'")
    # realip walks X-Forwarded-For from the right: the last address the
    # trusted proxy added is the client, and the app agrees with nginx.
    assert rows == [("198.51.100.77",)]
