"""The one Jinja environment every template renders in, its one entry point
``render``, and what every rendered file says first.

Templates are looked up in the repository root (``docker-compose.yml.j2``,
``monitoring/``) and in ``templates/``. Values are ``{{ }}`` everywhere;
Prometheus' own alert ``{{ }}`` templates are written as Jinja
strings (``{{ '{{ $labels.instance }}' }}``) so they reach the host verbatim.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = REPO_ROOT / "templates"
TEMPLATE_DIRS = [REPO_ROOT, TEMPLATES_DIR]
MANAGED_BANNER = "Managed by govstack-deploy: edit the inventory and redeploy, not this file."


def number(value: float) -> str:
    """10.0 -> "10", 0.5 -> "0.5": thresholds as people write them."""
    return format(value, "g")


def percent(value: float) -> str:
    """0.05 -> "5%"."""
    return number(round(value * 100, 6)) + "%"


def humanize_duration(seconds: float) -> str:
    """Prometheus' ``humanizeDuration`` (template/template.go), for the promtool
    tests' expected annotations: ``97200`` -> ``1d 3h 0m 0s``."""
    if seconds < 1:
        return f"{seconds * 1000:.4g}ms"
    whole = int(seconds)
    days, hours, minutes, secs = whole // 86400, whole // 3600 % 24, whole // 60 % 60, whole % 60
    if days:
        return f"{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{seconds:.4g}s"


@functools.cache
def environment() -> Environment:
    """Config files (YAML, nginx, postgresql.conf), not HTML: no autoescape, which would corrupt them."""
    env = Environment(
        loader=FileSystemLoader([str(path) for path in TEMPLATE_DIRS]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701
    )
    env.filters["g"] = number
    env.filters["pct"] = percent
    env.filters["hd"] = humanize_duration
    return env


def render(template: str, context: Mapping[str, Any]) -> str:
    """``template`` (a path below a template directory) rendered with ``context``."""
    return environment().get_template(template).render(context)
