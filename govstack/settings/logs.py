"""``govstack.logs``: container logs kept on the host for auditors."""

from __future__ import annotations

from pydantic import Field

from govstack.settings.base import Section


class LogsSettings(Section):
    """Container logs (JSON) kept as compressed daily files per service under
    ``<stack_root>/logs``, written by rsyslog from the engine's json-file logs
    (which ``engine.log_max_size`` x ``engine.log_max_file`` still rotate, so a
    stopped shipper never fills a disk)."""

    enabled: bool = Field(True, description="keep container logs as daily files under <stack_root>/logs")
    retention_days: int = Field(
        90, ge=1, le=3650, description="daily log files older than this many days are deleted"
    )
    # Where the engine keeps each container's json-file log (its data-root).
    docker_containers_dir: str = Field(
        "/var/lib/docker/containers", pattern=r"^/[A-Za-z0-9_./-]+$",
        description="the engine's containers directory (<data-root>/containers), read-only to rsyslog",
    )
