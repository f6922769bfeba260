"""EscalationWorkflow: chases one overdue item up its escalation chain.

A child of the contract workflow, one per overdue item (id
``contract-<id>/escalation/<item_type>/<key>/<due epoch>``), so operators see it under its
parent in the Temporal UI.  It sleeps until each level's time (due + ``after``), notifies that
level's recipients, and ends when the chain is exhausted.  The parent cancels it the moment the
item is resolved (paid, done, waived, date moved, contract closed); a cancelled escalation never
notifies again, and the parent-close policy means it never outlives its parent.

Cancelled while a notice is going out, it lets that notice finish (for at most ``NOTICE_GRACE``)
before it closes (``escalation-notice-finishes-v1``): the notify activity does not heartbeat, so a
cancel could never stop it mid-send anyway, and a run that closed under it left the worker logging
"Activity not found on completion" for each such notice (18 on a first start with the demo data).
No cancel is sent for the notice unless the grace runs out, so there is no cancel to race the
notice's completion (what sank an earlier try that waited with WAIT_CANCELLATION_COMPLETED).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from core.durations import add_duration
    from workflows.activities import notify
    from workflows.types import EscalationInput, NotifyRequest


NOTICE_FINISHES = "escalation-notice-finishes-v1"
# The longest a resolved item's escalation waits for its in-flight notice: one attempt's
# start-to-close timeout and a margin.  A notice still retrying after that is cancelled.
NOTICE_TIMEOUT = timedelta(seconds=25)  # SMTP and webhook calls time out at 10 s
NOTICE_GRACE = NOTICE_TIMEOUT + timedelta(seconds=5)


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
            notice = workflow.start_activity(
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
                start_to_close_timeout=NOTICE_TIMEOUT,
                # Transient SMTP/webhook failures retry with backoff; permanent ones are
                # non-retryable errors recorded by the activity.  Nothing retries forever.
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=5), maximum_attempts=20),
            )
            if not workflow.patched(NOTICE_FINISHES):
                await notice  # runs from before the patch: a cancel reaches the notice (TRY_CANCEL)
            else:
                try:
                    await asyncio.wait([notice])  # a cancel of this run does not reach the notice
                except asyncio.CancelledError:
                    # Resolved while this notice goes out: let it finish, then close as cancelled.
                    await _let_finish(notice)
                    raise
                notice.result()  # its failure, if it failed
            self.level = index
        return self.level


async def _let_finish(notice: asyncio.Task) -> None:
    """Wait for ``notice`` for at most NOTICE_GRACE; past that, cancel it (a notice retrying a
    broken mail server must not hold a resolved item's escalation open for its whole back-off)."""
    grace = asyncio.create_task(workflow.sleep(NOTICE_GRACE))
    await asyncio.wait([notice, grace], return_when=asyncio.FIRST_COMPLETED)
    if notice.done():
        grace.cancel()
        if not notice.cancelled():
            notice.exception()  # retrieved: a notice that failed is the activity's own record, not this run's
    else:
        notice.cancel()
