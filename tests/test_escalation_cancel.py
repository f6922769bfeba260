"""An escalation cancelled while its notice is going out waits for the notice, then closes.

Real dev server.  The notice is a stand-in activity (the real one sends mail: tests/
test_escalation.py) that holds until the test lets it finish, so the cancel lands mid-send.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.worker import Worker

from tests.helpers import save_history
from worker import WORKFLOW_RUNNER
from workflows.escalation import EscalationWorkflow
from workflows.types import EscalationInput, EscalationLevel, NotifyRequest


async def test_an_escalation_cancelled_mid_notice_closes_after_the_notice_is_recorded(dev_env):
    started, release = asyncio.Event(), asyncio.Event()

    @activity.defn(name="notify")
    async def slow_notify(request: NotifyRequest) -> dict[str, int]:
        started.set()
        await release.wait()  # the mail server is slow; no heartbeat, as the real activity
        return {"sent": 1}

    tq = f"esc-cancel-{uuid.uuid4().hex[:6]}"
    due = datetime.now(timezone.utc) - timedelta(days=4)
    async with Worker(dev_env.client, task_queue=tq, workflows=[EscalationWorkflow], activities=[slow_notify],
                      workflow_runner=WORKFLOW_RUNNER):
        handle = await dev_env.client.start_workflow(
            EscalationWorkflow.run,
            EscalationInput(contract_id="c-esc", parent_workflow_id="contract-c-esc", item_type="milestone",
                            item_key="shipping", item_name="Shipping", owner="li.wei", department="sales",
                            due_at=due, levels=[EscalationLevel(after="P1D"), EscalationLevel(after="P30D")]),
            id=f"contract-c-esc/escalation/{tq}", task_queue=tq)
        await asyncio.wait_for(started.wait(), 30)
        await handle.cancel()  # the item was resolved while its notice was being sent
        await asyncio.sleep(1)
        assert (await handle.describe()).status.name == "RUNNING", "closed before its notice finished"
        release.set()
        with pytest.raises(WorkflowFailureError) as raised:
            await asyncio.wait_for(handle.result(), 30)
        assert isinstance(raised.value.cause, CancelledError)
        types = [e.event_type for e in (await handle.fetch_history()).events]
        await save_history(handle, "escalation_cancelled_mid_notice")
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in types  # the notice's outcome is kept
    assert types[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED
    assert types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1  # the next level never came
