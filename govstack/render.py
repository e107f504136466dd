"""Render the files a host gets, from a StackPlan only."""

from __future__ import annotations

import hashlib
import json

from govstack import templating
from govstack.catalog import SERVICES, Service
from govstack.monitoring.catalog import MONITOR_ROLE, PORTS
from govstack.monitoring.render import monitoring_files
from govstack.plan import StackPlan
from govstack.templating import MANAGED_BANNER, TEMPLATES_DIR

# The profile Docker generates and loads itself wherever AppArmor is enabled.
APPARMOR_PROFILE = "docker-default"


def _hardening(plan: StackPlan):
    """The block every service gets: restart policy, limits, least privilege,
    log rotation (the CIS Docker Benchmark's runtime section, README)."""

    def block(service: str, indent: int = 4) -> str:
        svc = SERVICES[service]
        res = plan.resources(svc.resources_key)
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
        # A service that forks children it must reap gets an init (the
        # backup block says so itself, beside why).
        if svc.init and service != "backup":
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


def service_template(svc: Service) -> str:
    """A service's compose block: its own template, or the one the record alone fills."""
    own = f"compose/services/{svc.name}.yml.j2"
    return own if (TEMPLATES_DIR / own).is_file() else "compose/services/default.yml.j2"


def render(template: str, plan: StackPlan, **extra) -> str:
    """A config template with the plan's context (templating.render)."""
    context = {
        "s": plan.settings,
        "plan": plan,
        "managed_banner": MANAGED_BANNER,
        "hardening": _hardening(plan),
        "service_template": service_template,
        **extra,
    }
    return templating.render(template, context)


def render_compose(plan: StackPlan, config_files: dict[str, str] | None = None) -> str:
    """The host's main Compose file; ``config_files``: the host's other files,
    already rendered (``rendered_files``), so each file is rendered once."""
    files = _config_files(plan) if config_files is None else config_files
    conf = plan.settings.paths.config
    # Compose hashes the service definition, not the files it mounts: a label
    # carrying the digest of postgresql.conf makes a tuning change recreate
    # Postgres (it needs a restart for most of them anyway). nginx reloads
    # its config in place instead (deploys/stack.py). Prometheus, Alertmanager
    # and the blackbox exporter are recreated when their config changes; the
    # app target lists (file_sd) are re-read live.
    digests = {}
    if conf.postgres_conf in files:
        digests["postgres"] = _digest(files[conf.postgres_conf])
    if conf.prometheus_config in files:
        digests["prometheus"] = _digest(
            "".join(text for path, text in sorted(files.items()) if path.startswith(f"{conf.prometheus_dir}/")
                    and not path.startswith(f"{conf.prometheus_targets_dir}/"))
        )
        digests["alertmanager"] = _digest(files[conf.alertmanager_config])
        digests["blackbox"] = _digest(files[conf.blackbox_config])
        digests["postgres_exporter"] = _digest(files[conf.postgres_exporter_queries])
    if conf.rsyslog_conf in files:
        digests["rsyslog"] = _digest(files[conf.rsyslog_conf])
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


def render_rsyslog_conf(plan: StackPlan) -> str:
    return render("rsyslog/rsyslog.conf.j2", plan)


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
    return plan.settings.paths.config.nginx_conf


def nginx_candidate_path(plan: StackPlan) -> str:
    return plan.settings.paths.config.nginx_candidate


def _config_files(plan: StackPlan) -> dict[str, str]:
    """Host path -> content of the host's config files (its roles' part; all-in-one: every role)."""
    s = plan.settings
    files: dict[str, str] = {}
    if plan.has_role("monitoring") and s.monitoring.enabled:
        files.update(monitoring_files(plan))
    if plan.has_role("data"):
        files[s.paths.config.postgres_conf] = render_postgres_conf(plan)
    if plan.has_role("edge"):
        # Installed by nginx_config_applied only after `nginx -t` accepts it.
        files[nginx_candidate_path(plan)] = render_nginx_conf(plan)
        files.update(edge_script_files(plan))
    if "rsyslog" in plan.services:
        files[s.paths.config.rsyslog_conf] = render_rsyslog_conf(plan)
    return files


def rendered_files(plan: StackPlan) -> dict[str, str]:
    """Host path -> content of every file of the stack this host gets, each rendered once."""
    s = plan.settings
    release = plan.release
    files = _config_files(plan)
    if plan.services:
        files[s.compose_file] = render_compose(plan, files)
    if plan.has_role("app"):
        files[plan.app_compose_file(release.color)] = render_app_compose(plan, release.color, release.version)
    return files


def edge_script_files(plan: StackPlan) -> dict[str, str]:
    """Upstream lane: the njs module nginx.conf imports (the offline image
    hashes API keys with set-misc instead)."""
    if plan.settings.images.lane != "upstream":
        return {}
    script = (TEMPLATES_DIR / "nginx" / "api_key.js").read_text()
    return {plan.settings.paths.config.nginx_api_key_script: script}
