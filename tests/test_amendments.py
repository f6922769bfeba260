"""Amendments on the time-skipping server: request, impact, approval by role, atomic application
(timers, escalations, reminders), versions and the supplementary agreement."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from models import ContractEvent, Document
from tests.conftest import running_worker
from tests.helpers import advance_to, mails_about, make_spec, pay, projected, save_history, start_contract, state_of
from workflows.contract import ContractWorkflow
from workflows.types import AmendmentChange, CompleteMilestoneInput, DecideAmendmentInput, RequestAmendmentInput


def _request(*changes: AmendmentChange, by: str = "li.wei", reason: str = "customer asked in writing",
             approvers: dict | None = None) -> RequestAmendmentInput:
    return RequestAmendmentInput(uuid.uuid4().hex[:12], by, reason, list(changes),
                                 approvers or {"manager": "zhang.min", "finance": "sun.li", "legal": "liu.yang"})


async def _decide(handle, aid: str, decision: str, by: str, role: str = "", comment: str = ""):
    return await handle.execute_update(ContractWorkflow.decide_amendment,
                                       DecideAmendmentInput(aid, decision, by, role, comment))


async def _refused(handle, update, arg) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(update, arg)
    assert isinstance(info.value.cause, ApplicationError) and info.value.cause.type
    return info.value.cause.type


def _events(org_db, cid: str, type_: str) -> list[ContractEvent]:
    with org_db() as s:
        return s.execute(select(ContractEvent).where(ContractEvent.contract_id == cid, ContractEvent.type == type_)
                         .order_by(ContractEvent.seq)).scalars().all()


async def test_moving_late_shipping_stops_its_escalation_and_reminds_on_the_new_dates(
    ts_env, env_settings, mailbox, org_db
):
    tq = f"amd-{uuid.uuid4().hex[:6]}"
    start = await ts_env.get_current_time()
    day = lambda n: start + timedelta(days=n)  # noqa: E731
    spec = make_spec(
        start, playbook=None, amount="80000.00",
        milestones=[
            {"key": "shipping", "name": "Shipping", "kind": "shipping", "owner": "li.wei", "department": "sales",
             "due_after": "P10D"},
            {"key": "acceptance", "name": "Customer acceptance", "kind": "customer_acceptance", "owner": "li.wei",
             "department": "sales", "due_after": "P5D", "after": "shipping"},
        ],
        installments=[{"key": "all", "due_after": "P90D", "amount": "80000.00"}],
    )
    cid = spec.contract_id
    async with running_worker(ts_env.client, env_settings, tq):
        handle = await start_contract(ts_env.client, spec, tq)
        await projected(org_db, spec.contract_id)  # its reminder plans are in the outbox
        # Shipping was due on day 10; on day 12 it is 2 days late and its escalation is running.
        await advance_to(ts_env, day(12) + timedelta(hours=1), org_db)
        st = await state_of(handle)
        shipping = next(m for m in st.milestones if m.key == "shipping")
        acceptance_due = next(m for m in st.milestones if m.key == "acceptance").due_at
        assert shipping.status == "overdue" and st.escalation_level == 1
        old_due = shipping.due_at
        assert [m for _, m in mails_about(mailbox, cid) if ":escalation1:" in m["X-Contracts-Notification"]]

        request = _request(
            AmendmentChange("move_due", key="shipping", shift="P10D"),
            AmendmentChange("move_due", key="acceptance", shift="P10D"),
        )
        result = await handle.execute_update(ContractWorkflow.request_amendment, request)
        a = result.amendment
        assert a.status == "pending" and a.required_roles == ["manager"]
        moved = {i.key: i for i in a.impact.items}
        assert moved["shipping"].shift_seconds == 10 * 86400 and moved["acceptance"].shift_seconds == 10 * 86400
        assert a.impact.becomes_on_time == ["milestone:shipping"] and a.impact.amount_delta == "0.00"
        assert "zhang.min" in a.impact.affected_people
        # Requested, not approved: nothing moved yet.
        assert (await state_of(handle)).milestones[0].due_at == old_due

        # The manager approves: applied at once.
        result = await _decide(handle, a.id, "approve", "zhang.min", "manager", "agreed with the customer")
        assert result.amendment.status == "applied" and result.contract_version == 2
        st = await state_of(handle)
        shipping = next(m for m in st.milestones if m.key == "shipping")
        acceptance = next(m for m in st.milestones if m.key == "acceptance")
        assert shipping.due_at == old_due + timedelta(days=10) and shipping.status == "pending"
        assert acceptance.due_at == acceptance_due + timedelta(days=10)
        assert st.escalation_level == 0 and st.overdue_count == 0
        assert [v.version for v in st.versions] == [1, 2]
        assert st.versions[1].approvals[0].by == "zhang.min"

        # The old chain would have reached level 2 on day 13: it does not.  New reminders come
        # P7D and P1D before the new dates (shipping day 20, acceptance day 25).
        await advance_to(ts_env, day(13) + timedelta(hours=2), org_db)
        assert not [m for _, m in mails_about(mailbox, cid) if ":escalation2:" in m["X-Contracts-Notification"]]
        assert _events(org_db, cid, "escalation.stopped")  # projected by now
        await advance_to(ts_env, day(24) + timedelta(hours=2), org_db)
        new_epoch = str(int(shipping.due_at.timestamp()))
        acc_epoch = str(int(acceptance.due_at.timestamp()))
        reminders = sorted(
            (m["X-Contracts-Notification"].split(":")[2], m["X-Contracts-Notification"].split(":")[3],
             m["X-Contracts-Notification"].split(":")[4])
            for _, m in mails_about(mailbox, cid) if ":reminder" in m["X-Contracts-Notification"]
        )
        assert ("shipping", new_epoch, "reminder0-P7D") in reminders
        assert ("shipping", new_epoch, "reminder0-P1D") in reminders
        assert ("acceptance", acc_epoch, "reminder0-P7D") in reminders
        assert ("acceptance", acc_epoch, "reminder0-P1D") in reminders
        told = sorted(m["X-Contracts-Notification"].split(":")[2] for _, m in mails_about(mailbox, cid)
                      if ":amended0-v2:" in m["X-Contracts-Notification"])
        assert told == ["acceptance", "shipping"]  # the owner hears of both new dates at once
        sent = [(e.data["key"], e.at) for e in _events(org_db, cid, "notification.reminder")]
        for key, due in (("shipping", shipping.due_at), ("acceptance", acceptance.due_at)):
            for before in (7, 1):  # on the new dates, to within a few seconds (the outbox looks every OUTBOX_POLL_SECONDS)
                assert any(k == key and abs((at - (due - timedelta(days=before))).total_seconds()) < 3
                           for k, at in sent), (key, before, sent)

        with org_db() as s:
            docs = s.execute(select(Document).where(Document.contract_id == cid)).scalars().all()
        assert len(docs) == 1 and docs[0].kind == "supplementary_agreement" and docs[0].version == 1
        html = docs[0].content.decode()
        for when in (old_due, shipping.due_at, acceptance_due, acceptance.due_at):
            assert (when + timedelta(hours=8)).strftime("%Y-%m-%d") in html
        assert "补充协议" in html and "zhang.min" in html and spec.customer_name in html
        await save_history(handle, "amendment_moves_late_shipping")
    print(f"amendment applied: escalation stopped, reminders on new dates {sorted(set(r[1] for r in reminders))}")


async def test_raising_the_amount_needs_finance_and_legal(ts_env, env_settings, mailbox, org_db):
    tq = f"amd-{uuid.uuid4().hex[:6]}"
    start = await ts_env.get_current_time()
    spec = make_spec(start)  # goods_sale: 120,000.00 in the playbook's installments
    async with running_worker(ts_env.client, env_settings, tq):
        handle = await start_contract(ts_env.client, spec, tq)
        await projected(org_db, spec.contract_id)  # its reminder plans are in the outbox
        await pay(handle, "BANK-1", "36000.00", start)
        before = await state_of(handle)
        plan_before = [(i.key, i.amount) for i in before.installments]

        result = await handle.execute_update(
            ContractWorkflow.request_amendment,
            _request(AmendmentChange("change_amount", amount="140000.00"), reason="scope grew by 8 spindles"),
        )
        a = result.amendment
        assert a.required_roles == ["finance", "legal"]
        assert a.impact.amount_delta == "20000.00" and a.impact.new_outstanding == "104000.00"

        # Finance alone changes nothing.
        await _decide(handle, a.id, "approve", "sun.li", "finance")
        st = await state_of(handle)
        assert st.spec.amount == before.spec.amount and st.outstanding == "84000.00" and st.contract_version == 1
        assert [(i.key, i.amount) for i in st.installments] == plan_before
        assert await _refused(handle, ContractWorkflow.decide_amendment,
                              DecideAmendmentInput(a.id, "approve", "sun.li", "finance")) == "Conflict"

        await _decide(handle, a.id, "approve", "liu.yang", "legal")
        st = await state_of(handle)
        assert st.spec.amount == "140000.00" and st.outstanding == "104000.00" and st.contract_version == 2
        plan = [(i.key, i.amount) for i in st.installments]
        assert plan[:-1] == plan_before[:-1]
        assert Decimal(plan[-1][1]) == Decimal(plan_before[-1][1]) + 20000
        assert sum(Decimal(x) for _, x in plan) == Decimal("140000.00")
        assert st.paid_total == "36000.00"
        await save_history(handle, "amendment_raises_amount")


async def test_contradicting_changes_are_refused_and_rejections_change_nothing(ts_env, env_settings, org_db):
    tq = f"amd-{uuid.uuid4().hex[:6]}"
    start = await ts_env.get_current_time()
    spec = make_spec(start)
    async with running_worker(ts_env.client, env_settings, tq):
        handle = await start_contract(ts_env.client, spec, tq)
        await projected(org_db, spec.contract_id)  # its reminder plans are in the outbox
        await handle.execute_update(ContractWorkflow.complete_milestone, CompleteMilestoneInput("order_review", "li.wei"))
        await pay(handle, "BANK-1", "50000.00", start)
        before = await state_of(handle)
        req = ContractWorkflow.request_amendment
        assert await _refused(handle, req, _request(AmendmentChange("remove_milestone", key="order_review"))) == "Conflict"
        assert await _refused(handle, req, _request(AmendmentChange("change_amount", amount="40000.00"))) == "Conflict"
        assert await _refused(handle, req, _request(AmendmentChange("move_due", key="nope", shift="P1D"))) == "NotFound"
        assert await _refused(handle, req, _request(AmendmentChange("move_due", key="shipping"))) == "Invalid"
        assert await _refused(handle, req, _request(AmendmentChange("extend_end", end_at=start))) == "Invalid"
        assert await _refused(handle, req, _request(AmendmentChange("change_amount", amount="1e30"))) == "Invalid"
        assert await _refused(handle, req, _request(AmendmentChange("move_due", key="shipping", shift="P1D"),
                                                    reason="  ")) == "Invalid"

        a = (await handle.execute_update(req, _request(AmendmentChange("move_due", key="shipping", shift="P3D")))).amendment
        assert await _refused(handle, ContractWorkflow.decide_amendment,
                              DecideAmendmentInput(a.id, "approve", "liu.yang", "legal")) == "Invalid"
        r = await _decide(handle, a.id, "reject", "zhang.min", "manager", "the customer can wait")
        assert r.amendment.status == "rejected"
        assert await _refused(handle, ContractWorkflow.decide_amendment,
                              DecideAmendmentInput(a.id, "approve", "zhang.min", "manager")) == "Conflict"
        b = (await handle.execute_update(req, _request(AmendmentChange("change_owner", key="shipping",
                                                                      owner="zhao.lei", department="logistics")))).amendment
        assert await _refused(handle, ContractWorkflow.decide_amendment,
                              DecideAmendmentInput(b.id, "withdraw", "zhang.min")) == "Conflict"
        assert (await _decide(handle, b.id, "withdraw", "li.wei")).amendment.status == "withdrawn"

        after = await state_of(handle)
        assert after.contract_version == 1 and after.spec.amount == before.spec.amount
        assert [(m.key, m.due_at, m.owner) for m in after.milestones] == [
            (m.key, m.due_at, m.owner) for m in before.milestones]
        assert not after.approvals
        # The same amendment id again is answered with the original, not a second request.
        again = await handle.execute_update(req, _request(AmendmentChange("move_due", key="shipping", shift="P9D")))
        dup = RequestAmendmentInput(again.amendment.id, "li.wei", "x", [AmendmentChange("extend_end", end_at=start)])
        repeat = await handle.execute_update(req, dup)
        assert repeat.created is False and repeat.amendment.changes[0].shift == "P9D"
        assert len((await state_of(handle)).amendments) == 3


async def test_an_amendment_overtaken_by_another_is_refused_then_rejected(ts_env, env_settings, org_db):
    """Two pending "shipping +3 days": the first applied, the second's approval is refused (its
    impact was assessed on version 1); rejected, it changes nothing.  History saved for replay
    (amendment-still-current-v1)."""
    tq = f"amd-{uuid.uuid4().hex[:6]}"
    start = await ts_env.get_current_time()
    spec = make_spec(start)
    async with running_worker(ts_env.client, env_settings, tq):
        handle = await start_contract(ts_env.client, spec, tq)
        req = ContractWorkflow.request_amendment
        move = AmendmentChange("move_due", key="shipping", shift="P3D")
        first = (await handle.execute_update(req, _request(move))).amendment
        second = (await handle.execute_update(req, _request(move))).amendment
        shipping = next(m.due_at for m in (await state_of(handle)).milestones if m.key == "shipping")
        assert (await _decide(handle, first.id, "approve", "zhang.min", "manager")).amendment.status == "applied"
        assert await _refused(handle, ContractWorkflow.decide_amendment,
                              DecideAmendmentInput(second.id, "approve", "zhang.min", "manager")) == "Conflict"
        r = await _decide(handle, second.id, "reject", "zhang.min", "manager", "overtaken by the first")
        assert r.amendment.status == "rejected" and r.contract_version == 2
        st = await state_of(handle)
        assert next(m.due_at for m in st.milestones if m.key == "shipping") == shipping + timedelta(days=3)
        await save_history(handle, "amendment_overtaken_then_rejected")


async def test_end_of_term_reminders_and_auto_renewal(ts_env, env_settings, mailbox, org_db):
    """Reminders 60 and 30 days before the end; at the end a paid-up auto-renewing contract
    expires and its next term starts as a new contract linked to it."""
    from models import Contract
    from workflows.contract import workflow_id_for

    tq = f"ren-{uuid.uuid4().hex[:6]}"
    start = await ts_env.get_current_time()
    day = lambda n: start + timedelta(days=n)  # noqa: E731
    spec = make_spec(
        start, playbook=None, amount="9000.00", end_date=day(90).isoformat(),
        milestones=[{"key": "service", "name": "Service delivery", "kind": "custom", "owner": "li.wei",
                     "department": "sales", "due": day(20).isoformat()}],
        installments=[{"key": "fee", "due_after": "P10D", "amount": "9000.00"}],
        renewal={"auto_renew": True, "term": "P180D"},
    )
    assert spec.renewal.reminders == ["P60D", "P30D"]
    done_early = spec
    spec = make_spec(
        start, playbook=None, amount="9000.00", end_date=day(90).isoformat(),
        milestones=[{"key": "service", "name": "Service delivery", "kind": "custom", "owner": "li.wei",
                     "department": "sales", "due": day(200).isoformat()}],
        installments=[{"key": "fee", "due_after": "P10D", "amount": "9000.00"}],
        renewal={"auto_renew": True, "term": "P180D"},
    )
    cid = spec.contract_id
    async with running_worker(ts_env.client, env_settings, tq):
        early = await start_contract(ts_env.client, done_early, tq)
        await pay(early, "BANK-FEE", "9000.00", start)
        handle = await start_contract(ts_env.client, spec, tq)
        await projected(org_db, spec.contract_id)  # its reminder plans are in the outbox
        await pay(handle, "BANK-FEE", "9000.00", start)
        await advance_to(ts_env, day(15), org_db)
        await early.execute_update(ContractWorkflow.complete_milestone, CompleteMilestoneInput("service", "li.wei"))
        st = await state_of(early)  # done and paid before its end: completed, not renewed
        assert st.status == "completed" and st.renewed_by is None
        await advance_to(ts_env, day(61) + timedelta(hours=1), org_db)
        term = sorted(m["X-Contracts-Notification"].split(":")[4] for _, m in mails_about(mailbox, cid)
                      if ":contract:term:" in m["X-Contracts-Notification"])
        assert term == ["reminder0-P30D", "reminder0-P60D"]

        await advance_to(ts_env, day(90) + timedelta(hours=1), org_db)
        st = await state_of(handle)
        assert st.status == "expired" and st.renewed_by
        nxt = ts_env.client.get_workflow_handle(workflow_id_for(st.renewed_by))
        nst = await state_of(nxt)
        assert nst.spec.renewal_of == cid and nst.status == "active"
        assert nst.spec.effective_at == spec.end_at and nst.spec.end_at == spec.end_at + timedelta(days=180)
        assert nst.milestones[0].due_at == spec.milestones[0].due.at + (spec.end_at - spec.effective_at)
        assert nst.outstanding == "9000.00"
        with org_db() as s:
            row = s.get(Contract, st.renewed_by)
            assert row is not None and row.status in ("active", "starting")
        assert [e.type for e in _events(org_db, cid, "renewal.started")] == ["renewal.started"]
        await save_history(handle, "auto_renewed_at_term_end")
        await nxt.terminate("test finished")


async def test_a_late_approval_is_reminded_escalated_and_stops_when_decided(ts_env, env_settings, mailbox, org_db):
    """Pending approvals are timed items: a task and an email at once, a reminder a day before
    the P2D deadline, escalation after it, and silence once the approver decides."""
    from models.notification import Task

    tq = f"apr-{uuid.uuid4().hex[:6]}"
    start = await ts_env.get_current_time()
    spec = make_spec(start)
    cid = spec.contract_id
    async with running_worker(ts_env.client, env_settings, tq):
        handle = await start_contract(ts_env.client, spec, tq)
        await projected(org_db, spec.contract_id)  # its reminder plans are in the outbox
        a = (await handle.execute_update(ContractWorkflow.request_amendment, _request(
            AmendmentChange("move_due", key="shipping", shift="P5D")))).amendment
        await advance_to(ts_env, start + timedelta(hours=1), org_db)
        with org_db() as s:
            tasks = s.execute(select(Task).where(Task.contract_id == cid, Task.assignee == "zhang.min")).scalars().all()
        assert len(tasks) == 1 and "审批" in tasks[0].title  # zhang.min reads Chinese

        def approval_mail(kind: str) -> list:
            return [m for _, m in mails_about(mailbox, cid)
                    if f":approval:{a.id}:manager:" in m["X-Contracts-Notification"]
                    and f":{kind}" in m["X-Contracts-Notification"]]

        assert len(approval_mail("approval0")) == 1
        await advance_to(ts_env, start + timedelta(days=1, hours=1), org_db)
        assert len(approval_mail("reminder0-P1D")) == 1
        await advance_to(ts_env, start + timedelta(days=2, hours=1), org_db)
        level1 = approval_mail("escalation1")
        assert len(level1) == 1 and level1[0]["To"].addresses[0].addr_spec == "zhang.min@example.com"
        st = await state_of(handle)
        assert st.approvals[0].status == "overdue" and st.escalation_level >= 1

        await _decide(handle, a.id, "approve", "zhang.min", "manager")
        st = await state_of(handle)
        assert not st.approvals and st.contract_version == 2
        sent = len(mails_about(mailbox, cid))
        await advance_to(ts_env, start + timedelta(days=12, hours=1), org_db)  # level 2 (P3D) and 3 (P7D) never come
        assert not approval_mail("escalation2") and not approval_mail("escalation3")
        stopped = [e.data for e in _events(org_db, cid, "escalation.stopped")]
        assert {"item_type": "approval", "key": f"{a.id}:manager"} in stopped
        assert len([m for _, m in mails_about(mailbox, cid) if ":approval:" in m["X-Contracts-Notification"]]) == 3
        assert len(mails_about(mailbox, cid)) >= sent
        await save_history(handle, "approval_escalated_then_approved")


async def test_an_amendment_delivered_with_the_first_task_sees_the_due_dates(ts_env, env_settings):
    """Regression: an update that arrives with the workflow's first task runs before run() has
    refreshed anything.  A move by a shift was refused "has no date yet" (found in a full run,
    once; here made certain by starting the worker only after the update was sent)."""
    import asyncio

    tq = f"first-{uuid.uuid4().hex[:6]}"
    spec = make_spec(await ts_env.get_current_time())
    handle = await start_contract(ts_env.client, spec, tq)  # no worker yet: the first task waits
    update = asyncio.create_task(handle.execute_update(ContractWorkflow.request_amendment, _request(
        AmendmentChange("move_due", key="shipping", shift="P5D"))))
    await asyncio.sleep(1.0)
    assert not update.done()
    async with running_worker(ts_env.client, env_settings, tq):
        result = await asyncio.wait_for(update, 60)
        st = await state_of(handle)
        await save_history(handle, "amendment_with_the_first_task")
    assert result.amendment.status == "pending"
    moved = {x.key: x for x in result.amendment.impact.items}["shipping"]
    assert moved.change == "moved" and moved.shift_seconds == 5 * 86400
    assert all(m.due_at is not None for m in st.milestones if m.due.after is None)
