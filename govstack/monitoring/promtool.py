"""promtool and amtool, run in the offline Prometheus and Alertmanager images
(built here when missing, labelled like the deploy's builds): the quick test
tier checks every rendered config, rule file, rule test and dashboard query."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from govstack import images, sbom
from govstack.catalog import SERVICES
from govstack.monitoring.render import (
    dashboard_files,
    dashboard_queries_as_rules,
    render_alertmanager_config,
    render_app_targets,
    render_blackbox_config,
    render_prometheus_config,
    render_rule_files,
    render_rule_tests,
)
from govstack.plan import StackPlan
from govstack.settings import MonitoringSettings, Settings


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


def ensure_tool_image(settings: Settings | None = None, service: str = "prometheus", timeout_s: int = 900) -> str:
    """An offline monitoring image (``prometheus`` carries promtool,
    ``alertmanager`` amtool), built when missing or stale; the debootstrap
    base image first if that is missing too. Labelled like the deploy's
    builds, so a later deploy sees it as current."""
    settings = settings or Settings()
    if not docker_available():
        raise ToolImageUnavailable("no Docker engine answers (docker version failed)")
    spec = SERVICES[service].offline(settings)
    base_tag = images.base_image_tag(settings)
    base_hash = images.base_context_hash(settings)
    wanted = images.context_hash(spec.context, spec.build_args, base_hash)
    # What a deploy built (the same inputs, with its SBOM on top) is as good: no ping-pong.
    deployed = sbom.build_inputs_hash(settings, spec)
    label = images.CONTEXT_HASH_LABEL
    current = _docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', spec.tag)
    if current.returncode == 0 and current.stdout.strip() in (wanted, deployed):
        return spec.tag
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
    build_args = [f"--build-arg={key}={value}" for key, value in sorted(spec.docker_build_args(base_tag).items())]
    built = _docker(
        "build", "-q", "--label", f"{label}={wanted}", *build_args, "-t", spec.tag, str(spec.context),
        timeout=timeout_s,
    )
    if built.returncode != 0:
        raise ToolImageUnavailable(f"building {spec.tag} failed: {built.stderr.strip()[-500:]}")
    return spec.tag


def run_tool(image_tag: str, tool: str, workdir: Path, mount: str, *args: str) -> subprocess.CompletedProcess:
    """``TOOL ARGS`` in a monitoring image, offline and unprivileged, with
    ``workdir`` mounted read-only at ``mount`` (also the working directory)."""
    return _docker(
        "run", "--rm", "--network", "none", "--user", "10001:10001", "--cap-drop", "ALL",
        "-v", f"{workdir}:{mount}:ro", "-w", mount, "--entrypoint", tool, image_tag, *args, timeout=300,
    )


def run_promtool(workdir: Path, *args: str, image_tag: str | None = None) -> subprocess.CompletedProcess:
    """``promtool ARGS`` in the Prometheus image, with ``workdir`` as /etc/prometheus."""
    tag = image_tag or SERVICES["prometheus"].offline(Settings()).tag
    return run_tool(tag, "promtool", workdir, "/etc/prometheus", *args)


def write_prometheus_tree(
    plan: StackPlan, root: Path, monitoring: MonitoringSettings | None = None, with_tests: bool = True
) -> Path:
    """The /etc/prometheus tree a host gets (plus the rule tests), under ``root``."""
    m = monitoring if monitoring is not None else plan.settings.monitoring
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


def check_prometheus(
    plan: StackPlan, monitoring: MonitoringSettings | None = None, rule_tests: Iterable[str] | None = None
) -> dict[str, subprocess.CompletedProcess]:
    """promtool check config, check rules, test rules; and every dashboard
    query parsed (as recording rules) by check rules.

    ``rule_tests``: the rule test files to run (names under tests/, e.g.
    "host.test.yml"); all of them when None, none when empty (then there is
    no "test rules" result). A rule test evaluates its rules at every minute
    of up to 27 simulated hours, seconds of CPU each: a caller that checked a
    rendering already can leave it out."""
    tag = ensure_tool_image(plan.settings, "prometheus")
    with tempfile.TemporaryDirectory(prefix="govstack-promtool-") as tmp:
        root = write_prometheus_tree(plan, Path(tmp), monitoring)
        (root / "dashboards.yml").write_text(dashboard_queries_as_rules(dashboard_files()))
        _readable(root)
        rules = sorted(f"rules/{p.name}" for p in (root / "rules").iterdir())
        available = sorted(p.name for p in (root / "tests").iterdir())
        chosen = available if rule_tests is None else sorted(rule_tests)
        unknown = set(chosen) - set(available)
        if unknown:
            raise ValueError(f"no rule tests named {sorted(unknown)} (there are {available})")
        results = {
            "check config": run_promtool(root, "check", "config", "prometheus.yml", image_tag=tag),
            "check rules": run_promtool(root, "check", "rules", *rules, image_tag=tag),
            "dashboard queries": run_promtool(root, "check", "rules", "dashboards.yml", image_tag=tag),
        }
        if chosen:
            results["test rules"] = run_promtool(root, "test", "rules", *(f"tests/{n}" for n in chosen), image_tag=tag)
        return results


def check_alertmanager(plan: StackPlan, monitoring: MonitoringSettings | None = None) -> subprocess.CompletedProcess:
    """amtool check-config of the rendered alertmanager.yml."""
    tag = ensure_tool_image(plan.settings, "alertmanager")
    with tempfile.TemporaryDirectory(prefix="govstack-amtool-") as tmp:
        root = Path(tmp)
        (root / "alertmanager.yml").write_text(render_alertmanager_config(plan, monitoring))
        _readable(root)
        return run_tool(tag, "amtool", root, "/etc/alertmanager", "check-config", "alertmanager.yml")
