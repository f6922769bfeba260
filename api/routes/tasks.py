"""The task inbox and each contract's notification log."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from api import schemas
from api.routes.org import ERRORS, Store
from core import org

router = APIRouter(tags=["inbox"])
TaskId = Annotated[int, Path(ge=1, le=schemas.MAX_INT, description="Task id")]
ContractId = Annotated[str, Path(min_length=1, max_length=40, description="Contract id")]


@router.get("/tasks", response_model=list[schemas.TaskOut])
def list_tasks(
    store: Store,
    assignee: Annotated[str | None, Query(max_length=100, description="User id")] = None,
    status_: Annotated[Literal["open", "acked", "done"] | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
):
    """A person's inbox (or everyone's), newest first."""
    with store.transaction() as session:
        return org.list_tasks(session, assignee=assignee, status=status_, limit=limit)


@router.post("/tasks/{task_id}/ack", response_model=schemas.TaskOut, responses=ERRORS)
def ack_task(task_id: TaskId, body: schemas.TaskAck, store: Store):
    """Acknowledge an open task.  404 if unknown, 409 if it is not open."""
    with store.transaction() as session:
        return org.ack_task(session, task_id, body.by)


@router.get("/contracts/{contract_id}/notifications", response_model=list[schemas.NotificationOut], responses=ERRORS)
def contract_notifications(contract_id: ContractId, store: Store):
    """Every reminder, escalation and hand-off decided for the contract, oldest first, with
    whether it was sent."""
    with store.transaction() as session:
        return org.contract_notifications(session, contract_id)
