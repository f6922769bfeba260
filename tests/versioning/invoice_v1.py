"""Three versions of one small workflow, as they would follow each other in deploys:
v1 issues an invoice; v2 adds a credit check before it behind ``workflow.patched``; v3 keeps
only the new logic behind ``workflow.deprecate_patch``.  See docs/versioning.md."""

from datetime import timedelta

from temporalio import workflow


@workflow.defn(name="InvoiceDemo")
class InvoiceV1:
    @workflow.run
    async def run(self, amount: str) -> str:
        await workflow.execute_activity("issue_invoice", amount, start_to_close_timeout=timedelta(seconds=10))
        return "issued"
