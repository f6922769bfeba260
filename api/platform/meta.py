"""Health, readiness and playbooks."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from sqlalchemy import text

from api.contracts import schemas
from api.platform.problems import problem_response
from core.playbooks import load_playbooks

router = APIRouter()


@router.get("/healthz", tags=["meta"])
def healthz():
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["meta"])
async def readyz(request: Request):
    """Ready to serve: the database answers and Temporal answers."""
    checks: dict[str, str] = {}
    try:
        with request.app.state.sessions() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        await asyncio.wait_for(request.app.state.temporal.service_client.check_health(), timeout=3)
        checks["temporal"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["temporal"] = f"error: {exc.__class__.__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem_response(503, "not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items()), "/readyz",
                            slug="not-ready", checks=checks)


@router.get("/playbooks", response_model=list[schemas.PlaybookOut], tags=["playbooks"])
def playbooks():
    """The standard execution processes a contract can be created from."""
    return [
        schemas.PlaybookOut(
            name=b["name"], title=b.get("title", b["name"]), milestones=b["milestones"], installments=b.get("installments", [])
        )
        for b in load_playbooks().values()
    ]
