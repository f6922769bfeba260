"""An update Temporal lost is re-sent, never reported as "contract is closed".

When a worker dies while reporting the workflow task that carried an update, the server cannot
tell whether its write landed; it reloads the workflow and an update it had not yet made durable
is gone: the client's poll for the outcome answers NOT_FOUND ("update ... not found") although
the workflow runs on.  The API used to turn every NOT_FOUND into "409 contract is closed"; a
caller retrying after a 503 took that 409 for "already done", and the milestone was never
completed (the worker-kill fault test stalled on it in CI, twice).

The loss itself cannot be caused on demand, so the first send here *is* a poll for an update id
the workflow never received: the real server's real answer for a lost update.  Everything else
is real too: the time-skipping server, the worker, the workflow.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from temporalio.service import RPCError, RPCStatusCode

from core.temporal import UpdateLost, execute_update_retrying, update_was_lost
from tests.conftest import running_worker
from tests.helpers import make_spec, start_contract, state_of
from workflows.contract import ContractWorkflow
from workflows.types import CompleteMilestoneInput, PaymentInput, TerminateInput


class LosesTheFirstSends:
    """A workflow handle whose first ``lose`` sends are lost by the server: each is answered with
    what the server says when the client polls for an update it does not have.  The ids of every
    send are recorded."""

    def __init__(self, handle, lose: int) -> None:
        self._handle = handle
        self.lose = lose
        self.ids: list[str] = []
        self.id = handle.id

    async def execute_update(self, update, arg, *, id: str, rpc_timeout=None):
        self.ids.append(id)
        if len(self.ids) <= self.lose:
            await self._handle.get_update_handle(f"never-sent-{uuid.uuid4().hex}").result()
            raise AssertionError("the server found an update that was never sent")
        return await self._handle.execute_update(update, arg, id=id, rpc_timeout=rpc_timeout)

    async def describe(self):
        return await self._handle.describe()


async def test_a_lost_update_is_sent_again_under_the_same_id_and_applied_once(ts_env, settings, task_queue):
    now = datetime.now(timezone.utc)
    async with running_worker(ts_env.client, settings, task_queue):
        handle = await start_contract(ts_env.client, make_spec(now), task_queue)

        # What the server answers for a lost update on a running workflow.
        with pytest.raises(RPCError) as lost:
            await handle.get_update_handle("never-sent").result()
        assert lost.value.status == RPCStatusCode.NOT_FOUND and "not found" in lost.value.message
        assert await update_was_lost(handle, lost.value)

        flaky = LosesTheFirstSends(handle, lose=2)
        result = await execute_update_retrying(flaky, ContractWorkflow.record_payment,
                                               PaymentInput("BANK-1", "100.00", "CNY", now))
        assert result.applied and len(flaky.ids) == 3 and len(set(flaky.ids)) == 1, flaky.ids
        st = await state_of(handle)
        assert [p.reference for p in st.payments] == ["BANK-1"]

        # The same update id again (a send that did land after all): the server answers with
        # the first outcome; nothing is applied twice.
        again = await handle.execute_update(ContractWorkflow.record_payment,
                                            PaymentInput("BANK-1", "100.00", "CNY", now), id=flaky.ids[0])
        assert again.applied  # the recorded outcome of that very update, not a second application
        assert [p.reference for p in (await state_of(handle)).payments] == ["BANK-1"]

        # Lost every time: the caller hears "lost" (the API answers 503: send it again), not "closed".
        hopeless = LosesTheFirstSends(handle, lose=99)
        with pytest.raises(UpdateLost):
            await execute_update_retrying(hopeless, ContractWorkflow.complete_milestone,
                                          CompleteMilestoneInput("order_review", "owner"), attempts=3)
        assert len(hopeless.ids) == 3
        order_review = next(m for m in (await state_of(handle)).milestones if m.key == "order_review")
        assert order_review.status != "done"

        # A closed workflow's NOT_FOUND means closed: not re-sent.
        await handle.execute_update(ContractWorkflow.terminate, TerminateInput("test over"))
        await handle.result()
        closed = LosesTheFirstSends(handle, lose=1)
        with pytest.raises(RPCError) as gone:
            await execute_update_retrying(closed, ContractWorkflow.record_payment,
                                          PaymentInput("BANK-2", "1.00", "CNY", now), client=ts_env.client)
        assert gone.value.status == RPCStatusCode.NOT_FOUND and len(closed.ids) == 1


@pytest.mark.devserver
async def test_no_worker_means_a_prompt_retryable_answer_not_a_hanging_request(dev_env, settings, task_queue):
    """No worker polls the contract's queue: the update is asked for twice (same id), each wait
    bounded by the API's update timeout, then the caller hears "timed out" (the API: 503)."""
    import time

    from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

    now = datetime.now(timezone.utc)
    handle = await start_contract(dev_env.client, make_spec(now), task_queue)  # nobody polls this queue
    sends: list[str] = []

    class Recording:
        id = handle.id

        async def execute_update(self, update, arg, *, id: str, rpc_timeout=None):
            sends.append(id)
            return await handle.execute_update(update, arg, id=id, rpc_timeout=rpc_timeout)

        async def describe(self):
            return await handle.describe()

    started = time.monotonic()
    with pytest.raises(WorkflowUpdateRPCTimeoutOrCancelledError):
        await execute_update_retrying(Recording(), ContractWorkflow.record_payment,
                                      PaymentInput("BANK-9", "1.00", "CNY", now), rpc_timeout=timedelta(seconds=1))
    elapsed = time.monotonic() - started
    assert len(sends) == 2 and len(set(sends)) == 1, sends
    assert elapsed < 10, f"the caller waited {elapsed:.1f}s"

    # A worker comes up: the update the caller gave up on is applied once, under its id.
    async with running_worker(dev_env.client, settings, task_queue):
        result = await handle.execute_update(ContractWorkflow.record_payment,
                                             PaymentInput("BANK-9", "1.00", "CNY", now), id=sends[0])
        st = await state_of(handle)
    assert [p.reference for p in st.payments] == ["BANK-9"] and result.outstanding
