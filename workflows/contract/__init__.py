"""The contract engine: ``ContractWorkflow`` (workflow.py) over pure rule modules.

    schedule     due dates, working days, what fell due, the next deadline
    payments     payments, allocation, balance and credit
    milestones   completion, progress, waivers, hand-off
    amendments   checks, impact, application of approved changes
    reminders    reminder plans for the outbox, escalation levels
    renewal      the next term of an auto-renewing contract
    projection   the delta the read model has not seen yet
    journal      how rules report events, notices and items fallen due or resolved
    notices      what a notice says about an item
    queue        the helper behind the background loops
"""

from workflows.contract.workflow import (
    LEAN,
    MAX_PAYMENTS_PER_BATCH,
    ContractWorkflow,
    initial_search_attributes,
    initial_state,
    workflow_id_for,
)
from workflows.types import ContractWorkflowInput

__all__ = [
    "LEAN",
    "MAX_PAYMENTS_PER_BATCH",
    "ContractWorkflow",
    "ContractWorkflowInput",
    "initial_search_attributes",
    "initial_state",
    "workflow_id_for",
]
