"""The FastAPI application: the front door for backend teams.  OpenAPI at /docs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from api.amendments import routes as amendments
from api.analytics import routes as analytics
from api.auth import routes as auth
from api.auth.middleware import AuthMiddleware
from api.auth.policy import authorize
from api.contracts import routes as contracts
from api.contracts.service import ContractService
from api.documents import routes as documents
from api.integrations import routes as integrations
from api.org import inbox_routes
from api.org import routes as org
from api.platform import audit, audit_routes, guards, idempotency, meta, openapi, problems
from api.ui import routes as ui
from api.ui.service import STATIC_DIR, problem_page
from api.webhooks import routes as webhooks
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
        # Database calls run in the loop's default executor (api/platform/database.py).  Its stock
        # size (CPUs + 4: 6 on 2 cores) let a handful of calls stuck on a database that stopped
        # answering hold up every other request's calls.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=settings.api_threads, thread_name_prefix="api-db"))
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
        # Every route is judged by its rule in api/auth/policy.py (authentication: AuthMiddleware).
        dependencies=[Depends(authorize)],
    )
    problems.install(app, page=problem_page)  # a person in the dashboard gets a page, not JSON
    include_routers(app, [
        meta.router, auth.router, contracts.router, amendments.router, org.router, inbox_routes.router,
        integrations.router, webhooks.router, analytics.router, documents.router, audit_routes.router,
        ui.router,  # the dashboard, /ui (not in the OpenAPI document)
    ])
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    audit.install(app)  # inside idempotency (a replay is not audited again) and inside AuthMiddleware
    idempotency.install(app)  # Idempotency-Key on POST/PATCH
    app.add_middleware(AuthMiddleware)  # outside idempotency: a stored response is only replayed to a caller
    guards.install(app)  # outermost of the two: NUL / lone surrogates refused (422) before anything
    openapi.install(app)  # problem+json, 400/422, the Idempotency-Key header in the document
    return app


def include_routers(app: FastAPI, routers: list[APIRouter]) -> None:
    """Serve ``routers``, and remember them: the authorisation check reads every route from them
    (api/auth/policy.py ``api_routes``)."""
    for router in routers:
        app.include_router(router)
    app.state.routers = routers


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
