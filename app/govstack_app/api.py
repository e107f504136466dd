"""The HTTP API (FastAPI): ``create_app`` wires the middleware, the error handlers, the routers
(``routers/``) and the lifespan that builds the services (``services/``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import structlog
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from . import __version__, metrics
from .analytics.events import EventRecorder, UsageEventsMiddleware, usage_event_recorder
from .http_errors import install_exception_handlers
from .middleware import RequestContextMiddleware
from .routers import collections, documents, keys, ops, search
from .services.backends import Services, build_services
from .services.keys import lookup_api_key
from .settings import Settings
from .upload_admission import UploadAdmissionMiddleware, UploadSlots

log = structlog.get_logger(__name__)


def lifespan(
    settings: Settings, svc: Services | None, run_migrations: bool, events: EventRecorder | None = None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Migrate, build the services (unless given), ensure the bucket, start the usage-event
    writer; stop and close them at shutdown."""

    @asynccontextmanager
    async def serve(app: FastAPI) -> AsyncIterator[None]:
        if run_migrations:
            from .db import migrate

            await run_in_threadpool(migrate, settings)
        s = svc or await run_in_threadpool(build_services, settings)
        app.state.services = s
        if not run_migrations:
            await run_in_threadpool(apply_new_bootstrap_key, s, settings)
        try:
            await run_in_threadpool(s.store.ensure_bucket)
        except Exception as exc:  # noqa: BLE001 - /ready reports it
            log.warning("could not ensure bucket", error=repr(exc))
        metrics.APP_INFO.info({"version": settings.app_version, "color": settings.app_color})
        if events is not None:
            events.start()
        log.info("api ready to serve", embedding_model=s.embedder.model_name, usage_events=events is not None)
        yield
        log.info("api shutting down")
        if events is not None:
            await run_in_threadpool(events.close)
        if svc is None:
            s.close()

    return serve


def apply_new_bootstrap_key(svc: Services, settings: Settings) -> None:
    """The secret file's bootstrap admin key, applied at start when the database never saw it
    (the seed rule of migrate, which the stack runs only on a deploy): a restore of a database
    older than the file (`govstack restore`, a drill, a point in time before `govstack admin-key
    rotate`) would otherwise refuse the operator's key until the next deploy, and keep a key
    rotated away for a leak working. A value the database saw before stays as the API left it
    (rotated or revoked). A database that does not answer yet is the readiness check's to
    report; the next start applies it."""
    if settings.admin_api_key_file is None:
        return
    from .db import seed_bootstrap_key

    try:
        with svc.pool.connection() as conn:
            if seed_bootstrap_key(conn, settings.admin_api_key()):
                log.warning("bootstrap admin key set from the secret file: the database had never seen it")
    except Exception as exc:  # noqa: BLE001 - never keeps the API from starting
        log.warning("could not check the bootstrap admin key against the secret file", error=repr(exc))


def create_app(settings: Settings, svc: Services | None = None, *, run_migrations: bool | None = None) -> FastAPI:
    """``run_migrations`` None: as ``GOVSTACK_MIGRATE_ON_START`` says (the stack migrates in a
    one-off container as the schema's owner instead)."""
    # Usage events only when the deploy gave the API their HMAC secret.
    secret = settings.analytics_actor_key()
    events = usage_event_recorder(settings) if secret is not None else None
    app = FastAPI(
        title="GovStack document service",
        version=__version__,
        description="Upload documents, index them (text extraction, chunking, embeddings) and search them.",
        lifespan=lifespan(settings, svc, settings.migrate_on_start if run_migrations is None else run_migrations,
                          events),
    )
    app.state.settings = settings
    app.state.usage_events = events

    def key_role(key: str) -> str | None:
        row = lookup_api_key(app.state.services.pool, key)
        return None if row is None else row["role"]

    app.add_middleware(UploadAdmissionMiddleware, slots=UploadSlots(settings.max_concurrent_uploads),
                       key_role=key_role)
    app.add_middleware(RequestContextMiddleware, max_body=settings.upload_slot_bytes, color=settings.app_color)
    if events is not None and secret is not None:
        # Outermost: its latency is the whole request's, early 413s and refused uploads included.
        app.add_middleware(UsageEventsMiddleware, recorder=events, secret=secret)
    install_exception_handlers(app)
    for module in (ops, documents, collections, search, keys):  # this order is the OpenAPI's
        app.include_router(module.router)
    return app
