"""`govstack status`: what Prometheus knows about a host.

It reads Prometheus through prometheus-api-client, at the loopback port
where the edge proxies Prometheus' read API (monitoring.query_port). It fails
fast: no retries, a short timeout, one line naming what is unreachable.
"""

from __future__ import annotations

from typing import Any

from prometheus_api_client.exceptions import PrometheusApiClientException
from requests.exceptions import RequestException
from urllib3.util.retry import Retry

from govstack.inventory import InventoryHost


class StatusError(RuntimeError):
    pass


QUERIES = {
    "api_p95_s": "histogram_quantile(0.95, sum by (le) (rate(govstack_request_duration_seconds_bucket[5m])))",
    "search_p95_s": "histogram_quantile(0.95, sum by (le) (rate(govstack_vector_search_duration_seconds_bucket[5m])))",
    "indexing_backlog": "max(govstack_unindexed_documents)",
    "backup_age_s": "time() - max(govstack_backup_last_success_timestamp_seconds > 0)",
    # WAL archiving (pgBackRest): how long ago a segment was last archived, how many
    # complete segments wait, and how long the oldest has waited (the archive's lag).
    "wal_archived_age_s": "max(time() - (pg_wal_archive_last_archived_timestamp_seconds > 0))",
    "wal_pending_segments": "max(pg_wal_archive_pending_segments)",
    "wal_archive_lag_s": "max(pg_wal_archive_oldest_pending_age_seconds)",
    "wal_archive_failing": "max(pg_wal_archive_failing)",
    "base_backup_age_s": "time() - max(govstack_pgbackrest_last_backup_timestamp_seconds > 0)",
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
        _wal_line(status, seconds),
        f"  API p95: {seconds(status['api_p95_s'])}   search p95: {seconds(status['search_p95_s'])}",
        f"  indexing backlog: {status['indexing_backlog'] if status['indexing_backlog'] is not None else 'no data'}",
    ]
    return "\n".join(lines)


def _wal_line(status: dict[str, Any], seconds) -> str:
    if status.get("wal_pending_segments") is None:
        return "  WAL archive: no data (point-in-time recovery off, or Postgres unreachable)"
    archived = status.get("wal_archived_age_s")
    base = status.get("base_backup_age_s")
    state = "FAILING, " if status.get("wal_archive_failing") else ""
    return (f"  WAL archive: {state}lag {status.get('wal_archive_lag_s') or 0:.0f} s "
            f"({status['wal_pending_segments']:.0f} segments waiting), last archived "
            f"{'never' if archived is None else f'{archived:.0f} s ago'}; base backup age: "
            f"{'never' if base is None else seconds(base)}")
