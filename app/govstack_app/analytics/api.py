"""The analytics service's app: ``create_analytics_app`` wires the middleware, the error
handlers, the routes (routers/analytics.py) and the lifespan that builds the release service
(services/analytics.py) over the service's own pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from .. import __version__, metrics
from ..db import make_pool
from ..http_errors import install_exception_handlers
from ..middleware import RequestContextMiddleware
from ..routers.analytics import PREFIX, ROUTERS, over_budget
from ..services.analytics import ReleaseService
from .ledger import OverBudget, postgres_session
from .mechanisms import count_mechanism
from .settings import AnalyticsSettings

log = structlog.get_logger(__name__)


def create_analytics_app(settings: AnalyticsSettings, pool: ConnectionPool | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = pool is None
        if own:
            # A callable: the password file is read for each new connection, so a rotated password
            # (`govstack secret rotate postgres_analytics_password`) is used without a restart.
            app.state.pool = make_pool(settings.conninfo, max_size=4, name="analytics")
        else:
            app.state.pool = pool
        app.state.releases = ReleaseService(settings, lambda: postgres_session(app.state.pool))
        # Calibrate once at start: a broken OpenDP install fails here, not at the first question.
        await run_in_threadpool(count_mechanism, settings.analytics_epsilon_per_release,
                                settings.analytics_max_events_per_actor_day)
        metrics.APP_INFO.info({"version": settings.app_version, "color": settings.app_color})
        log.info("analytics ready to serve", epsilon=settings.analytics_epsilon_per_release,
                 budget_period=settings.analytics_budget_period)
        yield
        if own:
            app.state.pool.close()

    app = FastAPI(
        title="GovStack privacy-preserving analytics",
        version=__version__,
        description=(
            "Usage, retrieval and system-health statistics, each a differentially private release "
            "(OpenDP discrete Laplace) charged to a privacy budget per consumer and period and recorded "
            "in a ledger. The same question in the same period returns the same release at no cost; groups "
            "whose noisy count is below k are suppressed. Every answer states its parameters."
        ),
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
        openapi_url=f"{PREFIX}/openapi.json",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # GET only: no request body is ever needed.
    app.add_middleware(RequestContextMiddleware, max_body=64 * 1024, color=settings.app_color)
    install_exception_handlers(app)
    app.add_exception_handler(OverBudget, over_budget)  # type: ignore[arg-type]
    for router in ROUTERS:
        app.include_router(router)
    return app
