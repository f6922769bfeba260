"""core/workflow_runner.py: the worker's sandbox compiles its glue code once, and still is the
sandbox (restricted, with the same passthrough modules)."""

from __future__ import annotations

from pathlib import Path

from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import _runner as sandbox_runner

from core.workflow_runner import LeanSandboxRunner, _LeanInstance, compiled
from tests.test_replay import load
from worker import WORKFLOW_RUNNER, WORKFLOWS
from workflows.converter import data_converter

HISTORY = Path(__file__).parent / "histories" / "api_projection_refresh_once_paid_and_completed.json"


def test_the_sdk_still_runs_its_glue_code_where_the_override_hooks_in():
    """An SDK release that renames ``_Instance._run_code`` would leave the override unused (the
    stock sandbox, compiling each time): this says so, rather than a benchmark months later."""
    assert "_run_code" in vars(sandbox_runner._Instance)
    assert "_run_code" in vars(_LeanInstance)
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
    from temporalio.api.common.v1 import Payloads
    from temporalio.api.failure.v1 import Failure
    from temporalio.bridge.proto.workflow_activation import WorkflowActivation  # noqa: F401 - the SDK's types load
    from temporalio.converter import WorkflowSerializationContext
    from temporalio.worker import WorkflowInstanceDetails
    from temporalio.worker.workflow_sandbox._runner import _fake_info

    from workflows.contract import ContractWorkflow

    defn = ContractWorkflow.__temporal_workflow_definition  # type: ignore[attr-defined]
    instance = WORKFLOW_RUNNER.create_instance(WorkflowInstanceDetails(
        payload_converter_factory=data_converter._new_payload_converter,
        failure_converter_class=data_converter.failure_converter_class, interceptor_classes=[], defn=defn,
        info=_fake_info, randomness_seed=-1, extern_functions={}, disable_eager_activity_execution=False,
        worker_level_failure_exception_types=[], patch_activation_callback=None,
        last_completion_result=Payloads(), last_failure=Failure()))
    assert isinstance(instance, _LeanInstance)
    assert instance.globals_and_locals.get("__temporal_in_sandbox") is not None  # the direct path is live
    direct = instance.get_serialization_context(None)
    sandboxed = sandbox_runner._Instance.get_serialization_context(instance, None)
    assert direct == sandboxed == WorkflowSerializationContext(namespace=_fake_info.namespace,
                                                               workflow_id=_fake_info.workflow_id)
