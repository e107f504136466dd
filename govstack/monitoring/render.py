"""The files the monitoring tier gets, rendered from a StackPlan only:

    render_prometheus_config / render_rule_files / render_alertmanager_config /
    render_blackbox_config / render_app_targets / render_grafana_files
    -> monitoring_files(plan): host path -> content

Prometheus scrapes every service by its Docker DNS name on the internal
``data`` network (split inventories: by the other hosts' private addresses);
Alertmanager routes by severity to the receivers in settings; in the upstream
lane Grafana shows provisioned dashboards. Rule and promtool-test templates
live in ``monitoring/`` (govstack/templating.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from govstack import catalog, templating
from govstack.monitoring.catalog import BACKUP_METRICS, MONITOR_ROLE, PORTS
from govstack.plan import StackPlan
from govstack.roles import Member
from govstack.settings import MonitoringSettings
from govstack.settings.cron import max_gap_seconds
from govstack.templating import MANAGED_BANNER, REPO_ROOT

MONITORING_DIR = REPO_ROOT / "monitoring"
RULES_DIR = MONITORING_DIR / "rules"
RULE_TESTS_DIR = MONITORING_DIR / "tests"
POSTGRES_EXPORTER_QUERIES = "monitoring/postgres-exporter/queries.yaml.j2"
DASHBOARDS_DIR = MONITORING_DIR / "dashboards"


def _monitoring(plan: StackPlan, monitoring: MonitoringSettings | None) -> MonitoringSettings:
    """The plan's section, or another one (the tests render variants of it)."""
    return monitoring if monitoring is not None else plan.settings.monitoring


def base_backup_stale_hours(plan: StackPlan, monitoring: MonitoringSettings) -> float:
    """BaseBackupStale's limit: the setting, or the longest gap between two base
    backups of the pgBackRest schedules plus two hours for the backup itself."""
    threshold = monitoring.alerts.base_backup_stale.threshold
    if threshold is not None:
        return threshold
    pitr = plan.settings.backup.pitr
    return max_gap_seconds(pitr.full_schedule, pitr.diff_schedule) / 3600 + 2


def _context(plan: StackPlan, monitoring: MonitoringSettings) -> dict[str, Any]:
    def runbook(alert: str) -> str:
        return f"{monitoring.runbook_base_url}/alerts.md#{alert.lower()}"

    return {
        "s": plan.settings,
        "plan": plan,
        "m": monitoring,
        "a": monitoring.alerts,
        "ports": PORTS,
        "runbook": runbook,
        "seaweedfs": _has_seaweedfs(plan),
        "managed_banner": MANAGED_BANNER,
        "backup_metrics": BACKUP_METRICS,
        "monitor_role": MONITOR_ROLE,
        "pitr": plan.settings.pitr_enabled,
        "archive_timeout_s": plan.settings.backup.pitr.archive_timeout_s,
        "base_backup_stale_hours": base_backup_stale_hours(plan, monitoring),
    }


# The scrape jobs prometheus.yml.j2 writes out itself, each with why it is
# there; every other job of the service catalog follows them, from its record.
TEMPLATE_JOBS = ("prometheus", "alertmanager", "blackbox", "postgres", "node", "nginx", "seaweedfs", "s3",
                 "chroma", "edge-tls")


@dataclass(frozen=True)
class ScrapeJob:
    """A static scrape job of the catalog: what Prometheus on this host scrapes
    (``module``: probes through the blackbox exporter)."""

    name: str
    groups: list[dict[str, Any]]
    metrics_path: str = "/metrics"
    module: str | None = None


def scrape_jobs(plan: StackPlan) -> dict[str, ScrapeJob]:
    """Job -> what Prometheus on this host scrapes or probes, for every catalog
    service with a metrics job or a probe (the app colors are file_sd lists).

    One host: Docker DNS names on the data network. Split inventory: a
    service whose metrics are published, or that is probed, on every host
    that runs it: by name on this host, by private address on another,
    labelled with the host's name.
    """
    s = plan.settings

    def group(target: str, component: str, member: Member | None = None) -> dict[str, Any]:
        labels = {"component": component}
        if member is not None:
            labels["host"] = member.name
        return {"targets": [target], "labels": labels}

    def on(svc: catalog.Service, component: str, local: str, remote: Callable[[str], str]) -> list[dict[str, Any]]:
        if not plan.split:
            return [group(local, component)]
        return [group(local if plan.is_this_host(m) else remote(m.address), component, m)
                for m in plan.members_running(svc)]

    jobs: dict[str, ScrapeJob] = {}
    for svc in catalog.stack_services(s):
        metrics = svc.metrics
        if metrics is not None and metrics.job is not None:
            port = metrics.port
            if metrics.published:
                groups = on(svc, metrics.component, f"{svc.name}:{port}",
                            lambda address, port=port: f"{address}:{port}")
            else:
                groups = [group(f"{svc.name}:{port}", metrics.component)]
            jobs[metrics.job] = ScrapeJob(metrics.job, groups, metrics.path)
        for probe in svc.probes:
            jobs[probe.job] = _probe_job(plan, svc, probe, on)
    return dict(sorted(jobs.items(), key=lambda item: _job_order(item[0])))


def _job_order(name: str) -> int:
    return TEMPLATE_JOBS.index(name) if name in TEMPLATE_JOBS else len(TEMPLATE_JOBS)


def _probe_job(plan: StackPlan, svc: catalog.Service, probe: catalog.Probe, on) -> ScrapeJob:
    local_port = remote_port = svc.ports[probe.port]
    if svc.name == "nginx":
        # nginx's in-stack port (not the PROXY-protocol one); the edge hosts
        # publish it on edge.bind_address (default: every address).
        local_port = plan.edge_in_stack_port(probe.port)
        remote_port = getattr(plan.settings.edge, f"{probe.port}_port")
    groups = on(svc, probe.component, probe.url.format(host=svc.name, port=local_port),
                lambda address: probe.url.format(host=address, port=remote_port))
    return ScrapeJob(probe.job, groups, "/probe", probe.module)


def scrape_targets(plan: StackPlan) -> dict[str, list[dict[str, Any]]]:
    """Job -> static_configs groups (``scrape_jobs``), as prometheus.yml.j2 reads them."""
    return {name: job.groups for name, job in scrape_jobs(plan).items()}


def _has_seaweedfs(plan: StackPlan) -> bool:
    return plan.settings.object_store.kind == "seaweedfs"


def _render(template: str, plan: StackPlan, monitoring: MonitoringSettings, **extra: Any) -> str:
    return templating.render(template, {**_context(plan, monitoring), **extra})


def rule_templates() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml.j2"))


def rule_test_templates() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.test.yml.j2"))


def _plain_name(path: Path) -> str:
    return path.name.removesuffix(".j2")


def render_rule_files(plan: StackPlan, monitoring: MonitoringSettings | None = None) -> dict[str, str]:
    """File name -> content of every alert rule file (for /etc/prometheus/rules/)."""
    m = _monitoring(plan, monitoring)
    return {
        _plain_name(path): _render(path.relative_to(REPO_ROOT).as_posix(), plan, m) for path in rule_templates()
    }


def render_rule_tests(plan: StackPlan, monitoring: MonitoringSettings | None = None) -> dict[str, str]:
    """File name -> content of the promtool unit tests, for the same settings as the rules."""
    m = _monitoring(plan, monitoring)
    return {
        _plain_name(path): _render(path.relative_to(REPO_ROOT).as_posix(), plan, m)
        for path in rule_test_templates()
    }


def render_prometheus_config(plan: StackPlan, monitoring: MonitoringSettings | None = None) -> str:
    jobs = scrape_jobs(plan)
    return _render("prometheus/prometheus.yml.j2", plan, _monitoring(plan, monitoring),
                   jobs={name: job.groups for name, job in jobs.items()},
                   more_jobs=[job for name, job in jobs.items() if name not in TEMPLATE_JOBS])


def render_postgres_exporter_queries(plan: StackPlan, monitoring: MonitoringSettings | None = None) -> str:
    return _render(POSTGRES_EXPORTER_QUERIES, plan, _monitoring(plan, monitoring))


def render_blackbox_config(plan: StackPlan, monitoring: MonitoringSettings | None = None) -> str:
    return _render("prometheus/blackbox.yml.j2", plan, _monitoring(plan, monitoring))


def render_alertmanager_config(plan: StackPlan, monitoring: MonitoringSettings | None = None) -> str:
    return _render("alertmanager/alertmanager.yml.j2", plan, _monitoring(plan, monitoring))


def render_app_targets(colors: Sequence[str] = ("blue",), serving: str | None = "blue") -> dict[str, str]:
    """file_sd target files for the app colors that should be running.

    The blue/green deploy rewrites these when it starts, stops or switches a
    color (Prometheus re-reads them without a restart): a color listed here
    and down is an alert; a color not listed is not scraped. ``serving`` marks
    the color nginx routes to (label ``serving="true"``), which the dashboards
    and ``govstack status`` read from ``govstack_app_info``.
    """
    for color in colors:
        if color not in ("blue", "green"):
            raise ValueError(f"unknown color {color!r}")
    if serving is not None and serving not in colors:
        raise ValueError(f"serving color {serving!r} is not among the running colors {list(colors)}")

    def targets(address: Callable[[str], str]) -> str:
        groups = [
            {"targets": [address(color)], "labels": {"color": color, "serving": str(color == serving).lower()}}
            for color in colors
        ]
        return json.dumps(groups, indent=2) + "\n"

    # The API, worker and analytics network aliases of a color (templates/compose/app.yml.j2);
    # Prometheus scrapes analytics.json only when analytics is enabled.
    return {
        "app.json": targets(lambda color: f"{StackPlan.app_alias(color)}:{PORTS['app']}"),
        "worker.json": targets(lambda color: f"{StackPlan.app_alias(color)}-worker:{PORTS['worker_metrics']}"),
        "analytics.json": targets(lambda color: f"{StackPlan.analytics_alias(color)}:{PORTS['analytics']}"),
    }


def render_app_target_files(plan: StackPlan, colors: Sequence[str], serving: str | None) -> dict[str, str]:
    """Prometheus file_sd lists of the running app colors: on one host the
    colors' network aliases (``render_app_targets``); in a split inventory
    each color's API, worker and analytics metrics on every app host, by private address."""
    if not plan.split:
        return render_app_targets(colors, serving)

    def targets(port: Callable[[str], int]) -> str:
        groups = [
            {"targets": [f"{address}:{port(color)}" for address in plan.topology.app_addresses],
             "labels": {"color": color, "serving": str(color == serving).lower()}}
            for color in colors
        ]
        return json.dumps(groups, indent=2) + "\n"

    return {"app.json": targets(plan.app_host_port), "worker.json": targets(plan.worker_metrics_host_port),
            "analytics.json": targets(plan.analytics_host_port)}


def dashboard_files() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def render_grafana_files(plan: StackPlan, monitoring: MonitoringSettings | None = None) -> dict[str, str]:
    """Relative path (under ConfigPaths.grafana_dir) -> content: provisioning + dashboards."""
    m = _monitoring(plan, monitoring)
    files = {
        "provisioning/datasources/prometheus.yml": _render("monitoring/grafana/datasources.yml.j2", plan, m),
        "provisioning/dashboards/govstack.yml": _render("monitoring/grafana/dashboards.yml.j2", plan, m),
    }
    files.update({f"dashboards/{name}": text for name, text in dashboard_files().items()})
    return files


def monitoring_files(
    plan: StackPlan,
    monitoring: MonitoringSettings | None = None,
    colors: Sequence[str] | None = None,
    serving: str | None = None,
) -> dict[str, str]:
    """Host path -> content of every rendered monitoring file (cf. render.rendered_files).

    ``colors``/``serving`` default to the plan's serving release alone; the
    blue/green deploy passes both colors while a new one starts.
    """
    m = _monitoring(plan, monitoring)
    conf = plan.settings.paths.config
    if colors is None:
        colors = (plan.release.color,)
        serving = plan.release.color
    files = {
        conf.prometheus_config: render_prometheus_config(plan, m),
        conf.blackbox_config: render_blackbox_config(plan, m),
        conf.alertmanager_config: render_alertmanager_config(plan, m),
        conf.postgres_exporter_queries: render_postgres_exporter_queries(plan, m),
    }
    files.update({f"{conf.prometheus_rules_dir}/{n}": t for n, t in render_rule_files(plan, m).items()})
    files.update({f"{conf.prometheus_targets_dir}/{n}": t
                  for n, t in render_app_target_files(plan, colors, serving).items()})
    if plan.settings.images.lane == "upstream" and m.grafana:
        files.update({f"{conf.grafana_dir}/{n}": t for n, t in render_grafana_files(plan, m).items()})
    return files


# --- dashboards -----------------------------------------------------------------------------

# Grafana's built-in interval variables, replaced by a fixed window wherever a
# dashboard query is run outside Grafana (promtool, the live Prometheus API).
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def dashboard_queries(text: str) -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana variables substituted) for one dashboard JSON."""
    board = json.loads(text)
    found: list[tuple[str, str]] = []

    def walk(panels: Iterable[dict]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if expr:
                    for var, value in GRAFANA_INTERVALS.items():
                        expr = expr.replace(var, value)
                    found.append((panel.get("title", "?"), expr))

    walk(board.get("panels", []))
    return found


def dashboard_queries_as_rules(dashboards: dict[str, str]) -> str:
    """One recording-rule group per dashboard, so that `promtool check rules`
    parses every panel query (promtool 2.42 has no query-parse command)."""
    groups = []
    for name, text in sorted(dashboards.items()):
        slug = re.sub(r"[^a-z0-9]+", "_", name.removesuffix(".json").lower())
        rules = [
            {"record": f"dashboard:{slug}:panel_{i}", "expr": expr}
            for i, (_, expr) in enumerate(dashboard_queries(text))
        ]
        groups.append({"name": f"dashboard-{slug}", "rules": rules})
    return yaml.safe_dump({"groups": groups}, sort_keys=False)
