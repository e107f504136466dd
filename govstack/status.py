"""`govstack status` and `govstack cost`.

status reads Prometheus through prometheus-api-client, at the loopback port
where the edge proxies Prometheus' read API (monitoring.query_port). It fails
fast: no retries, a short timeout, one line naming what is unreachable.

cost averages each container's CPU and memory over a window from the Docker
API (the offline lane has no cAdvisor: neither Debian nor PyPI ships it) and
prices them with the settings' rates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prometheus_api_client.exceptions import PrometheusApiClientException
from requests.exceptions import RequestException
from urllib3.util.retry import Retry

from govstack.inventory import InventoryHost
from govstack.settings import CostSettings


class StatusError(RuntimeError):
    pass


QUERIES = {
    "api_p95_s": "histogram_quantile(0.95, sum by (le) (rate(govstack_request_duration_seconds_bucket[5m])))",
    "search_p95_s": "histogram_quantile(0.95, sum by (le) (rate(govstack_vector_search_duration_seconds_bucket[5m])))",
    "indexing_backlog": "max(govstack_unindexed_documents)",
    "backup_age_s": "time() - max(govstack_backup_last_success_timestamp_seconds > 0)",
}


def prometheus(entry: InventoryHost):
    from prometheus_api_client import PrometheusConnect

    url = f"http://127.0.0.1:{entry.settings.monitoring.query_port}"
    # No retries and a short timeout: a down Prometheus answers in seconds, not
    # after the client's default retry loop.
    return PrometheusConnect(url=url, disable_ssl=True, retry=Retry(total=0), timeout=5)


def _scalar(prom, query: str) -> float | None:
    result = prom.custom_query(query)
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if value != value else value  # NaN: no data yet


def host_status(entry: InventoryHost) -> dict[str, Any]:
    from govstack.ledger import read_release

    if entry.name != "@local":
        raise StatusError(f"{entry.name}: status reads Prometheus on the host's loopback; run it there")
    prom = prometheus(entry)
    try:
        targets = prom.custom_query("up")
        alerts = prom.custom_query('ALERTS{alertstate="firing"}')
        figures = {name: _scalar(prom, query) for name, query in QUERIES.items()}
    except (RequestException, PrometheusApiClientException) as error:
        raise StatusError(
            f"{entry.name}: Prometheus does not answer at 127.0.0.1:{entry.settings.monitoring.query_port} "
            f"({type(error).__name__})"
        ) from None
    release = read_release(entry)
    return {
        "host": entry.name,
        "serving": {"color": release.color, "version": release.version} if release else None,
        "targets": sorted(
            (
                {
                    "job": t["metric"].get("job"),
                    "instance": t["metric"].get("instance"),
                    "up": t["value"][1] == "1",
                }
                for t in targets
            ),
            key=lambda t: (t["job"] or "", t["instance"] or ""),
        ),
        "firing_alerts": sorted(
            (
                {"alert": a["metric"].get("alertname"), "severity": a["metric"].get("severity")}
                for a in alerts
            ),
            key=lambda a: a["alert"] or "",
        ),
        **figures,
    }


def format_status(status: dict[str, Any]) -> str:
    def seconds(value: float | None) -> str:
        if value is None:
            return "no data"
        return f"{value * 1000:.0f} ms" if value < 10 else f"{value / 3600:.1f} h"

    serving = status["serving"]
    down = [t for t in status["targets"] if not t["up"]]
    lines = [
        f"{status['host']}: serving {serving['color']} {serving['version']}" if serving else
        f"{status['host']}: no release",
        f"  targets: {len(status['targets']) - len(down)}/{len(status['targets'])} up"
        + "".join(f"\n    DOWN {t['job']} {t['instance']}" for t in down),
        f"  firing alerts: {len(status['firing_alerts'])}"
        + "".join(f"\n    {a['alert']} ({a['severity']})" for a in status["firing_alerts"]),
        f"  backup age: {seconds(status['backup_age_s']) if status['backup_age_s'] is not None else 'never'}",
        f"  API p95: {seconds(status['api_p95_s'])}   search p95: {seconds(status['search_p95_s'])}",
        f"  indexing backlog: {status['indexing_backlog'] if status['indexing_backlog'] is not None else 'no data'}",
    ]
    return "\n".join(lines)


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
        raise StatusError(f"{entry.name}: cost reads the host's Docker API; run it there")
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
