"""The ``start_renewal`` activity: the next term of an auto-renewing contract, as a new contract.

Idempotent: the next contract's id is fixed by the old workflow before the activity runs, the
row is written only if missing, and starting a workflow that already runs keeps the running one.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.client import Client

from core.starter import start_contract_workflow
from models import Contract
from models.repository import new_contract_row
from workflows.contract import workflow_id_for
from workflows.types import RenewalRequest


class RenewalActivities:
    def __init__(self, client: Client, sessions: sessionmaker[Session]) -> None:
        self._client = client
        self._sessions = sessions

    @activity.defn(name="start_renewal")
    async def start_renewal(self, r: RenewalRequest) -> str:
        await asyncio.to_thread(self._write_row, r)
        # Same task queue as the contract being renewed (the activity runs on it).
        workflow_id = await start_contract_workflow(self._client, r.spec, r.task_queue or activity.info().task_queue)
        await asyncio.to_thread(self._mark_active, r.spec.contract_id)
        return workflow_id

    def _write_row(self, r: RenewalRequest) -> None:
        with self._sessions.begin() as session:
            if session.get(Contract, r.spec.contract_id) is None:
                new_contract_row(session, r.spec, workflow_id=workflow_id_for(r.spec.contract_id),
                                 status="starting", version=0, now=datetime.now(timezone.utc))

    def _mark_active(self, contract_id: str) -> None:
        with self._sessions.begin() as session:
            row = session.get(Contract, contract_id)
            if row is not None and row.status == "starting":
                row.status = "active"
