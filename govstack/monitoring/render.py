"""The files the monitoring tier gets, rendered from a StackPlan only:

    render_prometheus_config / render_rule_files / render_alertmanager_config /
    render_blackbox_config / render_app_targets / render_grafana_files
    -> monitoring_files(plan): host path -> content

Prometheus scrapes every service by its Docker DNS name on the internal
``data`` network (split inventories: by the other hosts' private addresses);
Alertmanager routes by severity to the receivers in settings; in the upstream
lane Grafana shows provisioned dashboards. Rule and promtool-test templates
live in ``monitoring/`` and use ``[[ ]]`` for values (govstack/templating.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment

from govstack.monitoring.catalog import BACKUP_METRICS, MONITOR_ROLE, PORTS
from govstack.plan import INTERNAL_PORTS, StackPlan
from govstack.roles import Member
from govstack.settings import MonitoringSettings
from govstack.templating import MANAGED_BANNER, REPO_ROOT, environment

MONITORING_DIR = REPO_ROOT / "monitoring"
RULES_DIR = MONITORING_DIR / "rules"
RULE_TESTS_DIR = MONITORING_DIR / "tests"
DASHBOARDS_DIR = MONITORING_DIR / "dashboards"


def _monitoring(plan: StackPlan, monitoring: MonitoringSettings | None) -> MonitoringSettings:
    """The plan's section, or another one (the tests render variants of it)."""
    return monitoring if monitoring is not None else plan.settings.monitoring


def _number(value: float) -> str:
    """10.0 -> "10", 0.5 -> "0.5": thresholds as people write them."""
    return format(value, "g")


def _environment() -> Environment:
    env = environment(brackets=True)
    env.filters["g"] = _number
    env.filters["pct"] = lambda value: _number(round(value * 100, 6)) + "%"
    return env


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
    }


def scrape_targets(plan: StackPlan) -> dict[str, list[dict[str, Any]]]:
    """Job -> static_configs groups of what Prometheus on this host scrapes or
    probes beyond the app colors (those are file_sd lists).

    One host: Docker DNS names on the data network. Split inventory: what runs
    on this host by the same names, what runs on another host by that host's
    private address and published port, labelled with the host's name.
    """
    s = plan.settings

    def group(target: str, component: str, member: Member | None = None) -> dict[str, Any]:
        labels = {"component": component}
        if member is not None:
            labels["host"] = member.name
        return {"targets": [target], "labels": labels}

    def on(members: list[Member], component: str, local: str, remote: Callable[[str], str]) -> list[dict[str, Any]]:
        if not plan.split:
            return [group(local, component)]
        return [group(local if plan.is_this_host(m) else remote(m.address), component, m) for m in members]

    topology = plan.topology
    every_host = list(topology.members) if plan.split else []
    edge = topology.with_role("edge") if plan.split else []
    # One data host runs the S3 gateway and Chroma (roles.Topology.data_address).
    data = topology.with_role("data")[:1] if plan.split else []
    s3, chroma, https = INTERNAL_PORTS["seaweedfs_s3"], INTERNAL_PORTS["chroma"], plan.edge_in_stack_port("https")
    jobs = {
        "node": on(every_host, "host", f"node-exporter:{PORTS['node-exporter']}",
                   lambda address: f"{address}:{PORTS['node-exporter']}"),
        "nginx": on(edge, "edge", f"nginx-exporter:{PORTS['nginx-exporter']}",
                    lambda address: f"{address}:{PORTS['nginx-exporter']}"),
        "chroma": on(data, "vector-store", f"http://chroma:{chroma}/api/v2/heartbeat",
                     lambda address: f"http://{address}:{chroma}/api/v2/heartbeat"),
        # The edge hosts publish HTTPS on edge.bind_address (default: every address).
        "edge-tls": on(edge, "edge", f"https://nginx:{https}/health",
                       lambda address: f"https://{address}:{s.edge.https_port}/health"),
    }
    if _has_seaweedfs(plan):
        jobs["seaweedfs"] = on(data, "object-store", f"seaweedfs:{PORTS['seaweedfs_metrics']}",
                               lambda address: f"{address}:{PORTS['seaweedfs_metrics']}")
        jobs["s3"] = on(data, "object-store", f"http://seaweedfs:{s3}/healthz",
                        lambda address: f"http://{address}:{s3}/healthz")
    return jobs


def _has_seaweedfs(plan: StackPlan) -> bool:
    return plan.settings.object_store.kind == "seaweedfs"


def _render(template: str, plan: StackPlan, monitoring: MonitoringSettings, **extra: Any) -> str:
    return _environment().get_template(template).render({**_context(plan, monitoring), **extra})


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
    return _render("prometheus/prometheus.yml.j2", plan, _monitoring(plan, monitoring), jobs=scrape_targets(plan))


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


def dashboard_files() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def render_grafana_files(plan: StackPlan, monitoring: MonitoringSettings | None = None) -> dict[str, str]:
    """Relative path (under <config_dir>/grafana) -> content: provisioning + dashboards."""
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
    conf = plan.settings.config_dir
    if colors is None:
        colors = (plan.release.color,)
        serving = plan.release.color
    files = {
        f"{conf}/prometheus/prometheus.yml": render_prometheus_config(plan, m),
        f"{conf}/blackbox/config.yml": render_blackbox_config(plan, m),
        f"{conf}/alertmanager/alertmanager.yml": render_alertmanager_config(plan, m),
    }
    files.update({f"{conf}/prometheus/rules/{n}": t for n, t in render_rule_files(plan, m).items()})
    files.update({f"{conf}/prometheus/targets/{n}": t for n, t in render_app_targets(colors, serving).items()})
    if plan.settings.images.lane == "upstream" and m.grafana:
        files.update({f"{conf}/grafana/{n}": t for n, t in render_grafana_files(plan, m).items()})
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
