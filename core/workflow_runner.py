"""The worker's workflow runner: Temporal's sandbox, with its glue code compiled once.

The sandbox (``SandboxedWorkflowRunner``) enters each workflow instance through ``exec`` of a
small piece of source: once to activate the workflow, and once more for every payload it
serialises or deserialises (the SDK asks the instance for the payload's serialisation context:
about six times for an update's task).  ``exec`` of a string compiles it first, every time, and
it is always one of the same five strings.  Here each string is compiled once and the code object
is run instead: the same code in the same sandbox, with the same restrictions and the same
passthrough modules.

Measured on this machine with ``bench.payment --split`` (same minutes, alternating): payment p50
1.58 / 1.58x the bare update without it, 1.50 / 1.51x with it (docs/benchmarks.md, eleventh round).

It overrides one private method of the SDK's sandbox (``_Instance._run_code``) and hands the
SDK's own implementation a code object where it passed a string (``exec`` takes either).  If an
SDK release renames that method, the override no longer applies and the stock sandbox runs as
before: tests/test_workflow_runner.py fails then, so the change is noticed rather than its cost.
"""

from __future__ import annotations

import functools
from types import CodeType
from typing import Any

from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import _runner as sandbox_runner


@functools.lru_cache(maxsize=64)
def compiled(source: str) -> CodeType:
    """The sandbox's glue code, compiled once per distinct string (there are five)."""
    return compile(source, "workflow_sandbox.py", "exec")


class _CompiledOnceInstance(sandbox_runner._Instance):
    def _run_code(self, code: Any, **extra_globals: Any) -> None:
        # exec, which the SDK hands it to, takes a code object as well as a string.
        super()._run_code(compiled(code) if isinstance(code, str) else code, **extra_globals)  # type: ignore[arg-type]


class CompiledOnceSandboxRunner(SandboxedWorkflowRunner):
    """``SandboxedWorkflowRunner`` whose instances run their glue code compiled once."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _CompiledOnceInstance(det, self.runner_class, self.restrictions)
