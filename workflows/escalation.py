"""EscalationWorkflow: chases one overdue item up its escalation chain.

A child of the contract workflow, one per overdue item (id
``contract-<id>/escalation/<item_type>/<key>/<due epoch>``), so operators see it under its
parent in the Temporal UI.  It sleeps until each level's time (due + ``after``), notifies that
level's recipients, and ends when the chain is exhausted.  The parent cancels it the moment the
item is resolved (paid, done, waived, date moved, contract closed); a cancelled escalation never
notifies again, and the parent-close policy means it never outlives its parent.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from core.durations import add_duration
    from workflows.activities import notify
    from workflows.types import EscalationInput, NotifyRequest


def escalation_workflow_id(parent_id: str, item_type: str, key: str, due_epoch: int) -> str:
    return f"{parent_id}/escalation/{item_type}/{key}/{due_epoch}"


@workflow.defn
class EscalationWorkflow:
    def __init__(self) -> None:
        self.level = 0  # levels notified so far

    @workflow.query
    def current_level(self) -> int:
        return self.level

    @workflow.run
    async def run(self, e: EscalationInput) -> int:
        for index, level in enumerate(e.levels, start=1):
            fire_at = add_duration(e.due_at, level.after)
            delay = fire_at - workflow.now()
            if delay > timedelta(0):
                await workflow.sleep(delay)
            days = max(0, (workflow.now() - e.due_at).days)
            await workflow.execute_activity(
                notify,
                NotifyRequest(
                    contract_id=e.contract_id,
                    kind="escalation",
                    item_type=e.item_type,
                    item_key=e.item_key,
                    item_name=e.item_name,
                    owner=e.owner,
                    department=e.department,
                    due_at=e.due_at,
                    level=index,
                    to=list(level.to),
                    cc=list(level.cc),
                    channels=list(level.channels),
                    days=days,
                    contract_title=e.contract_title,
                    customer=e.customer,
                    amount=e.amount,
                    currency=e.currency,
                ),
                start_to_close_timeout=timedelta(seconds=25),  # SMTP and webhook calls time out at 10 s
                # Transient SMTP/webhook failures retry with backoff; permanent ones are
                # non-retryable errors recorded by the activity.  Nothing retries forever.
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=5), maximum_attempts=20),
            )
            self.level = index
        return self.level
