"""The task inbox and each contract's notification log."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request

from api.auth.policy import forbidden, principal_of, stamp
from api.org import schemas
from api.org.routes import ERRORS
from api.org.service import Store
from api.platform.fields import MAX_INT
from core import org
from models import Task

router = APIRouter(tags=["inbox"])
TaskId = Annotated[int, Path(ge=1, le=MAX_INT, description="Task id")]
ContractId = Annotated[str, Path(min_length=1, max_length=40, description="Contract id")]


@router.get("/tasks", response_model=list[schemas.TaskOut])
def list_tasks(
    request: Request,
    store: Store,
    assignee: Annotated[str | None, Query(max_length=100, description="User id")] = None,
    status_: Annotated[Literal["open", "acked", "done"] | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
):
    """A person's inbox, newest first: your own by default; a manager may name someone in their
    team; an admin anyone (or, with no ``assignee``, everyone's)."""
    p = principal_of(request)
    if not p.is_admin:
        assignee = assignee or p.id
        if assignee not in p.people:
            raise forbidden(f"you may read your own and your team's tasks, not {assignee}'s")
    with store.transaction() as session:
        return org.list_tasks(session, assignee=assignee, status=status_, limit=limit)


@router.post("/tasks/{task_id}/ack", response_model=schemas.TaskOut, responses=ERRORS)
def ack_task(task_id: TaskId, body: schemas.TaskAck, store: Store, request: Request):
    """Acknowledge an open task (yours, or your team's as their manager).  404 if unknown, 409 if
    it is not open."""
    p = principal_of(request)
    body = stamp(request, body)
    with store.transaction() as session:
        task = session.get(Task, task_id)
        if task is not None and not p.is_admin and task.assignee not in p.people:
            # Someone else's task: not found, like one that does not exist (ids cannot be probed).
            raise org.NotFound(f"no task with id {task_id}", slug="task-not-found")
        return org.ack_task(session, task_id, body.by or p.id)  # stamped: the caller, or whom an admin names


@router.get("/contracts/{contract_id}/notifications", response_model=list[schemas.NotificationOut], responses=ERRORS)
def contract_notifications(contract_id: ContractId, store: Store):
    """Every reminder, escalation and hand-off decided for the contract, oldest first, with
    whether it was sent."""
    with store.transaction() as session:
        return org.contract_notifications(session, contract_id)
