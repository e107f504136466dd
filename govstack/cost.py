"""`govstack cost`: each container's CPU and memory, averaged over a window
from the Docker API (the offline lane has no cAdvisor: neither Debian nor
PyPI ships it) and priced with the settings' rates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from govstack.inventory import InventoryHost
from govstack.settings import CostSettings


class CostError(RuntimeError):
    pass


@dataclass
class ContainerCost:
    project: str
    service: str
    cpu_cores: float
    memory_gib: float
    per_hour: float


def container_costs(entry: InventoryHost, prices: CostSettings, window_s: float = 60,
                    samples: int = 6) -> list[ContainerCost]:
    """Average CPU cores and memory of every running container of the stack over the window."""
    import docker

    if entry.name != "@local":
        raise CostError(f"{entry.name}: cost reads the host's Docker API; run it there")
    client = docker.from_env(timeout=10)
    prefix = entry.settings.project
    containers = [
        c for c in client.containers.list()
        if (c.labels.get("com.docker.compose.project") or "").startswith(prefix)
        and (c.labels.get("com.docker.compose.project") == prefix
             or c.labels["com.docker.compose.project"][len(prefix):] in ("-blue", "-green"))
    ]
    def snapshot() -> dict[str, dict]:
        # Engines before 24 ignore one_shot and take ~1 s per container to
        # answer: ask for all containers at once.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(len(containers), 1)) as pool:
            stats = pool.map(lambda c: c.stats(stream=False, one_shot=True), containers)
            return {c.id: st for c, st in zip(containers, stats, strict=True)}

    first = snapshot()
    started = time.monotonic()
    memory: dict[str, list[int]] = {c.id: [first[c.id]["memory_stats"].get("usage", 0)] for c in containers}
    for _ in range(max(samples - 1, 1)):
        time.sleep(window_s / max(samples - 1, 1))
        for cid, stats in snapshot().items():
            memory[cid].append(stats["memory_stats"].get("usage", 0))
    elapsed = time.monotonic() - started
    final = snapshot()
    out = []
    for c in containers:
        last = final[c.id]
        cpu_ns = last["cpu_stats"]["cpu_usage"]["total_usage"] - first[c.id]["cpu_stats"]["cpu_usage"]["total_usage"]
        cores = cpu_ns / 1e9 / elapsed
        gib = sum(memory[c.id]) / len(memory[c.id]) / 2**30
        out.append(ContainerCost(
            project=c.labels["com.docker.compose.project"],
            service=c.labels.get("com.docker.compose.service", c.name),
            cpu_cores=round(cores, 4),
            memory_gib=round(gib, 4),
            per_hour=round(cores * prices.cpu_core_hour + gib * prices.memory_gb_hour, 6),
        ))
    return sorted(out, key=lambda cost: -cost.per_hour)
