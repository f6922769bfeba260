"""The service's data converter: compact JSON that any Temporal tool reads, decoders built once,
and local activities' large inputs compressed (never what the history shows)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    WorkflowSerializationContext,
    value_to_type,
)

from tests.helpers import make_spec, monthly_installments
from workflows.contract import initial_state, schedule
from workflows.contract.journal import Journal
from workflows.contract.projection import Projector
from workflows.converter import COMPRESS_LOCAL_INPUT_OVER, data_converter
from workflows.types import ContractState, ContractWorkflowInput, ProjectionDelta

NOW = datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc)


def _activity(local: bool) -> ActivitySerializationContext:
    return ActivitySerializationContext(namespace="default", activity_id="1", activity_type="project_delta",
                                        activity_task_queue="q", workflow_id="w", workflow_type="ContractWorkflow",
                                        is_local=local)


def _first_delta() -> ProjectionDelta:
    state = initial_state(make_spec(NOW))
    schedule.date_open_items(state, None)
    delta = Projector().delta(state, "contract-x", Journal(state, lambda: NOW), NOW)
    assert delta is not None
    return delta


def test_defaults_are_left_out_and_come_back():
    spec = make_spec(NOW)
    payload = data_converter.payload_converter.to_payloads([ContractWorkflowInput(spec)])[0]
    raw = json.loads(payload.data)
    assert set(raw) == {"spec"}  # carried, pending_*, continue_as_new_after_events: all defaults
    assert payload.metadata["encoding"] == b"json/plain"
    back = data_converter.payload_converter.from_payloads([payload], [ContractWorkflowInput])[0]
    assert back == ContractWorkflowInput(spec)


def test_fast_decoders_agree_with_temporals():
    state = initial_state(make_spec(NOW, installments=monthly_installments("120000.00")))
    schedule.date_open_items(state, None)
    raw = json.loads(data_converter.payload_converter.to_payloads([state])[0].data)
    ours = data_converter.payload_converter.from_payloads(
        data_converter.payload_converter.to_payloads([state]), [ContractState])[0]
    assert ours == state
    # Temporal's own decoder reads the compact form too (a default converter, say in a tool).
    theirs = value_to_type(ContractState, raw)
    assert theirs == state


def test_a_local_activitys_large_input_is_compressed_and_nothing_else_is():
    delta = _first_delta()
    plain = data_converter.payload_converter.to_payloads([delta])[0]
    assert len(plain.data) > COMPRESS_LOCAL_INPUT_OVER
    local = data_converter.with_context(_activity(local=True)).payload_converter
    packed = local.to_payloads([delta])[0]
    assert packed.metadata["encoding"] == b"json/plain+zlib"
    assert len(packed.data) * 4 < len(plain.data)
    # Decoded wherever it is met: by the activity's converter, or one with no context at all.
    assert local.from_payloads([packed], [ProjectionDelta])[0] == delta
    assert data_converter.payload_converter.from_payloads([packed], [ProjectionDelta])[0] == delta
    # What goes into the history stays plain JSON: a regular activity's input, a workflow's own.
    for context in (_activity(local=False), WorkflowSerializationContext(namespace="default", workflow_id="w")):
        p = data_converter.with_context(context).payload_converter.to_payloads([delta])[0]
        assert p.metadata["encoding"] == b"json/plain"
    # A small local input (a payment's delta) is not worth compressing; neither is a non-dataclass.
    small = ProjectionDelta(delta.contract_id, delta.workflow_id, delta.version + 1, delta.facts)
    assert local.to_payloads([small])[0].metadata["encoding"] == b"json/plain"
    assert local.to_payloads([{"k": "v" * 5000}])[0].metadata["encoding"] == b"json/plain"
    assert local.to_payloads([None])[0].metadata["encoding"] == b"binary/null"


def test_a_default_converter_reads_what_ours_writes_plain():
    spec = make_spec(NOW)
    payload = data_converter.payload_converter.to_payloads([spec])[0]
    assert DataConverter.default.payload_converter.from_payloads([payload], [type(spec)])[0] == spec
