"""Where a request's milliseconds go: per-request durations by backend, sent back as a
`Server-Timing` header (RFC: W3C Server Timing) and logged with the request.

The middleware opens a record per request in a context variable; code that waits on a backend
wraps the wait in ``timed("postgres" | "chroma" | "embed")``. Sync routes run in a thread pool
that copies the request's context, so they add to the same record. Outside a request (worker,
CLI) there is no record and ``timed`` only measures nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

_current: ContextVar[dict[str, float | str] | None] = ContextVar("govstack_server_timing", default=None)


def open_record() -> tuple[dict[str, float | str], Token]:
    record: dict[str, float | str] = {}
    return record, _current.set(record)


def close_record(token: Token) -> None:
    _current.reset(token)


def add(name: str, seconds: float) -> None:
    """Add `seconds` to `name` in the current request's record (none outside a request)."""
    record = _current.get()
    if record is not None:
        record[name] = float(record.get(name, 0.0)) + seconds


@contextmanager
def timed(name: str) -> Iterator[None]:
    """Add the block's wall time to `name` in the current request's record."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - start)


def note(name: str, description: str) -> None:
    """A metric without a duration (e.g. cache=hit)."""
    record = _current.get()
    if record is not None:
        record[name] = description


def header_value(record: dict[str, float | str], total_s: float) -> str:
    """`postgres;dur=1.9, embed;dur=4.2, cache;desc="miss", app;dur=9.8` (milliseconds)."""
    parts = [
        f'{name};desc="{value}"' if isinstance(value, str) else f"{name};dur={value * 1000:.1f}"
        for name, value in record.items()
    ]
    return ", ".join([*parts, f"app;dur={total_s * 1000:.1f}"])


def log_fields(record: dict[str, float | str]) -> dict[str, float | str]:
    """The record as access-log fields: `postgres_ms`, `embed_ms`, `cache`."""
    return {
        name if isinstance(value, str) else f"{name}_ms": value if isinstance(value, str) else round(value * 1000, 2)
        for name, value in record.items()
    }
