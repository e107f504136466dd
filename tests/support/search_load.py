"""Authenticated searches through the edge from clients nginx sees as
distinct: a few containers on the stack's edge network (each its own
address, so its own per-address bucket), each with reader keys of its own
(so each key stays under its per-key limit). tests/support/search_client.py
runs in each of them.

Used by the blue/green switch test and bench/bluegreen_load.py:

    clients = SearchClients.start(stack, collection)      # containers + keys
    idle_max = clients.measure_max(seconds=10).ok_rate     # closed loop
    with clients.open_loop(rps=60) as load:                # open loop
        ...
    load.report                                            # tests.support.loadgen.Report
    release_under_load(stack, clients, 60, "deploy", ...)  # the same around a release
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass, field

import requests

from tests.conftest import FORWARDER_LABEL, REPO_ROOT
from tests.support.loadgen import Report, Sample

CLIENT_SCRIPT = REPO_ROOT / "tests" / "support" / "search_client.py"
QUERIES = ("archive records", "land records since 1902", "national archive", "records of land",
           "archive keeps land", "land archive")
# Four client addresses, four keys each: at the rates driven here each
# address stays well under edge.api_rate_per_s and each key under
# edge.api_key_rate_per_s (the plan below checks it).
CONTAINERS = 4
KEYS_PER_CONTAINER = 4
# Bounds for every run (count and time), whatever the caller asks.
MAX_SECONDS = 600
MAX_REQUESTS = 60000
# A closed-loop worker sends at most this share of its key's limit.
KEY_SHARE = 0.8


@dataclass
class Client:
    container: str
    keys: list[str] = field(default_factory=list)


class SearchLoad:
    """The load of every client container; ``report`` when it has stopped."""

    def __init__(self, clients: list[Client], plans: list[dict]):
        self.report = Report()
        cmd = ["docker", "exec", "-i"]
        self.procs = [
            subprocess.Popen([*cmd, client.container, "python3", "/search_client.py", json.dumps(plan)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for client, plan in zip(clients, plans, strict=True)
        ]

    def __enter__(self) -> SearchLoad:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout_s: float = 120, now: bool = True) -> Report:
        """Stop the clients (``now``; else wait for their own deadlines) and collect their samples."""
        outputs = []
        for proc in self.procs if now else ():
            try:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                proc.stdin = None  # it exited already; communicate() must not flush it
        for proc in self.procs:
            out, err = proc.communicate(timeout=timeout_s)
            if proc.returncode != 0:
                raise RuntimeError(f"search client exited {proc.returncode}: {err[-2000:]}")
            outputs.append(json.loads(out.strip().splitlines()[-1]))
        self.report = Report(
            samples=[Sample(at, "search", status, latency, color, error)
                     for output in outputs for at, status, latency, color, error in output["samples"]],
            started=min(output["started"] for output in outputs),
            stopped=max(output["stopped"] for output in outputs),
        )
        self.report.samples.sort(key=lambda sample: sample.at)
        return self.report


def ok_rate(report: Report) -> float:
    """Answered searches per second (2xx)."""
    return (len(report.samples) - len(report.failures)) / max(report.stopped - report.started, 1e-9)


class SearchClients:
    def __init__(self, stack, collection: str, clients: list[Client], nginx: str):
        self.stack, self.collection, self.clients, self.nginx = stack, collection, clients, nginx

    @classmethod
    def start(cls, stack, collection: str, containers: int = CONTAINERS,
              keys_per_container: int = KEYS_PER_CONTAINER) -> SearchClients:
        project = stack.settings.project
        edge_network = stack.plan.networks["edge"]
        image = stack.plan.app_image(stack.current_release().version)
        clients = []
        for index in range(containers):
            name = f"{project}-searchclient-{index}"
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
            subprocess.run(
                ["docker", "run", "-d", "--name", name, "--network", edge_network,
                 "-v", f"{CLIENT_SCRIPT}:/search_client.py:ro", "--entrypoint", "python3", "--read-only",
                 "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--pids-limit", "128",
                 "--label", f"{FORWARDER_LABEL}={project}",
                 image, "-c", "import time; time.sleep(3600)"],
                check=True, capture_output=True,
            )
            clients.append(Client(name, [cls._reader_key(stack) for _ in range(keys_per_container)]))
        nginx = json.loads(subprocess.run(["docker", "inspect", stack.service_container("nginx")],
                                          capture_output=True, text=True, check=True).stdout)[0]
        address = nginx["NetworkSettings"]["Networks"][edge_network]["IPAddress"]
        return cls(stack, collection, clients, address)

    @staticmethod
    def _reader_key(stack) -> str:
        for _attempt in range(20):
            response = requests.post(f"{stack.base_url}/api/v1/keys", headers={"X-API-Key": stack.admin_api_key},
                                     json={"name": f"load-{uuid.uuid4().hex[:8]}", "role": "reader"},
                                     verify=stack.verify, timeout=30)
            if response.status_code != 429:
                break
            time.sleep(0.5)  # the admin key's own bucket; bounded by the attempts
        assert response.status_code == 201, response.text
        return response.json()["api_key"]

    def remove(self) -> None:
        for client in self.clients:
            subprocess.run(["docker", "rm", "-f", client.container], capture_output=True)

    def _plan(self, client: Client, **load) -> dict:
        return {"nginx": self.nginx, "port": self.stack.plan.ports["nginx_https"],
                "host": self.stack.settings.edge.hostname, "keys": client.keys, "collection": self.collection,
                "queries": list(QUERIES), "max_seconds": MAX_SECONDS, "max_requests": MAX_REQUESTS // len(
                    self.clients), "timeout_s": 15, "rps": 0, "concurrency": 0, "min_interval_s": 0, **load}

    def measure_max(self, seconds: float = 10) -> Report:
        """Closed loop: one worker per key, each paced to KEY_SHARE of its
        key's limit, for ``seconds``: the searches/s the stack answers when
        nothing else runs (up to keys x KEY_SHARE x the per-key limit)."""
        edge = self.stack.settings.edge
        plans = [self._plan(client, concurrency=len(client.keys), max_seconds=seconds,
                            min_interval_s=1 / (KEY_SHARE * edge.api_key_rate_per_s))
                 for client in self.clients]
        return SearchLoad(self.clients, plans).stop(timeout_s=seconds + 120, now=False)

    @property
    def max_measurable_rps(self) -> float:
        keys = sum(len(client.keys) for client in self.clients)
        return keys * KEY_SHARE * self.stack.settings.edge.api_key_rate_per_s

    def open_loop(self, rps: float) -> SearchLoad:
        """``rps`` searches/s in all, split evenly over the containers and their keys."""
        edge = self.stack.settings.edge
        per_client = rps / len(self.clients)
        per_key = per_client / min(len(client.keys) for client in self.clients)
        if per_client > KEY_SHARE * edge.api_rate_per_s or per_key > KEY_SHARE * edge.api_key_rate_per_s:
            raise ValueError(f"{rps} searches/s over {len(self.clients)} clients would meet the edge's limits "
                             f"({per_client:.1f}/s per address, {per_key:.1f}/s per key)")
        return SearchLoad(self.clients, [self._plan(client, rps=per_client) for client in self.clients])


def release_under_load(stack, clients: SearchClients, rps: float, *args: str):
    """Run ``govstack <args>`` (a deploy, a rollback) while the clients search
    at ``rps``; return (result, report, ready_at).

    ready_at is when the release saw the new color ready: the moment it moved
    on to switching the edge (pyinfra prints each operation as it starts)."""
    ready_at = None
    cmd = [str(REPO_ROOT / ".venv" / "bin" / "govstack"), *args, "-i", stack.inventory]
    with clients.open_loop(rps) as load:
        time.sleep(3)
        with subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            out = []
            for line in proc.stdout:
                out.append(line)
                if ready_at is None and "Starting operation: Edge config pointing at" in line:
                    ready_at = time.time()
            err = proc.stderr.read()
        time.sleep(3)
    result = subprocess.CompletedProcess(cmd, proc.returncode, "".join(out), err)
    return result, load.report, ready_at
