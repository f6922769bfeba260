from datetime import timedelta

from temporalio import workflow


@workflow.defn(name="InvoiceDemo")
class InvoiceV3:
    @workflow.run
    async def run(self, amount: str) -> str:
        # Every run still open started under v2: the old branch is gone, the marker stays tolerated.
        workflow.deprecate_patch("credit-check")
        await workflow.execute_activity("check_credit", amount, start_to_close_timeout=timedelta(seconds=10))
        await workflow.execute_activity("issue_invoice", amount, start_to_close_timeout=timedelta(seconds=10))
        return "issued"
