"""core/workflow_runner.py: the worker's sandbox compiles its glue code once and answers the
serialisation-context question directly, and is still the sandbox (the same restrictions and
passthrough modules).  Fails if an SDK release renames what the runner hooks into."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from temporalio.converter import WorkflowSerializationContext
from temporalio.worker import Replayer, WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from core.workflow_runner import LeanSandboxInstance, LeanSandboxRunner, compiled
from tests.test_replay import load
from worker import WORKFLOW_RUNNER, WORKFLOWS
from workflows.contract import ContractWorkflow
from workflows.converter import data_converter

HISTORY = Path(__file__).parent / "histories" / "api_projection_refresh_once_paid_and_completed.json"
SDK_INSTANCE: Any = LeanSandboxInstance.__bases__[0]  # the SDK's sandboxed instance


def test_the_sdk_still_runs_its_glue_code_where_the_override_hooks_in():
    """An SDK release that renames ``_run_code`` would leave the override unused (the stock
    sandbox, compiling each time): this says so, rather than a benchmark months later."""
    assert "_run_code" in vars(SDK_INSTANCE) and "get_serialization_context" in vars(SDK_INSTANCE)
    assert "_run_code" in vars(LeanSandboxInstance)
    assert isinstance(WORKFLOW_RUNNER, LeanSandboxRunner) and isinstance(WORKFLOW_RUNNER, SandboxedWorkflowRunner)
    assert {"workflows", "core"} <= set(WORKFLOW_RUNNER.restrictions.passthrough_modules)  # the same sandbox


async def test_a_replayed_run_compiles_each_piece_of_glue_once():
    compiled.cache_clear()
    await Replayer(workflows=WORKFLOWS, workflow_runner=WORKFLOW_RUNNER,
                   data_converter=data_converter).replay_workflow(load(HISTORY))
    info = compiled.cache_info()
    assert info.misses == info.currsize <= 6, info  # each of the few strings compiled once
    assert info.hits > info.misses, info  # and run again for every activation after


async def test_the_serialisation_context_is_the_sandboxed_one():
    """Asked of the instance directly, the context of a payload is what the sandbox answers."""
    made: list[tuple[WorkflowInstance, WorkflowInstanceDetails]] = []

    class Recording(LeanSandboxRunner):
        def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
            instance = super().create_instance(det)
            made.append((instance, det))
            return instance

    # The SDK's own check of a workflow definition makes an instance (with made-up run details).
    Recording(restrictions=WORKFLOW_RUNNER.restrictions).prepare_workflow(
        ContractWorkflow.__temporal_workflow_definition)  # type: ignore[attr-defined]
    [(instance, det)] = made
    assert isinstance(instance, LeanSandboxInstance)
    assert instance.globals_and_locals.get("__temporal_in_sandbox") is not None  # the direct path is live
    direct = instance.get_serialization_context(None)
    sandboxed = SDK_INSTANCE.get_serialization_context(instance, None)
    assert direct == sandboxed == WorkflowSerializationContext(namespace=det.info.namespace,
                                                               workflow_id=det.info.workflow_id)
