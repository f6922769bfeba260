from datetime import timedelta

from temporalio import workflow


@workflow.defn(name="InvoiceDemo")
class InvoiceV2:
    @workflow.run
    async def run(self, amount: str) -> str:
        if workflow.patched("credit-check"):
            # New runs check credit first; runs started under v1 replay without it.
            await workflow.execute_activity("check_credit", amount, start_to_close_timeout=timedelta(seconds=10))
        await workflow.execute_activity("issue_invoice", amount, start_to_close_timeout=timedelta(seconds=10))
        return "issued"
