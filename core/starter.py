"""Starting a contract's workflow: shared by the API (new contracts, the reconciler) and the
renewal activity (the next term of an auto-renewing contract), so both start it the same way."""

from __future__ import annotations

from datetime import datetime, timezone

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from workflows.contract import ContractWorkflow, ContractWorkflowInput, initial_search_attributes, workflow_id_for
from workflows.types import ContractSpec


async def start_contract_workflow(client: Client, spec: ContractSpec, task_queue: str) -> str:
    """Starts ``contract-<id>``; starting it again is a no-op (the running one is kept)."""
    handle = await client.start_workflow(
        ContractWorkflow.run,
        ContractWorkflowInput(spec=spec),
        id=workflow_id_for(spec.contract_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=initial_search_attributes(spec, datetime.now(timezone.utc)),
        memo={"title": spec.title, "customer": spec.customer_name, "currency": spec.currency, "amount": spec.amount},
        static_summary=f"{spec.title} · {spec.customer_name} · {spec.amount} {spec.currency}",
    )
    return handle.id
