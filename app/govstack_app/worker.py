"""The indexing worker: claims due documents one at a time (FOR UPDATE SKIP LOCKED), indexes
them, touches a heartbeat file after every loop that reached Postgres, serves its own Prometheus
metrics on :9100."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import psycopg
import structlog
from psycopg_pool import PoolTimeout

from . import metrics
from .services.backends import Services, build_services
from .services.errors import Unavailable
from .services.indexing import backlog, index_next, sandbox_for
from .services.maintenance import run_cleanup
from .settings import Settings

log = structlog.get_logger(__name__)

# The container's healthcheck tests this file's age with `find -newermt` (templates/compose/app.yml.j2,
# kept equal by tests/unit/app/test_worker_heartbeat.py) instead of starting a Python interpreter:
# the file is touched only after a Postgres round trip succeeded (an idle loop's indexing-color
# query, a claim) or while a claimed document's transaction makes progress, so a fresh file proves
# the loop runs and reaches its database. The idle loop runs every second, the Postgres back-off
# waits at most 30 s.
HEARTBEAT_FILE = Path("/tmp/govstack-worker.heartbeat")
HEARTBEAT_MAX_AGE_S = 60
METRICS_PORT = 9100
IDLE_SLEEP_S = 1.0
MAINTENANCE_EVERY_S = 3600.0
BACKLOG_EVERY_S = 15.0


def touch_heartbeat() -> None:
    try:
        HEARTBEAT_FILE.touch()
    except OSError as exc:
        log.warning("cannot touch heartbeat file", path=str(HEARTBEAT_FILE), error=str(exc))


class Worker:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.stop = threading.Event()
        self._last_maintenance = 0.0
        self._last_backlog = 0.0
        self._indexing = True

    def request_stop(self, *_: object) -> None:
        log.info("stop requested: the current document's extraction is abandoned, its attempt given back")
        self.stop.set()

    def may_index(self) -> bool:
        """Only the color named in app_state indexes (blue/green: one version at a time)."""
        with self.svc.pool.connection(timeout=10.0) as conn:
            row = conn.execute("SELECT value FROM app_state WHERE key = 'indexing_color'").fetchone()
        allowed = row is None or row["value"] == self.svc.settings.app_color
        if allowed != self._indexing:
            self._indexing = allowed
            log.info("indexing " + ("resumed" if allowed else "paused: another color indexes"),
                     indexing_color=row["value"] if row else None)
        return allowed

    def run_once(self) -> int:
        """Index up to WORKER_BATCH_SIZE documents; returns how many were claimed."""
        done = 0
        if not self.may_index():
            touch_heartbeat()  # the indexing-color query reached Postgres
            return 0
        for _ in range(self.svc.settings.worker_batch_size):
            if self.stop.is_set():
                break
            with self.svc.pool.connection(timeout=10.0) as conn:
                row = index_next(self.svc, conn, heartbeat=touch_heartbeat, stop=self.stop)
            touch_heartbeat()  # the claim (and the document's commit) reached Postgres
            if row is None or row["outcome"] == "interrupted":
                break
            done += 1
        return done

    def maintenance(self, now: float) -> None:
        if now - self._last_backlog >= BACKLOG_EVERY_S:
            self._last_backlog = now
            pending, failed = backlog(self.svc.pool)
            metrics.UNINDEXED_BACKLOG.set(pending)
            metrics.FAILED_DOCUMENTS.set(failed)
        if now - self._last_maintenance >= MAINTENANCE_EVERY_S:
            self._last_maintenance = now
            from .db import ensure_audit_partitions

            with self.svc.pool.connection() as conn:
                ensure_audit_partitions(conn)
            try:
                # Moves orphans to the quarantine and expires old entries; a no-op while paused.
                run_cleanup(self.svc)
            except Exception as exc:  # noqa: BLE001 - next hour then
                log.warning("orphan cleanup failed", error=repr(exc))
            try:
                from .retention import scheduled_purge

                scheduled_purge(self.svc.settings)
            except Exception as exc:  # noqa: BLE001 - next hour then
                log.warning("audit retention failed", error=repr(exc))

    def run(self) -> None:
        backoff = 1.0
        log.info(
            "worker started",
            batch_size=self.svc.settings.worker_batch_size,
            embedding_model=self.svc.embedder.model_name,
        )
        while not self.stop.is_set():
            try:
                self.maintenance(time.monotonic())
                n = self.run_once()
                backoff = 1.0
            except (psycopg.OperationalError, PoolTimeout, Unavailable) as exc:
                log.warning("postgres unavailable; backing off", error=str(exc).strip(), sleep_s=backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if n == 0:
                self.stop.wait(IDLE_SLEEP_S)
        log.info("worker stopped")


def run_worker(settings: Settings) -> int:
    from prometheus_client import start_http_server

    from .db import migrate

    if settings.migrate_on_start:
        migrate(settings)
    svc = build_services(settings, pool_max=3)
    sandbox_for(svc).warm_up()  # the forkserver imports and warms the parsers now, not on the first document
    worker = Worker(svc)
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    try:
        start_http_server(METRICS_PORT)
    except OSError as exc:
        log.warning("worker metrics port unavailable", port=METRICS_PORT, error=str(exc))
    metrics.APP_INFO.info({"version": settings.app_version, "color": settings.app_color})
    try:
        worker.run()
    finally:
        svc.close()
    return 0


def healthcheck(settings: Settings, max_age: float = HEARTBEAT_MAX_AGE_S) -> tuple[bool, str]:
    """The operator's diagnostic (`govstack-app healthcheck worker`): the container's own check
    tests the heartbeat's age alone; this one also says whether Postgres answers right now."""
    try:
        age = time.time() - HEARTBEAT_FILE.stat().st_mtime
    except OSError:
        return False, f"no heartbeat file {HEARTBEAT_FILE}"
    if age > max_age:
        return False, f"heartbeat is {age:.0f}s old (limit {max_age}s)"
    try:
        with psycopg.connect(settings.conninfo(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        return False, f"postgres unreachable: {exc}"
    return True, f"heartbeat {age:.0f}s old, postgres ok"
