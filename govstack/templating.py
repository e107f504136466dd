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
    return env


def render(template: str, context: Mapping[str, Any]) -> str:
    """``template`` (a path below a template directory) rendered with ``context``."""
    return environment().get_template(template).render(context)
