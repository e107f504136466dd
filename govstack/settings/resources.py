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


def default_resources() -> dict[str, Resources]:
    # Sized for the 2-core reference host; the sum may exceed the host because
    # limits are ceilings, not reservations.
    return {
        "postgres": Resources(memory_mb=None, cpus=1.5),
        "seaweedfs": Resources(memory_mb=1024, cpus=1.0),
        "chroma": Resources(memory_mb=1536, cpus=1.0),
        "nginx": Resources(memory_mb=256, cpus=1.0),
        "app": Resources(memory_mb=1536, cpus=1.5),
        "worker": Resources(memory_mb=1536, cpus=1.0),
        # pg_dump, restic and the Python job: RSS peaked at 250 MB backing up 1 GB of objects.
        "backup": Resources(memory_mb=768, cpus=1.0),
        # Monitoring (measured use 6-50 MB each; Prometheus grows with series).
        "prometheus": Resources(memory_mb=768, cpus=1.0),
        "alertmanager": Resources(memory_mb=128, cpus=0.25),
        "node_exporter": Resources(memory_mb=64, cpus=0.25),
        "postgres_exporter": Resources(memory_mb=64, cpus=0.25),
        "nginx_exporter": Resources(memory_mb=32, cpus=0.1),
        "blackbox_exporter": Resources(memory_mb=64, cpus=0.25),
        "grafana": Resources(memory_mb=512, cpus=0.5),
    }
