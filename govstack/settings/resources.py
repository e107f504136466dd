"""``govstack.resources``: Compose `deploy.resources.limits` per service."""

from __future__ import annotations

from pydantic import Field

from govstack.settings.base import Section


class Resources(Section):
    """Compose `deploy.resources.limits` for one service."""

    # None: derived from the host at deploy time (Postgres only, see
    # PostgresSettings.memory_share).
    memory_mb: int | None = Field(None, gt=16)
    cpus: float = Field(gt=0)
    # Processes and threads (CIS Docker 5.28: a fork bomb stops at the
    # container). None: derived (Postgres only: a process per connection,
    # StackPlan.postgres_pids).
    pids: int | None = Field(None, ge=16)


def default_resources() -> dict[str, Resources]:
    # Sized for the 2-core reference host; the sum may exceed the host because
    # limits are ceilings, not reservations.
    #
    # pids: 4x the peak measured on the reference host (bench/container_pids.py
    # over the app, backup and ingest/search workloads, and 80 concurrent
    # requests to the API), rounded up to 64, and never below 128. Go
    # (GOMAXPROCS), tokio, onnxruntime and nginx (worker_processes auto) start
    # a thread or process per core, so a bigger host needs the headroom.
    # Peaks: app 49 (anyio's 40-thread pool full), chroma 18, backup 18,
    # worker 17, seaweedfs 16, alertmanager 15, Prometheus and the exporters
    # 14, nginx 9; Grafana (upstream lane, no registry here) not measured.
    # Postgres: derived, a process per connection (StackPlan.postgres_pids).
    return {
        "postgres": Resources(memory_mb=None, cpus=1.5),
        "seaweedfs": Resources(memory_mb=1024, cpus=1.0, pids=128),
        "chroma": Resources(memory_mb=1536, cpus=1.0, pids=128),
        "nginx": Resources(memory_mb=256, cpus=1.0, pids=128),
        "app": Resources(memory_mb=1536, cpus=1.5, pids=256),
        "worker": Resources(memory_mb=1536, cpus=1.0, pids=128),
        # Measured ~70 MB idle; OpenDP's 275 MB library is mapped, little of it is touched.
        "analytics": Resources(memory_mb=512, cpus=0.5, pids=128),
        # pg_dump, restic and the Python job: RSS peaked at 250 MB backing up 1 GB of objects.
        "backup": Resources(memory_mb=768, cpus=1.0, pids=128),
        # pgBackRest's base backups and verify (process_max workers, zstd).
        "pgbackrest": Resources(memory_mb=512, cpus=1.0, pids=128),
        # Monitoring (measured use 6-50 MB each; Prometheus grows with series).
        "prometheus": Resources(memory_mb=768, cpus=1.0, pids=128),
        "alertmanager": Resources(memory_mb=128, cpus=0.25, pids=128),
        "node_exporter": Resources(memory_mb=64, cpus=0.25, pids=128),
        "postgres_exporter": Resources(memory_mb=64, cpus=0.25, pids=128),
        "nginx_exporter": Resources(memory_mb=32, cpus=0.1, pids=128),
        "blackbox_exporter": Resources(memory_mb=64, cpus=0.25, pids=128),
        "grafana": Resources(memory_mb=512, cpus=0.5, pids=128),
        # rsyslog: a main thread, one per input/action queue; the entrypoint shell and its sleep.
        "rsyslog": Resources(memory_mb=128, cpus=0.25, pids=128),
    }
