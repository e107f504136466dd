"""The monitoring tier's fixed facts beyond its services' records (those are
in the service catalog, govstack/catalog.py): the exporter's database role and
the backup job's metrics. Data only: the renders and the deploys read it."""

from __future__ import annotations

from govstack.catalog import metrics_ports

# Who scrapes what, by Docker DNS name on the data network: the service
# catalog's metrics ports (``<service>`` or ``<service>_metrics``).
PORTS = metrics_ports()

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

