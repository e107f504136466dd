"""The backends every service call uses (Postgres pool, object store, Chroma, embedder), and
``db()``: a pooled connection whose connection failures surface as 503 ``Unavailable``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from .. import timing
from ..chroma import ChromaClient
from ..db import POOL_WAIT_S, make_pool
from ..embeddings import Embedder, make_embedder
from ..embeddings.query_cache import QueryEmbeddingCache
from ..settings import Settings
from ..storage import ObjectStore
from .errors import Unavailable


@dataclass
class Services:
    settings: Settings
    pool: ConnectionPool
    store: ObjectStore
    chroma: ChromaClient
    embedder: Embedder
    extras: dict[str, Any] = field(default_factory=dict)
    queries: QueryEmbeddingCache = field(init=False)

    def __post_init__(self) -> None:
        self.queries = QueryEmbeddingCache(self.embedder)

    def close(self) -> None:
        sandbox = self.extras.pop("sandbox", None)  # services.indexing.sandbox_for
        if sandbox is not None:
            sandbox.close()
        self.pool.close()
        self.chroma.close()


def build_services(settings: Settings, *, pool_max: int = 10) -> Services:
    return Services(
        settings=settings,
        # Rows as dicts, on every connection the pool makes (the worker's loop reads them by column name).
        pool=make_pool(settings.conninfo, max_size=pool_max, name="api" if pool_max > 3 else "worker",
                       kwargs={"row_factory": dict_row}),
        store=ObjectStore(settings),
        chroma=ChromaClient(settings.chroma_host, settings.chroma_port),
        embedder=make_embedder(settings),
    )


def is_connection_error(exc: BaseException) -> bool:
    """Postgres unreachable or going away, as opposed to an error of the statement itself."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


class _conn:
    """pool.connection() with dict rows, mapping pool/connection failures to 503."""

    def __init__(self, pool: ConnectionPool, timeout: float = POOL_WAIT_S) -> None:
        self.pool = pool
        self.timeout = timeout
        self._cm: Any = None
        self._start = 0.0

    def __enter__(self) -> psycopg.Connection:
        # The pool wait and the statements: the request's Postgres share (Server-Timing).
        self._start = time.perf_counter()
        try:
            self._cm = self.pool.connection(timeout=self.timeout)
            conn = self._cm.__enter__()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            timing.add("postgres", time.perf_counter() - self._start)
            raise Unavailable("postgres", f"postgres is unavailable: {exc}") from exc
        conn.row_factory = dict_row
        return conn

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        try:
            self._cm.__exit__(et, ev, tb)
        except psycopg.OperationalError as exc:
            if et is None and is_connection_error(exc):
                raise Unavailable("postgres", f"postgres is unavailable: {exc}") from exc
            if et is None:
                raise
        finally:
            timing.add("postgres", time.perf_counter() - self._start)
        if ev is not None and is_connection_error(ev):
            raise Unavailable("postgres", f"postgres is unavailable: {ev}") from ev
        return False


def db(pool: ConnectionPool, timeout: float = POOL_WAIT_S) -> _conn:
    return _conn(pool, timeout)
