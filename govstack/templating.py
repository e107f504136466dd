"""The one Jinja environment every template renders in, its one entry point
``render``, and what every rendered file says first.

Templates are looked up in the repository root (``docker-compose.yml.j2``,
``monitoring/``) and in ``templates/``. Values are ``{{ }}`` everywhere;
Prometheus' own alert ``{{ }}`` templates are written as Jinja
strings (``{{ '{{ $labels.instance }}' }}``) so they reach the host verbatim.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import Environment, FileSystemBytecodeCache, FileSystemLoader, StrictUndefined

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


# What Jinja compiles a template's source into, besides the source itself.
COMPILE_OPTIONS = ("block_start_string", "block_end_string", "variable_start_string", "variable_end_string",
                   "comment_start_string", "comment_end_string", "line_statement_prefix", "line_comment_prefix",
                   "trim_blocks", "lstrip_blocks", "newline_sequence", "keep_trailing_newline", "optimized",
                   "autoescape")


def bytecode_cache(env: Environment, cache_home: str | None = None) -> FileSystemBytecodeCache | None:
    """Compiled templates kept between processes: every deploy compiled the
    templates it renders again (all 64 of the repository's: 0.7 s of CPU on
    2 loaded cores; loaded from here: 12 ms).

    Jinja finds an entry by template name and file and uses it only while the
    source's checksum is the one it was compiled from (and Python's and the
    bytecode format's versions); the directory is keyed by the rest the code
    depends on: Jinja's version and the environment's compile options. It is
    the user's own (``$XDG_CACHE_HOME`` or ``~/.cache``, ``govstack/``, mode
    0700), since what it holds is loaded as code. None (compile every time)
    when no such directory can be had."""
    options = repr([(name, getattr(env, name)) for name in COMPILE_OPTIONS] + [sorted(env.extensions)])
    key = hashlib.sha256(f"{jinja2.__version__}|{options}".encode()).hexdigest()[:16]
    home = cache_home or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    directory = Path(home) / "govstack" / f"jinja-{key}"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None  # not only ours: nothing loaded from it
    return FileSystemBytecodeCache(str(directory))


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
    env.bytecode_cache = bytecode_cache(env)
    env.filters["g"] = number
    env.filters["pct"] = percent
    env.filters["hd"] = humanize_duration
    return env


def render(template: str, context: Mapping[str, Any]) -> str:
    """``template`` (a path below a template directory) rendered with ``context``."""
    return environment().get_template(template).render(context)
