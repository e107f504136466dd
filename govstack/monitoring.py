"""The monitoring tier: its settings section, its images, and the files it gets.

Prometheus scrapes every service by its Docker DNS name on the internal
``data`` network; Alertmanager routes by severity to the receivers in
settings; in the upstream lane Grafana shows provisioned dashboards. All of
it is rendered from settings by the pure functions below:

    render_prometheus_config / render_rule_files / render_alertmanager_config /
    render_blackbox_config / render_app_targets / render_grafana_files
    -> monitoring_files(plan): host path -> content

Rule and promtool-test templates live in ``monitoring/``; they use ``[[ ]]``
for Jinja values because ``{{ }}`` belongs to Prometheus' own annotation
templates (``{{ $labels.instance }}``), which must reach the host verbatim.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from govstack.settings.monitoring import (  # noqa: F401 - the section, re-exported for its old importers
    TEST_PROFILE,
    TEST_WEBHOOK_URL,
    AlertRule,
    AlertRules,
    Duration,
    EmailReceiver,
    MonitoringSettings,
    duration_seconds,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MONITORING_DIR = REPO_ROOT / "monitoring"
RULES_DIR = MONITORING_DIR / "rules"
RULE_TESTS_DIR = MONITORING_DIR / "tests"
DASHBOARDS_DIR = MONITORING_DIR / "dashboards"
TEMPLATES_DIR = REPO_ROOT / "templates"
IMAGE_TEMPLATES = TEMPLATES_DIR / "images"

# --- images ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class MonitoringImage:
    service: str
    offline_tag: str
    upstream: str

    @property
    def context(self) -> Path:
        # The four exporters share one Dockerfile, parameterised by package.
        if self.service.endswith("-exporter"):
            return IMAGE_TEMPLATES / "debian-exporter"
        return IMAGE_TEMPLATES / self.service

    @property
    def build_args(self) -> dict[str, str]:
        if self.service.endswith("-exporter"):
            return {"PACKAGE": f"prometheus-{self.service}"}
        return {}


# Offline: Debian bookworm packages on the debootstrap base. Upstream: pinned
# official images (Prometheus 3.5 is the current LTS; the rules use nothing
# that differs between 2.42 and 3.x). nginx-exporter's upstream image is FROM
# scratch: no shell, so its compose block has no in-container healthcheck.
MONITORING_IMAGES: dict[str, MonitoringImage] = {
    image.service: image
    for image in (
        MonitoringImage("prometheus", "govstack/prometheus:2.42", "prom/prometheus:v3.5.0"),
        MonitoringImage("alertmanager", "govstack/alertmanager:0.25", "prom/alertmanager:v0.28.1"),
        MonitoringImage("node-exporter", "govstack/node-exporter:1.5", "prom/node-exporter:v1.9.1"),
        MonitoringImage(
            "postgres-exporter",
            "govstack/postgres-exporter:0.11",
            "quay.io/prometheuscommunity/postgres-exporter:v0.17.1",
        ),
        MonitoringImage("nginx-exporter", "govstack/nginx-exporter:0.11", "nginx/nginx-prometheus-exporter:1.4.2"),
        MonitoringImage("blackbox-exporter", "govstack/blackbox-exporter:0.23", "prom/blackbox-exporter:v0.27.0"),
    )
}
GRAFANA_IMAGE = "grafana/grafana:12.1.1"

# Who scrapes what, by Docker DNS name on the data network. Port numbers live
# here and nowhere else in the monitoring tier.
PORTS = {
    "prometheus": 9090,
    "alertmanager": 9093,
    "node-exporter": 9100,
    "postgres-exporter": 9187,
    "nginx-exporter": 9113,
    "blackbox-exporter": 9115,
    "seaweedfs_metrics": 9327,
    "app": 8000,
    # app/govstack_app/worker.py METRICS_PORT
    "worker_metrics": 9100,
    "grafana": 3000,
}

# The role postgres-exporter connects as (member of pg_monitor) and the secret
# holding its password (generated [A-Za-z0-9]: 0.11 rejects spaces).
MONITOR_ROLE = "govstack_monitor"
MONITOR_SECRET = "postgres_monitor_password"  # noqa: S105 - a secret's name

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
TEXTFILE_DIR = "metrics"  # under Settings.data_dir


def monitor_role_sql(password: str) -> str:
    """Idempotent SQL (run as the superuser, fed on stdin, never in argv) that
    creates or updates the exporter's login role in pg_monitor."""
    if not re.fullmatch(r"[A-Za-z0-9]{16,}", password):
        # Generated secrets are [A-Za-z0-9]; anything else would need quoting
        # here and is refused by postgres-exporter 0.11 when it has spaces.
        raise ValueError("the monitor password must be 16+ characters of [A-Za-z0-9]")
    return (
        "DO $$ BEGIN\n"
        f"  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MONITOR_ROLE}') THEN\n"
        f"    CREATE ROLE {MONITOR_ROLE} LOGIN;\n"
        "  END IF;\n"
        "END $$;\n"
        f"ALTER ROLE {MONITOR_ROLE} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE CONNECTION LIMIT 5 "
        f"PASSWORD '{password}';\n"
        f"GRANT pg_monitor TO {MONITOR_ROLE};\n"
    )


def offline_images() -> list[Any]:
    """The monitoring images the offline lane builds (cf. images.offline_images)."""
    from govstack.images import OfflineImage

    return [
        OfflineImage(entry.service, entry.offline_tag, entry.context, build_args=entry.build_args)
        for entry in MONITORING_IMAGES.values()
    ]


def image(settings: Any, service: str) -> str:
    """Image reference of a monitoring service in the settings' lane."""
    if service == "grafana":
        return GRAFANA_IMAGE
    entry = MONITORING_IMAGES[service]
    return entry.upstream if settings.images.lane == "upstream" else entry.offline_tag


# --- rendering ------------------------------------------------------------------------------

def _monitoring(plan: Any, monitoring: MonitoringSettings | None) -> MonitoringSettings:
    if monitoring is not None:
        return monitoring
    # Until Settings carries the section, its defaults apply.
    return getattr(plan.settings, "monitoring", None) or MonitoringSettings()


def _number(value: float) -> str:
    """10.0 -> "10", 0.5 -> "0.5": thresholds as people write them."""
    return format(value, "g")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader([str(REPO_ROOT), str(TEMPLATES_DIR)]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        variable_start_string="[[",
        variable_end_string="]]",
        autoescape=False,  # noqa: S701 - YAML, not HTML
    )
    env.filters["g"] = _number
    env.filters["pct"] = lambda value: _number(round(value * 100, 6)) + "%"
    return env


def _context(plan: Any, monitoring: MonitoringSettings) -> dict[str, Any]:
    from govstack.render import MANAGED_BANNER

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


def scrape_targets(plan: Any) -> dict[str, list[dict[str, Any]]]:
    """Job -> static_configs groups of what Prometheus on this host scrapes or
    probes beyond the app colors (those are file_sd lists).

    One host: Docker DNS names on the data network. Split inventory: what runs
    on this host by the same names, what runs on another host by that host's
    private address and published port, labelled with the host's name.
    """
    from govstack.plan import INTERNAL_PORTS

    s = plan.settings

    def group(target: str, component: str, member: Any = None) -> dict[str, Any]:
        labels = {"component": component}
        if member is not None:
            labels["host"] = member.name
        return {"targets": [target], "labels": labels}

    def on(members: list[Any], component: str, local: str, remote: Any) -> list[dict[str, Any]]:
        if not plan.split:
            return [group(local, component)]
        return [group(local if plan.is_this_host(m) else remote(m.address), component, m) for m in members]

    topology = plan.topology
    every_host = list(topology.members) if plan.split else []
    edge = topology.with_role("edge") if plan.split else []
    # One data host runs the S3 gateway and Chroma (roles.Topology.data_address).
    data = topology.with_role("data")[:1] if plan.split else []
    s3, chroma, https = INTERNAL_PORTS["seaweedfs_s3"], INTERNAL_PORTS["chroma"], INTERNAL_PORTS["nginx_https"]
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


def _has_seaweedfs(plan: Any) -> bool:
    return plan.settings.object_store.kind == "seaweedfs"


def _render(template: str, plan: Any, monitoring: MonitoringSettings, **extra: Any) -> str:
    return _environment().get_template(template).render({**_context(plan, monitoring), **extra})


def rule_templates() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml.j2"))


def rule_test_templates() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.test.yml.j2"))


def _plain_name(path: Path) -> str:
    return path.name.removesuffix(".j2")


def render_rule_files(plan: Any, monitoring: MonitoringSettings | None = None) -> dict[str, str]:
    """File name -> content of every alert rule file (for /etc/prometheus/rules/)."""
    m = _monitoring(plan, monitoring)
    return {
        _plain_name(path): _render(path.relative_to(REPO_ROOT).as_posix(), plan, m) for path in rule_templates()
    }


def render_rule_tests(plan: Any, monitoring: MonitoringSettings | None = None) -> dict[str, str]:
    """File name -> content of the promtool unit tests, for the same settings as the rules."""
    m = _monitoring(plan, monitoring)
    return {
        _plain_name(path): _render(path.relative_to(REPO_ROOT).as_posix(), plan, m)
        for path in rule_test_templates()
    }


def render_prometheus_config(plan: Any, monitoring: MonitoringSettings | None = None) -> str:
    return _render("prometheus/prometheus.yml.j2", plan, _monitoring(plan, monitoring), jobs=scrape_targets(plan))


def render_blackbox_config(plan: Any, monitoring: MonitoringSettings | None = None) -> str:
    return _render("prometheus/blackbox.yml.j2", plan, _monitoring(plan, monitoring))


def render_alertmanager_config(plan: Any, monitoring: MonitoringSettings | None = None) -> str:
    return _render("alertmanager/alertmanager.yml.j2", plan, _monitoring(plan, monitoring))


def render_app_targets(colors: Sequence[str] = ("blue",), serving: str | None = "blue") -> dict[str, str]:
    """file_sd target files for the app colors that should be running.

    The blue/green deploy rewrites these when it starts, stops or switches a
    color (Prometheus re-reads them without a restart): a color listed here
    and down is an alert; a color not listed is not scraped. ``serving`` marks
    the color nginx routes to (label ``serving="true"``), which the dashboards
    and ``govstack status`` read from ``govstack_app_info``.
    """
    from govstack.plan import StackPlan

    for color in colors:
        if color not in ("blue", "green"):
            raise ValueError(f"unknown color {color!r}")
    if serving is not None and serving not in colors:
        raise ValueError(f"serving color {serving!r} is not among the running colors {list(colors)}")

    def targets(address) -> str:
        groups = [
            {"targets": [address(color)], "labels": {"color": color, "serving": str(color == serving).lower()}}
            for color in colors
        ]
        return json.dumps(groups, indent=2) + "\n"

    # The API and worker network aliases of a color (templates/compose/app.yml.j2).
    return {
        "app.json": targets(lambda color: f"{StackPlan.app_alias(color)}:{PORTS['app']}"),
        "worker.json": targets(lambda color: f"{StackPlan.app_alias(color)}-worker:{PORTS['worker_metrics']}"),
    }


def dashboard_files() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def render_grafana_files(plan: Any, monitoring: MonitoringSettings | None = None) -> dict[str, str]:
    """Relative path (under <config_dir>/grafana) -> content: provisioning + dashboards."""
    m = _monitoring(plan, monitoring)
    files = {
        "provisioning/datasources/prometheus.yml": _render("monitoring/grafana/datasources.yml.j2", plan, m),
        "provisioning/dashboards/govstack.yml": _render("monitoring/grafana/dashboards.yml.j2", plan, m),
    }
    files.update({f"dashboards/{name}": text for name, text in dashboard_files().items()})
    return files


def monitoring_files(
    plan: Any,
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
        release = getattr(plan, "release", None)
        colors = (release.color,) if release else ("blue",)
        serving = colors[0]
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


# --- promtool through the offline Prometheus image ------------------------------------------

class ToolImageUnavailable(RuntimeError):
    """No Docker engine, or the Prometheus image cannot be built here."""


def _docker(*args: str, timeout: int = 120, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return _docker("version", "--format", "{{.Server.Version}}", timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_tool_image(settings: Any = None, service: str = "prometheus", timeout_s: int = 900) -> str:
    """An offline monitoring image (``prometheus`` carries promtool,
    ``alertmanager`` amtool), built when missing or stale; the debootstrap
    base image first if that is missing too. Labelled like the deploy's
    builds, so a later deploy sees it as current."""
    from govstack import images
    from govstack.settings import Settings

    settings = settings or Settings()
    if not docker_available():
        raise ToolImageUnavailable("no Docker engine answers (docker version failed)")
    spec = MONITORING_IMAGES[service]
    base_tag = images.base_image_tag(settings)
    base_hash = images.base_context_hash(settings)
    wanted = images.context_hash(spec.context, {}, base_hash)
    label = "org.govstack.context-hash"
    current = _docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', spec.offline_tag)
    if current.returncode == 0 and current.stdout.strip() == wanted:
        return spec.offline_tag
    if _docker("image", "inspect", base_tag).returncode != 0:
        script = images.IMAGE_TEMPLATES / "base" / "build-rootfs.sh"
        if shutil.which("debootstrap") is None:
            raise ToolImageUnavailable(f"base image {base_tag} is missing and debootstrap is not installed")
        built = subprocess.run(
            ["sh", str(script), settings.images.debian_suite, settings.images.debian_mirror, base_tag, base_hash],
            capture_output=True, text=True, timeout=timeout_s,
        )
        if built.returncode != 0:
            raise ToolImageUnavailable(f"building {base_tag} failed: {built.stderr.strip()[-500:]}")
    built = _docker(
        "build", "-q", "--label", f"{label}={wanted}", "--build-arg", f"BASE_IMAGE={base_tag}",
        "-t", spec.offline_tag, str(spec.context), timeout=timeout_s,
    )
    if built.returncode != 0:
        raise ToolImageUnavailable(f"building {spec.offline_tag} failed: {built.stderr.strip()[-500:]}")
    return spec.offline_tag


def run_tool(image_tag: str, tool: str, workdir: Path, mount: str, *args: str) -> subprocess.CompletedProcess:
    """``TOOL ARGS`` in a monitoring image, offline and unprivileged, with
    ``workdir`` mounted read-only at ``mount`` (also the working directory)."""
    return _docker(
        "run", "--rm", "--network", "none", "--user", "10001:10001", "--cap-drop", "ALL",
        "-v", f"{workdir}:{mount}:ro", "-w", mount, "--entrypoint", tool, image_tag, *args, timeout=300,
    )


def run_promtool(workdir: Path, *args: str, image_tag: str | None = None) -> subprocess.CompletedProcess:
    """``promtool ARGS`` in the Prometheus image, with ``workdir`` as /etc/prometheus."""
    tag = image_tag or MONITORING_IMAGES["prometheus"].offline_tag
    return run_tool(tag, "promtool", workdir, "/etc/prometheus", *args)


def write_prometheus_tree(
    plan: Any, root: Path, monitoring: MonitoringSettings | None = None, with_tests: bool = True
) -> Path:
    """The /etc/prometheus tree a host gets (plus the rule tests), under ``root``."""
    m = _monitoring(plan, monitoring)
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "targets").mkdir(exist_ok=True)
    (root / "prometheus.yml").write_text(render_prometheus_config(plan, m))
    (root / "blackbox.yml").write_text(render_blackbox_config(plan, m))
    for name, text in render_rule_files(plan, m).items():
        (root / "rules" / name).write_text(text)
    for name, text in render_app_targets(("blue", "green"), "blue").items():
        (root / "targets" / name).write_text(text)
    if with_tests:
        (root / "tests").mkdir(exist_ok=True)
        for name, text in render_rule_tests(plan, m).items():
            (root / "tests" / name).write_text(text)
    _readable(root)
    return root


def _readable(root: Path) -> None:
    # The tools run as uid 10001, the files are the caller's.
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def check_prometheus(plan: Any, monitoring: MonitoringSettings | None = None) -> dict[str, subprocess.CompletedProcess]:
    """promtool check config, check rules, test rules; and every dashboard
    query parsed (as recording rules) by check rules."""
    tag = ensure_tool_image(plan.settings, "prometheus")
    with tempfile.TemporaryDirectory(prefix="govstack-promtool-") as tmp:
        root = write_prometheus_tree(plan, Path(tmp), monitoring)
        (root / "dashboards.yml").write_text(dashboard_queries_as_rules(dashboard_files()))
        _readable(root)
        rules = sorted(f"rules/{p.name}" for p in (root / "rules").iterdir())
        tests = sorted(f"tests/{p.name}" for p in (root / "tests").iterdir())
        return {
            "check config": run_promtool(root, "check", "config", "prometheus.yml", image_tag=tag),
            "check rules": run_promtool(root, "check", "rules", *rules, image_tag=tag),
            "test rules": run_promtool(root, "test", "rules", *tests, image_tag=tag),
            "dashboard queries": run_promtool(root, "check", "rules", "dashboards.yml", image_tag=tag),
        }


def check_alertmanager(plan: Any, monitoring: MonitoringSettings | None = None) -> subprocess.CompletedProcess:
    """amtool check-config of the rendered alertmanager.yml."""
    tag = ensure_tool_image(plan.settings, "alertmanager")
    with tempfile.TemporaryDirectory(prefix="govstack-amtool-") as tmp:
        root = Path(tmp)
        (root / "alertmanager.yml").write_text(render_alertmanager_config(plan, monitoring))
        _readable(root)
        return run_tool(tag, "amtool", root, "/etc/alertmanager", "check-config", "alertmanager.yml")
