"""``govstack.monitoring``: Prometheus, Alertmanager, the exporters and every alert's knobs."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from govstack.settings.base import Section

# Prometheus durations as its config and rule files accept them ("90s", "1h30m").
Duration = Annotated[str, Field(pattern=r"^(\d+(ms|s|m|h|d|w|y))+$")]
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(text: str) -> float:
    """``"1h30m"`` -> 5400.0 (Prometheus duration syntax)."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a Prometheus duration")
    return float(sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))



Severity = Literal["critical", "warning", "info"]


class AlertRule(Section):
    """One alert's knobs. ``threshold``'s unit is the alert's own (see AlertRules)."""

    threshold: float | None = Field(None, description="the alert's limit, in the unit its description names")
    duration: Duration = Field(description="Prometheus `for:`: how long the condition must hold before it fires")
    severity: Severity = "warning"

    @property
    def seconds(self) -> float:
        return duration_seconds(self.duration)

    @property
    def minutes(self) -> int:
        """``duration`` rounded up to whole minutes (promtool tests step in minutes)."""
        return math.ceil(self.seconds / 60)


def _rule(duration: str, severity: Severity, threshold: float | None = None) -> AlertRule:
    return AlertRule(threshold=threshold, duration=duration, severity=severity)


class AlertRules(Section):
    """Every alert the rule files define. Defaults suit a production host; a
    test profile shortens the durations (see TEST_PROFILE)."""

    target_down: AlertRule = Field(_rule("2m", "critical"), description="a scrape target (any job) answers no scrape")
    postgres_down: AlertRule = Field(_rule("1m", "critical"), description="the exporter reaches no Postgres")
    object_store_down: AlertRule = Field(_rule("2m", "critical"), description="the S3 gateway's /healthz fails")
    vector_store_down: AlertRule = Field(_rule("2m", "critical"), description="Chroma's heartbeat fails")
    edge_down: AlertRule = Field(_rule("2m", "critical"), description="nginx answers neither stub_status nor TLS")
    high_error_rate: AlertRule = Field(
        _rule("5m", "critical", 0.05), description="threshold: share of API responses that are 5xx, per color"
    )
    database_connections_high: AlertRule = Field(
        _rule("5m", "warning", 0.8), description="threshold: backends / max_connections"
    )
    vector_search_latency_high: AlertRule = Field(
        _rule("10m", "warning", 0.5), description="threshold: seconds, p95 of embedding + Chroma query"
    )
    indexing_backlog: AlertRule = Field(
        _rule("30m", "warning", 10),
        description="threshold: unindexed documents; fires when above it and still growing for the duration",
    )
    cleanup_paused: AlertRule = Field(
        _rule("2d", "warning"),
        description="the app's cleanup has stayed paused (by a restore) this long: reconcile, then resume it",
    )
    documents_failing: AlertRule = Field(
        _rule("0s", "warning", 5),
        description="threshold: documents that ended failed in the last hour, per cause (one bad upload is not news)",
    )
    analytics_events_lost: AlertRule = Field(
        _rule("15m", "warning", 0.01),
        description="threshold: share of usage events dropped or not written (analytics undercounts)",
    )
    disk_space_low: AlertRule = Field(
        _rule("5m", "critical", 0.10), description="threshold: free share of the data filesystem"
    )
    disk_will_fill: AlertRule = Field(
        _rule("30m", "warning", 4), description="threshold: hours until the data filesystem is full (predict_linear)"
    )
    host_memory_high: AlertRule = Field(
        _rule("10m", "warning", 0.90), description="threshold: share of host memory in use (1 - MemAvailable/Total)"
    )
    backup_stale: AlertRule = Field(
        _rule("10m", "critical", 26), description="threshold: hours since the last successful backup"
    )
    backup_failed: AlertRule = Field(_rule("0s", "critical"), description="the last backup run failed")
    wal_archive_failing: AlertRule = Field(
        _rule("5m", "critical", 2),
        description="archive_command keeps failing, or WAL waits while nothing was archived for threshold x "
        "backup.pitr.archive_timeout_s",
    )
    base_backup_stale: AlertRule = Field(
        _rule("10m", "critical"),
        description="threshold: hours since the newest pgBackRest base backup; null = the longest gap of "
        "backup.pitr's full and diff schedules + 2 h",
    )
    base_backup_failed: AlertRule = Field(
        _rule("0s", "warning"), description="the last pgBackRest job (base backup, verify, stanza upkeep) failed"
    )
    certificate_expiring_soon: AlertRule = Field(
        _rule("1h", "warning", 14), description="threshold: days until the edge certificate expires"
    )

    @model_validator(mode="before")
    @classmethod
    def _partial_overrides(cls, value: Any) -> Any:
        # {"postgres_down": {"duration": "15s"}} changes the duration only:
        # the alert's other defaults (severity, threshold) stay.
        if not isinstance(value, dict):
            return value
        merged = dict(value)
        for name, rule in value.items():
            field = cls.model_fields.get(name)
            if field is not None and isinstance(rule, dict):
                merged[name] = {**field.default.model_dump(), **rule}
        return merged

    @model_validator(mode="after")
    def _thresholds_set(self) -> AlertRules:
        for name, rule in self:
            if type(self).model_fields[name].default.threshold is not None and not (rule.threshold or 0) > 0:
                raise ValueError(f"{name}.threshold must be a number above 0")
        return self


_EMAIL = r"^[^\s\"@]+@[^\s\"@]+$"


class EmailReceiver(Section):
    to: tuple[Annotated[str, Field(pattern=_EMAIL)], ...] = Field(min_length=1, description="recipient addresses")
    sender: str = Field(pattern=_EMAIL, description="From: address")
    smarthost: str = Field(pattern=r"^[A-Za-z0-9.-]+:\d+$", description="SMTP relay host:port")
    auth_username: str | None = Field(
        None, description="SMTP login; its password is the secret alertmanager_smtp_password"
    )
    require_tls: bool = True
    severities: tuple[Severity, ...] = Field(("critical",), description="alert severities that are e-mailed")


class MonitoringSettings(Section):
    """The monitoring tier (Prometheus, exporters, Alertmanager; Grafana in the upstream lane)."""

    enabled: bool = Field(True, description="deploy the monitoring tier")
    scrape_interval: Duration = "15s"
    scrape_timeout: Duration = "10s"
    evaluation_interval: Duration = Field("15s", description="how often alert rules are evaluated")
    retention_time: Duration = Field("15d", description="Prometheus TSDB retention by age")
    retention_size_mb: int = Field(4096, ge=64, description="Prometheus TSDB retention by size")
    runbook_base_url: str = Field(
        "https://github.com/govstack/govstack-deploy/blob/main/runbooks",
        pattern=r"^https?://\S+[^/]$",
        description="where runbooks/*.md can be read; alerts link <base>/alerts.md#<alert>",
    )
    webhook_urls: tuple[str, ...] = Field((), description="Alertmanager webhook receivers (every severity)")
    email: EmailReceiver | None = Field(None, description="e-mail receiver; null = none")
    group_wait: Duration = Field("30s", description="Alertmanager: wait to batch a new group's first alerts")
    group_interval: Duration = Field("5m", description="Alertmanager: wait before notifying a group's changes")
    repeat_interval_critical: Duration = "4h"
    repeat_interval_warning: Duration = "24h"
    resolve_timeout: Duration = "5m"
    # The node-exporter sees the data filesystem through its bind mount (see
    # the compose block); the container's own mounts (/, /etc/hosts …) are
    # Docker's and are not watched.
    disk_mountpoints: str = Field("/host/data", description="regex of node-exporter mountpoints the disk alerts watch")
    alerts: AlertRules = AlertRules()
    grafana: bool = Field(True, description="Grafana with provisioned dashboards (upstream lane only)")
    query_port: int = Field(
        9090, ge=1, le=65535, description="host loopback port where nginx proxies Prometheus' read API"
    )

    @field_validator("webhook_urls")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not re.fullmatch(r"https?://[^\s\"\\]+", url):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value

    @field_validator("disk_mountpoints")
    @classmethod
    def _regex(cls, value: str) -> str:
        re.compile(value)
        if '"' in value or "\\" in value:
            raise ValueError("must not contain quotes or backslashes (it is pasted into PromQL)")
        return value


# Short durations for the live alert tests: an alert fires within seconds of
# its cause and Alertmanager sends at once. Merge under `monitoring`.
TEST_WEBHOOK_URL = "http://alert-receiver:9099/cgi-bin/alerts"
TEST_PROFILE: dict[str, Any] = {
    # The receiver the live alert test runs on the data network (tests/e2e).
    "webhook_urls": [TEST_WEBHOOK_URL],
    # postgres-exporter needs up to ~6 s to report pg_up 0 for a stopped
    # Postgres (Docker's DNS does not answer for a stopped container's name
    # on an internal network until its lookup times out).
    "scrape_interval": "10s",
    "scrape_timeout": "8s",
    "evaluation_interval": "5s",
    "group_wait": "1s",
    "group_interval": "5s",
    "repeat_interval_critical": "1h",
    "repeat_interval_warning": "1h",
    "resolve_timeout": "1m",
    "alerts": {
        name: {"duration": "15s"}
        for name in ("target_down", "postgres_down", "object_store_down", "vector_store_down", "edge_down",
                     "wal_archive_failing")
    },
}

