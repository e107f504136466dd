"""Render the files a host gets, from a StackPlan only."""

from __future__ import annotations

import hashlib
import json

from govstack.monitoring.catalog import MONITOR_ROLE, PORTS
from govstack.monitoring.render import monitoring_files, render_app_targets
from govstack.plan import StackPlan
from govstack.templating import MANAGED_BANNER, TEMPLATES_DIR, environment

# The profile Docker generates and loads itself wherever AppArmor is enabled.
APPARMOR_PROFILE = "docker-default"

# Services that fork children they must reap (Python servers, weed) get an init.
_NEEDS_INIT = {"seaweedfs", "chroma", "app", "worker", "analytics"}


def _hardening(plan: StackPlan):
    """The block every service gets: restart policy, limits, least privilege,
    log rotation (the CIS Docker Benchmark's runtime section, README)."""

    def block(service: str, indent: int = 4) -> str:
        # Resource keys are identifiers; Compose service names may have dashes.
        res = plan.resources(service.replace("-", "_"))
        pad = " " * indent
        lines = [
            "restart: unless-stopped",
            f"security_opt: {json.dumps(security_options(plan))}",
            "cap_drop: [ALL]",
            "logging: *logging",
            "deploy:",
            "  resources:",
            "    limits:",
            f"      memory: {res.memory_mb}m",
            f"      cpus: \"{res.cpus}\"",
            f"      pids: {res.pids}",
        ]
        if service in _NEEDS_INIT:
            lines.insert(1, "init: true")
        return "\n".join(pad + line for line in lines)

    return block


def security_options(plan: StackPlan) -> list[str]:
    """Compose security_opt of every container: no privilege gain through
    setuid binaries, and the engine's AppArmor profile where the host has
    AppArmor (naming it elsewhere would fail every container start)."""
    options = ["no-new-privileges:true"]
    if plan.apparmor:
        options.append(f"apparmor={APPARMOR_PROFILE}")
    return options


def render(template: str, plan: StackPlan, **extra) -> str:
    env = environment()
    context = {
        "s": plan.settings,
        "plan": plan,
        "managed_banner": MANAGED_BANNER,
        "hardening": _hardening(plan),
        **extra,
    }
    return env.get_template(template).render(context)


def render_compose(plan: StackPlan) -> str:
    # Compose hashes the service definition, not the files it mounts: a label
    # carrying the digest of postgresql.conf makes a tuning change recreate
    # Postgres (it needs a restart for most of them anyway). nginx reloads
    # its config in place instead (deploys/stack.py).
    digests = {"postgres": _digest(render_postgres_conf(plan))}
    if plan.settings.monitoring.enabled:
        # Prometheus, Alertmanager and the blackbox exporter are recreated when
        # their config changes; the app target lists (file_sd) are re-read live.
        conf = plan.settings.config_dir
        files = monitoring_files(plan)
        digests["prometheus"] = _digest(
            "".join(text for path, text in sorted(files.items()) if path.startswith(f"{conf}/prometheus/")
                    and "/targets/" not in path)
        )
        digests["alertmanager"] = _digest(files[f"{conf}/alertmanager/alertmanager.yml"])
        digests["blackbox"] = _digest(files[f"{conf}/blackbox/config.yml"])
    return render("docker-compose.yml.j2", plan, config_digests=digests, monitor_role=MONITOR_ROLE)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_app_compose(plan: StackPlan, color: str, version: str) -> str:
    return render("compose/app.yml.j2", plan, color=color, version=version,
                  worker_metrics_port=PORTS["worker_metrics"])


def render_postgres_conf(plan: StackPlan) -> str:
    return render("postgres/postgresql.conf.j2", plan)


def render_nginx_conf(plan: StackPlan) -> str:
    return render("nginx/nginx.conf.j2", plan)


def render_daemon_json(plan: StackPlan) -> str:
    engine = plan.settings.engine
    config = {
        "live-restore": engine.live_restore,
        "log-driver": "json-file",
        "log-opts": {"max-file": str(engine.log_max_file), "max-size": engine.log_max_size},
        "storage-driver": engine.storage_driver,
    }
    if engine.cgroup_parent:
        # A host that is itself a container: keep its containers' cgroups
        # under its own, so they go away with it.
        config["cgroup-parent"] = engine.cgroup_parent
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def nginx_live_path(plan: StackPlan) -> str:
    return f"{plan.settings.config_dir}/nginx/nginx.conf"


def nginx_candidate_path(plan: StackPlan) -> str:
    return f"{plan.settings.config_dir}/nginx/nginx.conf.candidate"


def rendered_files(plan: StackPlan) -> dict[str, str]:
    """Host path -> content of every rendered file of the stack."""
    s = plan.settings
    release = plan.release
    if plan.split:
        return _rendered_role_files(plan)
    monitoring = monitoring_files(plan) if plan.settings.monitoring.enabled else {}
    return {
        **monitoring,
        s.compose_file: render_compose(plan),
        plan.app_compose_file(release.color): render_app_compose(plan, release.color, release.version),
        f"{s.config_dir}/postgres/postgresql.conf": render_postgres_conf(plan),
        # Installed by nginx_config_applied only after `nginx -t` accepts it.
        nginx_candidate_path(plan): render_nginx_conf(plan),
        **edge_script_files(plan),
    }


def _rendered_role_files(plan: StackPlan) -> dict[str, str]:
    """A host of a split inventory: only its roles' files."""
    s = plan.settings
    release = plan.release
    files: dict[str, str] = {}
    if plan.services:
        files[s.compose_file] = render_compose(plan)
    if plan.has_role("monitoring") and s.monitoring.enabled:
        files.update(monitoring_files(plan))
        files.update({f"{s.config_dir}/prometheus/targets/{name}": text for name, text in
                      render_app_target_files(plan, (release.color,), release.color).items()})
    if plan.has_role("app"):
        files[plan.app_compose_file(release.color)] = render_app_compose(plan, release.color, release.version)
    if plan.has_role("data"):
        files[f"{s.config_dir}/postgres/postgresql.conf"] = render_postgres_conf(plan)
    if plan.has_role("edge"):
        files[nginx_candidate_path(plan)] = render_nginx_conf(plan)
        files.update(edge_script_files(plan))
    return files


def edge_script_files(plan: StackPlan) -> dict[str, str]:
    """Upstream lane: the njs module nginx.conf imports (the offline image
    hashes API keys with set-misc instead)."""
    if plan.settings.images.lane != "upstream":
        return {}
    script = (TEMPLATES_DIR / "nginx" / "api_key.js").read_text()
    return {f"{plan.settings.config_dir}/nginx/api_key.js": script}


def render_app_target_files(plan: StackPlan, colors: tuple[str, ...], serving: str) -> dict[str, str]:
    """Prometheus file_sd lists of the running app colors (cf. govstack.monitoring.render.render_app_targets).

    Split inventory: each color's API, worker and analytics metrics on every
    app host, by private address.
    """
    if not plan.split:
        return render_app_targets(colors, serving)

    def targets(port) -> str:
        groups = [
            {"targets": [f"{address}:{port(color)}" for address in plan.topology.app_addresses],
             "labels": {"color": color, "serving": str(color == serving).lower()}}
            for color in colors
        ]
        return json.dumps(groups, indent=2) + "\n"

    return {"app.json": targets(plan.app_host_port), "worker.json": targets(plan.worker_metrics_host_port),
            "analytics.json": targets(plan.analytics_host_port)}
