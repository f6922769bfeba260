"""An escalation cancelled while its notice is going out lets the notice finish, then closes.

The notice is a stand-in activity (the real one sends mail: tests/test_escalation.py) that holds
until the test lets it go, so the cancel lands mid-send, as when a payment arrives while the
reminder for it is being sent.  Before ``escalation-notice-finishes-v1`` the run closed at once and
the worker logged "Activity not found on completion" when the notice finished.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError
from temporalio.worker import Worker

from tests.helpers import save_history
from worker import WORKFLOW_RUNNER
from workflows.escalation import NOTICE_GRACE, EscalationWorkflow
from workflows.types import EscalationInput, EscalationLevel, NotifyRequest


class HeldNotice:
    """The notify activity, held mid-send until ``released``; counts its attempts."""

    def __init__(self) -> None:
        self.started, self.released, self.attempts = asyncio.Event(), asyncio.Event(), 0

    @activity.defn(name="notify")
    async def notify(self, request: NotifyRequest) -> dict[str, int]:
        self.attempts += 1
        self.started.set()
        await self.released.wait()  # no heartbeat, as the real activity: a cancel cannot reach it
        return {"sent": 1, "skipped": 0, "failed": 0}


async def _start(client, tq: str) -> WorkflowHandle:
    due = datetime.now(timezone.utc) - timedelta(days=4)
    return await client.start_workflow(
        EscalationWorkflow.run,
        EscalationInput(contract_id="c-esc", parent_workflow_id="contract-c-esc", item_type="milestone",
                        item_key="shipping", item_name="Shipping", owner="li.wei", department="sales",
                        due_at=due, levels=[EscalationLevel(after="P1D"), EscalationLevel(after="P30D")]),
        id=f"contract-c-esc/escalation/{tq}", task_queue=tq)


async def _closed_as_cancelled(handle: WorkflowHandle) -> tuple[list[int], timedelta]:
    """The closed run's event types, and how long it took to close once asked to cancel."""
    with pytest.raises(WorkflowFailureError) as raised:
        await asyncio.wait_for(handle.result(), 60)
    assert isinstance(raised.value.cause, CancelledError)
    events = (await handle.fetch_history()).events
    at = {e.event_type: e.event_time.ToDatetime() for e in events}
    took = at[EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED] - at[
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED]
    return [e.event_type for e in events], took


async def test_a_resolved_items_escalation_closes_after_its_notice_is_sent(dev_env):
    held = HeldNotice()
    tq = f"esc-cancel-{uuid.uuid4().hex[:6]}"
    async with Worker(dev_env.client, task_queue=tq, workflows=[EscalationWorkflow], activities=[held.notify],
                      workflow_runner=WORKFLOW_RUNNER):
        handle = await _start(dev_env.client, tq)
        await asyncio.wait_for(held.started.wait(), 30)
        await handle.cancel()  # the item was resolved while its notice was being sent
        await asyncio.sleep(1)
        assert (await handle.describe()).status.name == "RUNNING", "closed under its notice"
        held.released.set()
        types, _ = await _closed_as_cancelled(handle)
        await save_history(handle, "escalation_cancelled_mid_notice")
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in types  # the notice's outcome is in the history
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED not in types  # no cancel raced it
    assert types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1  # the next level never came
    assert types[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED
    assert held.attempts == 1


async def test_a_notice_retrying_a_broken_mail_server_holds_the_resolved_items_escalation_no_longer_than_the_grace(
        ts_env):
    attempts: list[datetime] = []

    @activity.defn(name="notify")
    async def failing_notify(request: NotifyRequest) -> dict[str, int]:
        attempts.append(datetime.now(timezone.utc))
        raise RuntimeError("mail server unreachable")  # transient: retried with back-off

    tq = f"esc-grace-{uuid.uuid4().hex[:6]}"
    async with Worker(ts_env.client, task_queue=tq, workflows=[EscalationWorkflow], activities=[failing_notify],
                      workflow_runner=WORKFLOW_RUNNER):
        handle = await _start(ts_env.client, tq)
        while not attempts:
            await asyncio.sleep(0.05)
        await handle.cancel()  # resolved while its notice is retrying
        types, waited = await _closed_as_cancelled(handle)
    assert NOTICE_GRACE <= waited < NOTICE_GRACE + timedelta(seconds=10), waited
    assert EventType.EVENT_TYPE_TIMER_FIRED in types  # the grace ran out ...
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED in types  # ... and only then was the notice cancelled
    assert types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1  # no next level
    assert 2 <= len(attempts) <= 8, attempts  # it kept trying during the grace, then stopped
