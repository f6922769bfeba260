"""The worker's workflow runner: Temporal's sandbox, with less of its own overhead per task.

The sandbox (``SandboxedWorkflowRunner``) enters a workflow instance by ``exec`` of a small
piece of source, with ``sys.modules``, ``__import__`` and the restricted builtins swapped in
and out around it (about fourteen thread-local swaps each time).  It does that to activate the
workflow, and also for every payload it serialises or deserialises: the SDK asks the instance
which command the payload belongs to (``get_serialization_context``), about six times for an
update's task.  Two changes, neither to what runs *as the workflow*:

* each piece of glue source is compiled once (``exec`` of a string compiled it every time, and
  it is always one of the same five strings); the SDK runs the code object instead;
* the serialisation-context question goes straight to the SDK's instance: it is the SDK's own
  dictionary lookup of a pending command, no workflow code, so entering the sandbox for it
  protected nothing.

Workflow code still runs only inside the sandbox, with the same restrictions and passthrough
modules.  Measured with ``bench.payment --split`` (docs/benchmarks.md, eleventh round).

Both hook into private methods of the SDK's sandbox (``_Instance._run_code``, and the name
``__temporal_in_sandbox`` it keeps the instance under).  If an SDK release renames them, the
overrides fall back to the SDK's own path (slower, never wrong), and
tests/test_workflow_runner.py fails, so the change is noticed rather than its cost.
"""

from __future__ import annotations

import functools
from types import CodeType
from typing import TYPE_CHECKING, Any

from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import _runner as sandbox_runner

if TYPE_CHECKING:  # types only: a private module of the SDK
    from temporalio.converter import SerializationContext
    from temporalio.worker._command_aware_visitor import CommandInfo


@functools.lru_cache(maxsize=64)
def compiled(source: str) -> CodeType:
    """The sandbox's glue code, compiled once per distinct string (there are five)."""
    return compile(source, "workflow_sandbox.py", "exec")


class LeanSandboxInstance(sandbox_runner._Instance):
    """The SDK's sandboxed workflow instance, with the two changes above."""

    def get_serialization_context(self, command_info: CommandInfo | None) -> SerializationContext | None:
        # The SDK's lookup of which command a payload belongs to (a dict lookup in its own
        # instance): asked ~6 times a task, each time entering the sandbox for it (swapping
        # sys.modules, __import__ and the restricted builtins in and out).  Asked directly.
        in_sandbox: Any = self.globals_and_locals.get("__temporal_in_sandbox")
        if in_sandbox is None:
            return super().get_serialization_context(command_info)
        return in_sandbox.get_serialization_context(command_info)

    def _run_code(self, code: Any, **extra_globals: Any) -> None:
        # exec, which the SDK hands it to, takes a code object as well as a string.
        super()._run_code(compiled(code) if isinstance(code, str) else code, **extra_globals)  # type: ignore[arg-type]


class LeanSandboxRunner(SandboxedWorkflowRunner):
    """``SandboxedWorkflowRunner`` whose instances compile their glue code once and answer the
    serialisation-context question without entering the sandbox."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return LeanSandboxInstance(det, self.runner_class, self.restrictions)
