"""Reading the kept container logs: which daily files a window needs, the
shell that streams them on the host, and a parser for their lines that
survives anything a file may hold (a line cut short, binary junk, a huge line).

A kept line is the engine's json-file line, unchanged:
``{"log": "<what the container wrote>\\n", "stream": "stdout", "time": "<RFC 3339, UTC>",
"attrs": {"com.docker.compose.project": ..., "com.docker.compose.service": ...}}``;
``log`` is itself a JSON object for nginx' access log and the app's structured logs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from govstack.commands import q

# The app keeps an X-Request-ID only in this shape (app/govstack_app/middleware.py); nginx' own
# $request_id is 32 hex digits. Anything else cannot be a request id in the logs.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A Compose service name, as rsyslog accepts it for a directory (templates/rsyslog/rsyslog.conf.j2).
SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
DURATION_RE = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# Longer lines are skipped (and counted): rsyslog's maxMessageSize is 128 KiB.
MAX_LINE_CHARS = 1 << 20
_TIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


class LogSearchError(ValueError):
    """A bad argument of ``govstack report logs`` (exit code 2)."""


def parse_duration(text: str) -> timedelta:
    """``90m``, ``2h``, ``7d``, ``1w``, ``1h30m`` -> a positive timedelta."""
    match = DURATION_RE.match(text.strip()) if text else None
    if not match or not any(match.groups()):
        raise LogSearchError(f"--since {text!r} is not a duration (e.g. 30m, 2h, 7d, 1h30m)")
    weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    span = timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
    if span <= timedelta(0):
        raise LogSearchError(f"--since {text!r} is zero")
    if span > timedelta(days=3650):
        raise LogSearchError(f"--since {text!r} is longer than any retention (3650 days)")
    return span


def check_request_id(value: str) -> str:
    if not REQUEST_ID_RE.match(value):
        raise LogSearchError(f"--request-id {value!r} is not a request id (1-128 of A-Z a-z 0-9 . _ : -)")
    return value


def check_service(value: str) -> str:
    if not SERVICE_RE.match(value):
        raise LogSearchError(f"--service {value!r} is not a service name (e.g. nginx, api, worker)")
    return value


def days_between(since: datetime, now: datetime) -> list[str]:
    """The daily files' names (UTC days) a window from ``since`` to ``now`` touches."""
    first, last = since.astimezone(UTC).date(), now.astimezone(UTC).date()
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def read_command(logs_dir: str, services: Iterable[str], days: Iterable[str], request_id: str | None) -> str:
    """Shell (bash) that streams the kept lines of these services and days on the host; with a
    request id, only the lines that contain it (the parser then checks the field). Missing files
    are no error, nor is a file rsyslog is still writing (its last gzip block may be partial)."""
    names = list(services) or ["*"]
    globs = " ".join(f"{q(logs_dir)}/{name}/{day}.jsonl.gz" for name in names for day in days)
    grep = f" | grep -aF -e {q(request_id)}" if request_id else ""
    return (f"shopt -s nullglob; for f in {globs}; do gzip -dc -- \"$f\" 2>/dev/null || true; done"
            f"{grep} || true")


@dataclass
class Entry:
    """One kept line."""

    time: datetime
    service: str
    project: str
    stream: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def request_id(self) -> str | None:
        value = self.fields.get("request_id")
        return value if isinstance(value, str) else None

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.time.isoformat(), "service": self.service, "project": self.project,
                "stream": self.stream, "log": self.fields or self.text}


@dataclass
class Parsed:
    entries: list[Entry] = field(default_factory=list)
    skipped: int = 0


def parse_time(value: Any) -> datetime | None:
    """The engine's RFC 3339 time (nanoseconds, ``Z``) -> an aware datetime, or None."""
    if not isinstance(value, str):
        return None
    match = _TIME_RE.match(value)
    if not match:
        return None
    whole, fraction, zone = match.groups()
    micro = (fraction or ".0")[1:7].ljust(6, "0")
    try:
        return datetime.fromisoformat(f"{whole}.{micro}{'+00:00' if zone == 'Z' else zone}")
    except ValueError:
        return None


def parse_line(line: str) -> Entry | None:
    """One kept line -> an Entry, or None for anything that is not one (never raises)."""
    if not line or len(line) > MAX_LINE_CHARS:
        return None
    try:
        outer = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(outer, dict):
        return None
    when = parse_time(outer.get("time"))
    attrs = outer.get("attrs")
    text = outer.get("log")
    if when is None or not isinstance(attrs, dict) or not isinstance(text, str):
        return None
    service, project = attrs.get("com.docker.compose.service"), attrs.get("com.docker.compose.project")
    if not isinstance(service, str) or not isinstance(project, str):
        return None
    stream = outer.get("stream") if isinstance(outer.get("stream"), str) else ""
    text = text.rstrip("\n")
    fields: dict[str, Any] = {}
    if text.startswith("{"):
        try:
            inner = json.loads(text)
        except (ValueError, RecursionError):
            inner = None
        if isinstance(inner, dict):
            fields = inner
    return Entry(when, service, project, stream, text, fields)


def parse_lines(lines: Iterable[str]) -> Iterator[Entry | None]:
    for line in lines:
        yield parse_line(line)


def search(lines: Iterable[str], *, since: datetime, services: Iterable[str] = (),
           request_id: str | None = None) -> Parsed:
    """The entries at or after ``since`` of these services (all when empty) that carry
    ``request_id`` (the field of a structured line; anywhere in a plain one), oldest first."""
    wanted = set(services)
    found = Parsed()
    for entry in parse_lines(lines):
        if entry is None:
            found.skipped += 1
            continue
        if entry.time < since or (wanted and entry.service not in wanted):
            continue
        if request_id is not None:
            if entry.fields:
                if entry.request_id != request_id:
                    continue
            elif request_id not in entry.text:
                continue
        found.entries.append(entry)
    found.entries.sort(key=lambda entry: entry.time)
    return found


def render(entry: Entry, width: int = 400) -> str:
    """One line for a person: time, service, and the line (structured ones as key=value)."""
    if entry.fields:
        body = " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in entry.fields.items()
                        if key not in ("timestamp", "time"))
    else:
        body = entry.text
    if len(body) > width:
        body = body[:width] + f"… ({len(body) - width} more characters)"
    return f"{entry.time.isoformat(timespec='milliseconds')} {entry.service:<10} {body}"
