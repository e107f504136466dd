"""The monitoring tier's fixed facts: its images per lane, the ports
Prometheus scrapes, the exporter's database role and the backup job's
metrics. Data only: the plan, the renders and the deploys read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from govstack.images import IMAGE_TEMPLATES, OfflineImage, versioned
from govstack.settings import Settings


@dataclass(frozen=True)
class MonitoringImage:
    service: str
    offline_tag: str
    upstream: str

    @property
    def context(self) -> Path:
        # The four exporters share one Dockerfile, parameterised by package.
        if self.service.endswith("-exporter"):
            return IMAGE_TEMPLATES / "debian-exporter"
        return IMAGE_TEMPLATES / self.service

    @property
    def offline(self) -> OfflineImage:
        """What the offline lane builds: a Debian package on the base image."""
        name, version = self.offline_tag.removeprefix("govstack/").split(":")
        if self.service.endswith("-exporter"):
            return versioned(self.service, name, version, self.context, "EXPORTER_VERSION",
                             build_args={"PACKAGE": f"prometheus-{self.service}"})
        return versioned(self.service, name, version, self.context, f"{self.service.upper()}_VERSION")


# Offline: Debian bookworm packages on the debootstrap base. Upstream: pinned
# official images (Prometheus 3.5 is the current LTS; the rules use nothing
# that differs between 2.42 and 3.x). nginx-exporter's upstream image is FROM
# scratch: no shell, so its compose block has no in-container healthcheck.
MONITORING_IMAGES: dict[str, MonitoringImage] = {
    image.service: image
    for image in (
        MonitoringImage("prometheus", "govstack/prometheus:2.42", "prom/prometheus:v3.5.0"),
        MonitoringImage("alertmanager", "govstack/alertmanager:0.25", "prom/alertmanager:v0.28.1"),
        MonitoringImage("node-exporter", "govstack/node-exporter:1.5", "prom/node-exporter:v1.9.1"),
        MonitoringImage(
            "postgres-exporter",
            "govstack/postgres-exporter:0.11",
            "quay.io/prometheuscommunity/postgres-exporter:v0.17.1",
        ),
        MonitoringImage("nginx-exporter", "govstack/nginx-exporter:0.11", "nginx/nginx-prometheus-exporter:1.4.2"),
        MonitoringImage("blackbox-exporter", "govstack/blackbox-exporter:0.23", "prom/blackbox-exporter:v0.27.0"),
    )
}
GRAFANA_IMAGE = "grafana/grafana:12.1.1"

# Who scrapes what, by Docker DNS name on the data network. Port numbers live
# here and nowhere else in the monitoring tier.
PORTS = {
    "prometheus": 9090,
    "alertmanager": 9093,
    "node-exporter": 9100,
    "postgres-exporter": 9187,
    "nginx-exporter": 9113,
    "blackbox-exporter": 9115,
    "seaweedfs_metrics": 9327,
    "app": 8000,
    "analytics": 8000,
    # app/govstack_app/worker.py METRICS_PORT
    "worker_metrics": 9100,
    "grafana": 3000,
}

# The role postgres-exporter connects as (member of pg_monitor) and the secret
# holding its password (generated [A-Za-z0-9]: 0.11 rejects spaces).
MONITOR_ROLE = "govstack_monitor"
MONITOR_SECRET = "postgres_monitor_password"  # noqa: S105 - a secret's name
MONITOR_ROLE_ATTRIBUTES = ("NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "CONNECTION LIMIT 5")
MONITOR_ROLE_GROUPS = ("pg_monitor",)

# What the backup job writes for node-exporter's textfile collector, as
# <stack_root>/data/metrics/backup.prom (write a temp file, then rename).
# Timestamps are Unix seconds; 0 = never. All five are written on every run.
BACKUP_METRICS = {
    "govstack_backup_last_success_timestamp_seconds": "gauge: end of the last successful backup",
    "govstack_backup_last_failure_timestamp_seconds": "gauge: end of the last failed backup run (0 = never)",
    "govstack_backup_last_duration_seconds": "gauge: duration of the last successful backup",
    "govstack_backup_last_size_bytes": "gauge: size of the last successful backup",
    "govstack_backup_failures_total": "counter: failed backup runs since the metrics file was created",
}


def offline_images() -> list[OfflineImage]:
    """The monitoring images the offline lane builds (cf. images.offline_images)."""
    return [
        entry.offline for entry in MONITORING_IMAGES.values()
    ]


def image(settings: Settings, service: str) -> str:
    """Image reference of a monitoring service in the settings' lane."""
    if service == "grafana":
        return GRAFANA_IMAGE
    entry = MONITORING_IMAGES[service]
    return entry.upstream if settings.images.lane == "upstream" else entry.offline_tag
