"""Replay every saved history with today's workflow code: a deploy must not break running contracts.

Histories live in tests/histories/ (re-record with RECORD_HISTORIES=1 only when a change is
*meant* to be incompatible, and guard that change with workflow.patched).  The replayer uses
the production data converter and the default sandbox, as the worker does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from worker import WORKFLOWS

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
    await Replayer(workflows=WORKFLOWS).replay_workflow(load(path))


async def test_a_changed_workflow_is_caught(monkeypatch):
    """Plant a non-determinism (a projection scheduled in another order) and expect replay to fail."""
    from workflows import contract

    original = contract.ContractWorkflow._emit

    def reordered(self, type_, data, actor="system"):
        original(self, type_, data, actor)
        if type_ == "payment.received":
            contract.workflow.start_activity(
                "project_contract", None, start_to_close_timeout=contract.timedelta(seconds=1)
            )

    monkeypatch.setattr(contract.ContractWorkflow, "_emit", reordered)
    path = next(p for p in HISTORIES if p.stem == "goods_sale_one_year_completed")
    history = load(path)
    # Unsandboxed so the monkeypatch is seen: the sandbox re-imports workflow modules afresh.
    replayer = Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner())
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
