"""A contract that ran on the legacy engine moves to the lean one at its continue-as-new.

The saved ``v2_before_lean_continued_as_new_run`` history is a legacy run that began from a
legacy continue-as-new: its start input is what a legacy run carries over (the whole legacy
state, reminders already sent, unwritten events).  Started again today, that input lands on the
lean engine (the new run's first task records ``lean-engine-v1``) and the contract carries on:
same payments, same event numbering, nothing lost.
"""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from tests.conftest import running_worker
from tests.helpers import STARTED, closed_state, pay, state_of
from workflows.contract import ContractWorkflow, initial_search_attributes, workflow_id_for
from workflows.converter import data_converter
from workflows.types import ContractWorkflowInput, TerminateInput

HISTORY = Path(__file__).parent / "histories" / "v2_before_lean_continued_as_new_run.json"


def legacy_carry_over() -> ContractWorkflowInput:
    data = json.loads(HISTORY.read_text())
    history = WorkflowHistory.from_json(data["workflow_id"], data["history"])
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.continued_execution_run_id, "the saved run must have begun from a continue-as-new"
    return data_converter.payload_converter.from_payloads(started.input.payloads, [ContractWorkflowInput])[0]


async def test_a_legacy_run_continues_on_the_lean_engine(ts_env, settings, task_queue):
    carried = legacy_carry_over()
    legacy = carried.carried
    assert legacy is not None and legacy.spec.milestones and legacy.run >= 2
    paid_before = {p.reference for p in legacy.payments}
    carried.continue_as_new_after_events = 0
    async with running_worker(ts_env.client, settings, task_queue):
        handle = await ts_env.client.start_workflow(
            ContractWorkflow.run, carried, id=workflow_id_for(legacy.spec.contract_id), task_queue=task_queue,
            search_attributes=initial_search_attributes(legacy.spec))
        STARTED.append(handle)
        st = await state_of(handle)
        assert st.run == legacy.run + 1 and st.version >= legacy.version
        assert st.spec.milestones == [] and st.reminders_sent == []  # the lean shape: items once
        assert {p.reference for p in st.payments} == paid_before
        # A payment already recorded on the legacy engine is still recognised; a new one applies.
        old = next(iter(paid_before))
        assert not (await pay(handle, old, legacy.payments[0].amount, legacy.payments[0].received_at)).applied
        assert (await pay(handle, "AFTER-MOVE", "1.00", legacy.payments[0].received_at)).applied
        await handle.execute_update(ContractWorkflow.terminate, TerminateInput("moved and checked"))
        final = await closed_state(handle)
    assert final.status == "terminated"
    assert {p.reference for p in final.payments} == paid_before | {"AFTER-MOVE"}
    history = await handle.fetch_history()
    markers = [p.data for e in history.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
               for v in e.marker_recorded_event_attributes.details.values() for p in v.payloads]
    assert any(b"lean-engine-v1" in m for m in markers)
