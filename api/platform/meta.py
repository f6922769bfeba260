"""Health, readiness and playbooks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter, Request
from sqlalchemy import text

from api.contracts import schemas
from api.platform.problems import problem_response
from core.playbooks import load_playbooks

router = APIRouter()


@router.get("/healthz", tags=["meta"])
async def healthz():
    """The process is up.  On the event loop, not in the thread pool: it answers while every
    pooled thread waits on a database that does not answer."""
    return {"status": "ok"}


# Each check's deadline: an orchestrator polling /readyz must hear "not ready", not wait.
READY_CHECK_SECONDS = 3


@router.get("/readyz", tags=["meta"])
async def readyz(request: Request):
    """Ready to serve: the database answers and Temporal answers (both asked at once, each
    given ``READY_CHECK_SECONDS``)."""
    state = request.app.state

    def select_one() -> None:
        with state.sessions() as session:
            session.execute(text("SELECT 1"))

    # The database is asked in a thread: a database that takes the connection and never answers
    # would otherwise hold the event loop, and every other request with it.
    database, temporal = await asyncio.gather(
        _check(asyncio.to_thread(select_one)), _check(state.temporal.service_client.check_health()))
    checks = {"database": database, "temporal": temporal}
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem_response(503, "not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items()), "/readyz",
                            slug="not-ready", checks=checks)


async def _check(probe: Awaitable[object]) -> str:
    try:
        await asyncio.wait_for(probe, timeout=READY_CHECK_SECONDS)
    except TimeoutError:
        return f"error: no answer within {READY_CHECK_SECONDS} s"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"error: {exc.__class__.__name__}"
    return "ok"


@router.get("/playbooks", response_model=list[schemas.PlaybookOut], tags=["playbooks"])
def playbooks():
    """The standard execution processes a contract can be created from."""
    return [
        schemas.PlaybookOut(
            name=b["name"], title=b.get("title", b["name"]), milestones=b["milestones"], installments=b.get("installments", [])
        )
        for b in load_playbooks().values()
    ]
