"""The Jinja environments templates render in, and what every rendered file says first.

Templates are looked up in the repository root and in ``templates/``.
Monitoring templates (``monitoring/``) use ``[[ ]]`` for values, because
``{{ }}`` belongs to Prometheus' own annotation templates, which must reach
the host verbatim.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = REPO_ROOT / "templates"
TEMPLATE_DIRS = [REPO_ROOT, TEMPLATES_DIR]
MANAGED_BANNER = "Managed by govstack-deploy: edit the inventory and redeploy, not this file."


def environment(*, brackets: bool = False) -> Environment:
    """Config files (YAML, nginx, postgresql.conf), not HTML: no autoescape, which would corrupt them.
    ``brackets``: values in ``[[ ]]`` (monitoring templates)."""
    delimiters = {"variable_start_string": "[[", "variable_end_string": "]]"} if brackets else {}
    return Environment(
        loader=FileSystemLoader([str(path) for path in TEMPLATE_DIRS]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701
        **delimiters,
    )
