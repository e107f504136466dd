"""Usage events: what the API records about each upload, search, document view, download,
delete and failed request, and how it records them without ever failing or slowing a request.

An event holds only: the minute it happened (UTC, rounded down), its kind, a pseudonymous actor
(``actor_id``: an HMAC of the API key name, or of the client address when no key was accepted,
under a generated secret only the API reads), the collection (successful requests only: a failed
request's collection may be a name someone typed), a latency bucket, a search score bucket
(searches) and the status class (failed requests). No query text, no document, no key name, no
address.

Writing is best effort: ``EventRecorder.record`` puts the event on a bounded in-process queue
(never blocks; a full queue drops the event) and a background thread drains it with one ``COPY``
per batch over its own connection, so a slow or absent Postgres costs requests nothing. Every
event ends in ``govstack_analytics_events_total{outcome}``: written, dropped (queue full) or
failed (the insert failed).
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog

from .. import metrics
from ..ranking import RRF_K
from ..settings import Settings

log = structlog.get_logger(__name__)

EVENT_KINDS = ("upload", "search", "view", "download", "delete", "error")
# Upper bounds (seconds) of the latency buckets: bucket i holds latencies <= LATENCY_EDGES_S[i],
# the last bucket (len(LATENCY_EDGES_S)) everything slower.
LATENCY_EDGES_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_LABELS = tuple(f"<={edge:g}s" for edge in LATENCY_EDGES_S) + (f">{LATENCY_EDGES_S[-1]:g}s",)
# Search score buckets: how well the best result matched. 0 = no result, 1 = low, 2 = medium,
# 3 = high. Scores mean different things per mode, so each mode has its own (low, high) edges:
# vector = cosine similarity of the top chunk (all-MiniLM-L6-v2: unrelated text rarely exceeds
# 0.3); keyword = Postgres ts_rank_cd; hybrid = the reciprocal-rank-fusion score, which is at most
# 1/(k+1) when only one of the two retrievers found the top result and 2/(k+1) when both ranked it
# first.
SCORE_LABELS = ("no results", "low", "medium", "high")
SCORE_EDGES = {
    "vector": (0.3, 0.5),
    "keyword": (0.05, 0.2),
    "hybrid": (1.0 / (RRF_K + 1) + 1e-9, 2.0 / (RRF_K + 1) - 1e-9),
}
# Content gaps: searches that found nothing or only weak matches.
GAP_BUCKETS = (0, 1)
ACTOR_HEX_CHARS = 32  # 128 bits of HMAC-SHA256


@dataclass(frozen=True)
class Event:
    occurred_at: datetime
    kind: str
    actor: str
    collection: str | None
    latency_bucket: int
    score_bucket: int | None = None
    status_class: int | None = None

    def row(self) -> tuple[Any, ...]:
        return (self.occurred_at, self.kind, self.actor, self.collection, self.latency_bucket, self.score_bucket,
                self.status_class)


COLUMNS = ("occurred_at", "kind", "actor", "collection", "latency_bucket", "score_bucket", "status_class")


def actor_id(secret: bytes, *, key_name: str | None, client: str | None) -> str:
    """The pseudonymous actor: HMAC-SHA256 of the key name (or, for a request no key was accepted
    for, of the client address), truncated to 128 bits. The two namespaces cannot collide."""
    subject = f"key:{key_name}" if key_name else f"addr:{client or 'unknown'}"
    return hmac.new(secret, subject.encode("utf-8"), hashlib.sha256).hexdigest()[:ACTOR_HEX_CHARS]


def minute_of(epoch_s: float) -> datetime:
    """The UTC minute a moment falls in (rounded down): events carry nothing finer."""
    return datetime.fromtimestamp(epoch_s - epoch_s % 60, UTC)


def latency_bucket(seconds: float) -> int:
    return bisect_left(LATENCY_EDGES_S, seconds)


def score_bucket(mode: str, top_score: float | None) -> int:
    if top_score is None:
        return 0
    low, high = SCORE_EDGES[mode]
    if top_score < low:
        return 1
    return 2 if top_score < high else 3


def note_usage(state: Any, kind: str, collection: str, score: int | None = None) -> None:
    """A route's facts for its event (``request.state``); the middleware adds time, actor, latency."""
    state.usage_event = (kind, collection, score)


class EventRecorder:
    """A bounded queue of events and the one thread that writes them in batches."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
    ) -> None:
        self._connect = connect
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=capacity)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-events", daemon=True)
        self._conn: psycopg.Connection | None = None
        self._last_warning = 0.0

    def start(self) -> None:
        self._thread.start()

    def record(self, event: Event) -> None:
        """Never blocks, never raises: a full queue drops the event (counted)."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            metrics.ANALYTICS_EVENTS.labels("dropped").inc()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (bounded by ``timeout_s``), then stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._conn is not None:
            self._conn.close()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def _take(self) -> list[Event]:
        batch: list[Event] = []
        try:
            batch.append(self._queue.get(timeout=self._flush_interval_s))
        except queue.Empty:
            return batch
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        backoff = 0.5
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._take()
            metrics.ANALYTICS_EVENT_QUEUE.set(self._queue.qsize())
            if not batch:
                continue
            try:
                self._write(batch)
                metrics.ANALYTICS_EVENTS.labels("written").inc(len(batch))
                backoff = 0.5
            except Exception as exc:  # noqa: BLE001 - best effort: count, back off, go on
                metrics.ANALYTICS_EVENTS.labels("failed").inc(len(batch))
                self._drop_connection()
                now = time.monotonic()
                if now - self._last_warning > 60:
                    self._last_warning = now
                    log.warning("usage events not written", events=len(batch), error=repr(exc)[:300])
                if not self._stop.is_set():
                    self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _write(self, batch: list[Event]) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        with self._conn.transaction(), self._conn.cursor() as cur:
            with cur.copy(f"COPY analytics.events ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for event in batch:
                    copy.write_row(event.row())

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001, S110 - it is being discarded
                pass
        self._conn = None


class UsageEventsMiddleware:
    """Turns each /api/ request into at most one event: the route's facts (``note_usage``) when it
    succeeded, an ``error`` event when it failed; nothing for other successful calls."""

    def __init__(self, app: Any, recorder: EventRecorder, secret: bytes) -> None:
        self.app = app
        self.recorder = recorder
        self.secret = secret

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/api/"):
            await self.app(scope, receive, send)
            return
        started = time.time()
        clock = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._record(scope, status["code"], started, time.perf_counter() - clock)

    def _record(self, scope: dict[str, Any], status: int, started: float, elapsed: float) -> None:
        try:
            state = scope.get("state") or {}
            facts = state.get("usage_event")
            if status < 400 and facts is None:
                return
            actor = actor_id(self.secret, key_name=state.get("api_key_name"),
                             client=(scope.get("client") or (None,))[0])
            if status < 400:
                kind, collection, score = facts
                event = Event(minute_of(started), kind, actor, collection, latency_bucket(elapsed), score)
            else:
                event = Event(minute_of(started), "error", actor, None, latency_bucket(elapsed),
                              status_class=min(status // 100, 5))
            self.recorder.record(event)
        except Exception:  # noqa: BLE001 - an event must never fail a request
            metrics.ANALYTICS_EVENTS.labels("dropped").inc()


def usage_event_recorder(settings: Settings) -> EventRecorder:
    """The writer of usage events, over a connection of its own (never one a request waits for)."""

    def connect() -> psycopg.Connection:
        conn = psycopg.connect(settings.conninfo())
        # A stuck insert must not hold the writer (and its queue) for long.
        conn.execute("SET statement_timeout = '10s'")
        conn.commit()
        return conn

    return EventRecorder(connect, capacity=settings.analytics_event_queue)
