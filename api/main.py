"""The FastAPI application: the front door for backend teams.  OpenAPI at /docs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from api import audit, guards, idempotency, openapi, problems
from api.auth_middleware import AuthMiddleware
from api.policy import authorize
from api.routes import amendments, contracts, meta, org, tasks
from api.routes import auth as auth_routes
from api.routes import analytics as analytics_routes
from api.routes import audit as audit_routes
from api.routes import documents as documents_routes
from api.routes import pages as pages_routes
from api.routes import integrations as integrations_routes
from api.routes import webhooks as webhooks_routes
from api.service import ContractService
from core.seed import seed_demo_org_once
from core.settings import Settings, get_settings
from core.storage import blob_store
from core.temporal import connect
from models.db import make_engine, make_session_factory

log = logging.getLogger("api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = make_engine(settings.database_url)
        app.state.settings = settings
        app.state.sessions = make_session_factory(engine)
        app.state.blobs = blob_store(settings)  # uploaded documents' bytes (core/storage.py)
        audit.watch(app.state.sessions)  # database writes made while serving a request leave an audit entry
        if settings.seed_demo_org:
            added = await asyncio.to_thread(seed_demo_org_once, app.state.sessions, settings.demo_password,
                                            settings.admin_password or "admin")
            if added:
                log.info("seeded the demo organisation (%d rows)", added)
        elif settings.admin_password:
            await asyncio.to_thread(_ensure_admin, app.state.sessions, settings.admin_password)
        app.state.temporal = await connect(settings)
        app.state.contracts = ContractService(app.state.temporal, app.state.sessions, settings)
        reconciler = asyncio.create_task(_reconcile_forever(app.state.contracts, settings))
        try:
            yield
        finally:
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler
            engine.dispose()

    app = FastAPI(
        title="Contract execution tracking / 合同执行跟踪",
        version="0.1.0",
        description="Every signed contract a durable Temporal workflow: milestones, payments, overdue items.",
        lifespan=lifespan,
        # Every route is judged by its rule in api/policy.py (authentication: AuthMiddleware).
        dependencies=[Depends(authorize)],
    )
    problems.install(app)
    app.include_router(meta.router)
    app.include_router(auth_routes.router)
    app.include_router(contracts.router)
    app.include_router(amendments.router)
    app.include_router(org.router)
    app.include_router(tasks.router)
    app.include_router(integrations_routes.router)
    app.include_router(webhooks_routes.router)
    app.include_router(analytics_routes.router)
    app.include_router(documents_routes.router)
    app.include_router(audit_routes.router)
    app.include_router(pages_routes.router)  # the dashboard, /ui (not in the OpenAPI document)
    app.mount("/static", StaticFiles(directory=pages_routes.p.STATIC_DIR), name="static")
    audit.install(app)  # inside idempotency (a replay is not audited again) and inside AuthMiddleware
    idempotency.install(app)  # Idempotency-Key on POST/PATCH
    app.add_middleware(AuthMiddleware)  # outside idempotency: a stored response is only replayed to a caller
    guards.install(app)  # outermost of the two: NUL / lone surrogates refused (422) before anything
    openapi.install(app)  # problem+json, 400/422, the Idempotency-Key header in the document
    return app


def _ensure_admin(sessions, password: str) -> None:
    from core.seed import ensure_admin

    with sessions.begin() as session:
        ensure_admin(session, password)


async def _reconcile_forever(service: ContractService, settings: Settings) -> None:
    while True:
        await asyncio.sleep(max(1.0, settings.reconcile_after_seconds / 3))
        try:
            started = await service.reconcile_starting()
            if started:
                log.info("reconciler started %d stranded workflow(s)", started)
        except Exception:  # noqa: BLE001 - keep reconciling; the next round may succeed
            log.exception("reconciler round failed")


app = create_app()
