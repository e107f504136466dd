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


@dataclass
class LeftOut:
    """A container of the stack seen during the window but not across all of it."""

    project: str
    service: str
    why: str


def container_costs(entry: InventoryHost, prices: CostSettings, window_s: float = 60,
                    samples: int = 6) -> tuple[list[ContainerCost], list[LeftOut]]:
    """Average CPU cores and memory of every container of the stack that ran across the whole
    window, and those left out (gone or restarted inside it), each with its reason."""
    import docker

    if entry.name != "@local":
        raise CostError(f"{entry.name}: cost reads the host's Docker API; run it there")
    client = docker.from_env(timeout=10)
    prefix = entry.settings.project
    # Only Compose containers, and none that is removed between the listing and its inspection:
    # other projects' containers (a one-off `compose run --rm`, another stack's deploy) come and go
    # on the same engine at any moment.
    listed = client.containers.list(filters={"label": "com.docker.compose.project"}, ignore_removed=True)
    containers = [
        c for c in listed
        if c.labels["com.docker.compose.project"] == prefix
        or c.labels["com.docker.compose.project"] in (f"{prefix}-blue", f"{prefix}-green")
    ]

    def stats_of(container) -> dict | None:
        try:
            return container.stats(stream=False, one_shot=True)
        except docker.errors.NotFound:
            return None  # stopped and removed during the window (a blue/green switch, a one-off)

    def snapshot() -> dict[str, dict]:
        # Engines before 24 ignore one_shot and take ~1 s per container to
        # answer: ask for all containers at once.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(len(containers), 1)) as pool:
            stats = pool.map(stats_of, containers)
            return {c.id: st for c, st in zip(containers, stats, strict=True) if st is not None}

    first = snapshot()
    started = time.monotonic()
    memory: dict[str, list[int]] = {cid: [st["memory_stats"].get("usage", 0)] for cid, st in first.items()}
    for _ in range(max(samples - 1, 1)):
        time.sleep(window_s / max(samples - 1, 1))
        for cid, stats in snapshot().items():
            memory.setdefault(cid, []).append(stats["memory_stats"].get("usage", 0))
    elapsed = time.monotonic() - started
    final = snapshot()
    out, left_out = [], []
    # A container priced needs both ends of the window; one that went inside it is not running the
    # stack's steady state and is left out rather than priced from part of it.
    for c in containers:
        project, service = c.labels["com.docker.compose.project"], c.labels.get("com.docker.compose.service", c.name)
        if c.id not in first or c.id not in final:
            left_out.append(LeftOut(project, service, "gone during the window"))
            continue
        last = final[c.id]
        cpu_ns = last["cpu_stats"]["cpu_usage"]["total_usage"] - first[c.id]["cpu_stats"]["cpu_usage"]["total_usage"]
        if cpu_ns < 0:
            left_out.append(LeftOut(project, service, "stopped or restarted during the window"))
            continue
        cores = cpu_ns / 1e9 / elapsed
        gib = sum(memory[c.id]) / len(memory[c.id]) / 2**30
        out.append(ContainerCost(
            project=project,
            service=service,
            cpu_cores=round(cores, 4),
            memory_gib=round(gib, 4),
            per_hour=round(cores * prices.cpu_core_hour + gib * prices.memory_gb_hour, 6),
        ))
    return sorted(out, key=lambda cost: -cost.per_hour), left_out
