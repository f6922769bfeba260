"""Replay every saved history with today's workflow code: a deploy must not break running contracts.

Histories live in tests/histories/ (re-record with RECORD_HISTORIES=1 only when a change is
*meant* to be incompatible, and guard that change with workflow.patched).  The replayer uses
the production data converter and the worker's sandbox (workflows passed through).

``v0_``/``v1_``/``v2_before_lean_`` histories were written by the engine before
``lean-engine-v1`` (they replay on workflows/legacy/); the others by the lean engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from worker import WORKFLOW_RUNNER, WORKFLOWS
from workflows.converter import data_converter

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_there_are_histories_to_replay():
    assert len(HISTORIES) >= 5, "tests/histories lost its saved runs"


def load(path: Path) -> WorkflowHistory:
    data = json.loads(path.read_text())
    if "workflow_id" in data:  # recorded with its workflow id (child ids derive from it)
        return WorkflowHistory.from_json(data["workflow_id"], data["history"])
    return WorkflowHistory.from_json(path.stem, data)


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_saved_history_replays(path: Path):
    await Replayer(workflows=WORKFLOWS, workflow_runner=WORKFLOW_RUNNER,
                   data_converter=data_converter).replay_workflow(load(path))


def test_both_engines_have_saved_histories():
    legacy = [p for p in HISTORIES if p.stem.startswith(("v0_", "v1_", "v2_before_lean_"))]
    lean = [p for p in HISTORIES if p not in legacy]
    assert len(legacy) >= 10 and len(lean) >= 10, (len(legacy), len(lean))
    for path in lean:
        history = load(path)
        if history.events[0].workflow_execution_started_event_attributes.workflow_type.name != "ContractWorkflow":
            continue
        markers = [p.data for e in history.events if e.HasField("marker_recorded_event_attributes")
                   for v in e.marker_recorded_event_attributes.details.values() for p in v.payloads]
        assert any(b"lean-engine-v1" in m for m in markers), f"{path.name} was not written by the lean engine"


@pytest.mark.parametrize("engine", ["legacy", "lean"])
async def test_a_changed_workflow_is_caught(monkeypatch, engine):
    """Plant a non-determinism (an activity scheduled where none was) and expect replay to fail,
    on a history of each engine."""
    from datetime import timedelta

    from temporalio import workflow

    from workflows.contract.journal import Journal
    from workflows.legacy.contract import LegacyContract

    def planted():
        workflow.start_activity("project_contract", None, start_to_close_timeout=timedelta(seconds=1))

    if engine == "legacy":
        original = LegacyContract._emit

        def reordered(self, type_, data, actor="system"):
            original(self, type_, data, actor)
            if type_ == "payment.received":
                planted()

        monkeypatch.setattr(LegacyContract, "_emit", reordered)
        name = "v2_before_lean_goods_sale_one_year_completed"
    else:
        original_emit = Journal.emit

        def emit(self, type_, data, actor="system"):
            event = original_emit(self, type_, data, actor)
            if type_ == "payment.received":
                planted()
            return event

        monkeypatch.setattr(Journal, "emit", emit)
        name = "goods_sale_one_year_completed"
    history = load(next(p for p in HISTORIES if p.stem == name))
    # Unsandboxed so the monkeypatch is seen: the sandbox re-imports workflow modules afresh.
    replayer = Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner(), data_converter=data_converter)
    with pytest.raises(Exception, match="[Nn]ondetermin"):
        await replayer.replay_workflow(history)


def test_every_workflow_type_has_saved_histories():
    types = set()
    for path in HISTORIES:
        history = load(path)
        first = history.events[0]
        types.add(first.workflow_execution_started_event_attributes.workflow_type.name)
    # The name each class registers under (temporalio keeps its definition on the class).
    assert types == {w.__temporal_workflow_definition.name for w in WORKFLOWS}, types  # type: ignore[attr-defined]


def test_lean_runs_upsert_search_attributes_at_most_once_per_task():
    """The lean engine sets its search attributes once per workflow task, and only when a value
    changed (TemporalChangeVersion is the SDK's own, once per patch)."""
    from temporalio.api.enums.v1 import EventType

    checked = 0
    for path in HISTORIES:
        if path.stem.startswith(("v0_", "v1_", "v2_before_lean_")):
            continue
        history = load(path)
        if history.events[0].workflow_execution_started_event_attributes.workflow_type.name != "ContractWorkflow":
            continue
        per_task: list[int] = []
        for e in history.events:
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                per_task.append(0)
            elif e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
                keys = set(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
                if keys != {"TemporalChangeVersion"}:
                    per_task[-1] += 1
        assert max(per_task) <= 1, (path.name, per_task)
        checked += 1
    assert checked >= 8
