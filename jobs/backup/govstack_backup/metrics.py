"""Freshness metrics for node-exporter's textfile collector.

``<stack_root>/data/metrics/backup.prom``, replaced atomically (temp file +
rename in the same directory) so the collector never reads half a file. The
values carry over between runs by reading the previous file back: the
failure counter only ever grows, and a failed run keeps the last success's
time, duration and size. All five series are written on every run, 0 meaning
"never" for the timestamps (the monitoring rules rely on that).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping

METRICS = {
    "govstack_backup_last_success_timestamp_seconds": ("gauge", "End of the last successful backup run (0 = never)."),
    "govstack_backup_last_failure_timestamp_seconds": ("gauge", "End of the last failed backup run (0 = never)."),
    "govstack_backup_last_duration_seconds": ("gauge", "Duration of the last successful backup run."),
    "govstack_backup_last_size_bytes": ("gauge", "Bytes streamed into the repository by the last successful run."),
    "govstack_backup_failures_total": ("counter", "Failed backup runs since the metrics file was created."),
}
_LINE = re.compile(r"^(govstack_[a-z_]+)(?:\{[^}]*\})?\s+([-+0-9.eE]+|NaN)\s*$")

Spec = Mapping[str, tuple[str, str]]


def parse(text: str, spec: Spec = METRICS) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match and match.group(1) in spec:
            values[match.group(1)] = float(match.group(2))
    return values


def render(values: Mapping[str, float], spec: Spec = METRICS) -> str:
    lines = []
    for name, (kind, help_text) in spec.items():
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        value = float(values.get(name, 0.0))
        lines.append(f"{name} {int(value) if value.is_integer() else round(value, 3)}")
    return "\n".join(lines) + "\n"


def updated(previous: Mapping[str, float], *, ok: bool, finished_at: float, duration_s: float,
            size_bytes: int) -> dict[str, float]:
    values = {name: float(previous.get(name, 0.0)) for name in METRICS}
    if ok:
        values["govstack_backup_last_success_timestamp_seconds"] = finished_at
        values["govstack_backup_last_duration_seconds"] = duration_s
        values["govstack_backup_last_size_bytes"] = float(size_bytes)
    else:
        values["govstack_backup_last_failure_timestamp_seconds"] = finished_at
        values["govstack_backup_failures_total"] += 1
    return values


def record(path: str, *, ok: bool, finished_at: float, duration_s: float, size_bytes: int) -> dict[str, float]:
    return rewrite(path, METRICS, lambda previous: updated(previous, ok=ok, finished_at=finished_at,
                                                           duration_s=duration_s, size_bytes=size_bytes))


def rewrite(path: str, spec: Spec, update: Callable[[dict[str, float]], dict[str, float]]) -> dict[str, float]:
    """Replace the textfile ``path`` atomically with ``update(previous values)``."""
    try:
        with open(path, encoding="utf-8") as fh:
            previous = parse(fh.read(), spec)
    except FileNotFoundError:
        previous = {}
    values = update(previous)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render(values, spec))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return values
