"""Reminders, escalation chains and hand-offs on the time-skipping server, delivered for real:
email to an aiosmtpd server, signed webhooks to a real HTTP receiver, tasks in the inbox."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import org
from models import ContractEvent
from models.notification import Notification, Task
from tests.conftest import running_worker
from tests.helpers import (
    advance_to,
    complete,
    mails_about,
    make_spec,
    outbox_idle,
    pay,
    projected,
    save_history,
    start_contract,
    state_of,
)
from workflows import search_attributes as sa


async def test_unpaid_installment_escalates_to_the_manager_and_stops_when_paid(
    ts_env, env_settings, mailbox, receiver, org_db
):
    """The seed's example: due day 30, still unpaid day 33 -> reminder again with the manager in
    copy (email and signed webhook); paid day 34 -> nothing more on days 37 or 40."""
    tq = f"esc-{uuid.uuid4().hex[:6]}"
    start = await ts_env.get_current_time()
    spec = make_spec(
        start, playbook=None, amount="50000.00",
        milestones=[{"key": "delivery", "name": "Delivery", "kind": "shipping", "owner": "li.wei",
                     "department": "sales", "due_after": "P90D"}],
        installments=[{"key": "first", "due_after": "P30D", "amount": "50000.00"}],
    )
    cid = spec.contract_id
    day = lambda n: start + timedelta(days=n)  # noqa: E731
    async with running_worker(ts_env.client, env_settings, tq):
        handle = await start_contract(ts_env.client, spec, tq)
        await projected(org_db, spec.contract_id)  # its reminder plans are in the outbox

        await advance_to(ts_env, day(29) + timedelta(hours=2), org_db)
        kinds = [m["X-Contracts-Notification"].split(":")[4] for _, m in mails_about(mailbox, cid)]
        assert kinds == ["reminder0-P7D", "reminder0-P1D"]
        with org_db() as s:
            sent_at = s.execute(
                select(ContractEvent.at).where(ContractEvent.contract_id == cid,
                                               ContractEvent.type == "notification.reminder").order_by(ContractEvent.at)
            ).scalars().all()
        # P7D and P1D before the day-30 due date, to within a few seconds (the dispatcher looks
        # every OUTBOX_POLL_SECONDS of real time, while the test server's clock runs)
        assert [abs((a - b).total_seconds()) < 3 for a, b in zip(sent_at, [day(23), day(29)], strict=False)] == [True, True], (
            sent_at, day(23), day(29))

        await advance_to(ts_env, day(30) + timedelta(hours=2), org_db)
        level1 = [m for _, m in mails_about(mailbox, cid) if ":escalation1:" in m["X-Contracts-Notification"]]
        assert len(level1) == 1 and level1[0]["To"].addresses[0].addr_spec == "li.wei@example.com"
        assert not level1[0]["Cc"]
        desc = await handle.describe()
        assert desc.typed_search_attributes.get(sa.ESCALATION_LEVEL) == 1

        await advance_to(ts_env, day(33) + timedelta(hours=2), org_db)
        level2 = [(r, m) for r, m in mails_about(mailbox, cid) if ":escalation2:" in m["X-Contracts-Notification"]]
        assert len(level2) == 1
        rcpts, msg = level2[0]
        assert msg["To"].addresses[0].addr_spec == "li.wei@example.com"
        assert [a.addr_spec for a in msg["Cc"].addresses] == ["zhang.min@example.com"]
        assert sorted(rcpts) == ["li.wei@example.com", "zhang.min@example.com"]
        assert "3" in msg["Subject"]  # overdue by 3 days
        hooks = receiver.for_contract(cid)
        assert [h["body"]["level"] for h in hooks] == [1, 2]
        assert all(h["verified"] for h in hooks)
        assert len({h["event_id"] for h in hooks}) == 2
        st = await state_of(handle)
        assert st.escalation_level == 2 and st.installments[0].status == "overdue"
        assert (await handle.describe()).typed_search_attributes.get(sa.ESCALATION_LEVEL) == 2

        await advance_to(ts_env, day(34), org_db)
        result = await pay(handle, "BANK-DAY34", "50000.00", await ts_env.get_current_time())
        assert result.outstanding == "0.00"
        before_mail, before_hooks = len(mails_about(mailbox, cid)), len(receiver.for_contract(cid))

        await advance_to(ts_env, day(37) + timedelta(hours=1), org_db)
        await advance_to(ts_env, day(40) + timedelta(hours=1), org_db)
        assert len(mails_about(mailbox, cid)) == before_mail, "the chain must stop once paid"
        assert len(receiver.for_contract(cid)) == before_hooks
        st = await state_of(handle)
        assert st.escalation_level == 0
        assert (await handle.describe()).typed_search_attributes.get(sa.ESCALATION_LEVEL) == 0
        await save_history(handle, "installment_escalated_then_paid")
        # The child's own history too: every workflow type is in the replay corpus.
        from workflows.escalation import escalation_workflow_id

        due = st.installments[0].due_at
        child = ts_env.client.get_workflow_handle(
            escalation_workflow_id(handle.id, "installment", "first", int(due.timestamp())) + "/r1")
        assert (await child.describe()).status.name == "CANCELED"
        await save_history(child, "escalation_child_cancelled_by_payment")

    with org_db() as s:
        rows = s.execute(select(Notification).where(Notification.contract_id == cid)).scalars().all()
    keys = [r.key for r in rows]
    assert len(keys) == len(set(keys))
    with org_db() as s:
        failed = s.execute(select(ContractEvent).where(ContractEvent.contract_id == cid,
                                                       ContractEvent.type == "escalation.failed")).scalars().all()
    assert failed == [], "a chain the contract stopped itself is not a failure"
    assert all(r.status == "sent" for r in rows if r.channel in ("email", "webhook"))
    print(f"seed example: {len(mails_about(mailbox, cid))} emails, {len(receiver.for_contract(cid))} webhooks, "
          f"0 after payment")


async def test_handoff_goes_to_the_next_owner_and_finance(ts_env, env_settings, mailbox, org_db):
    tq = f"hand-{uuid.uuid4().hex[:6]}"
    start = await ts_env.get_current_time()
    with org_db() as s:
        def assignee(dept):
            user = org.default_assignee(s, dept)
            return user.id if user else None

        spec = make_spec(start, department_assignee=assignee)
    owners = {m.key: m.owner for m in spec.milestones}
    assert owners["customer_acceptance"] == "wang.fang" and owners["invoicing"] == "sun.li"
    cid = spec.contract_id
    async with running_worker(ts_env.client, env_settings, tq):
        handle = await start_contract(ts_env.client, spec, tq)
        await projected(org_db, spec.contract_id)  # its reminder plans are in the outbox
        for key in ("order_review", "production_scheduling", "shipping"):
            await complete(handle, key)
        await outbox_idle(org_db, ts_env)  # the hand-off goes out at once

        def tasks_for(user):
            with org_db() as s:
                return s.execute(select(Task).where(Task.contract_id == cid, Task.assignee == user)).scalars().all()

        acceptance_tasks = [t for t in tasks_for("wang.fang") if t.milestone_key == "customer_acceptance"]
        assert len(acceptance_tasks) == 1 and acceptance_tasks[0].status == "open"
        assert [m for _, m in mails_about(mailbox, cid) if "wang.fang" in m["X-Contracts-Notification"]
                and ":handoff0:" in m["X-Contracts-Notification"]]
        assert not [t for t in tasks_for("sun.li") if t.milestone_key == "invoicing"]

        await complete(handle, "customer_acceptance")
        await outbox_idle(org_db, ts_env)
        invoicing = [t for t in tasks_for("sun.li") if t.milestone_key == "invoicing"]
        assert len(invoicing) == 1
        mails = [m for _, m in mails_about(mailbox, cid) if "sun.li" in m["X-Contracts-Notification"]
                 and ":handoff0:" in m["X-Contracts-Notification"]]
        assert len(mails) == 1 and mails[0]["To"].addresses[0].addr_spec == "sun.li@example.com"


async def test_business_days_move_a_national_day_due_date_to_the_next_working_day(ts_env, env_settings):
    """Real 2026 calendar: 1-7 October is the National Day holiday, 8 October the next working day."""
    from datetime import datetime, timezone

    tq = f"cal-{uuid.uuid4().hex[:6]}"
    now = await ts_env.get_current_time()
    shanghai_oct2 = datetime(2026, 10, 2, 10, 0, tzinfo=timezone(timedelta(hours=8)))
    # The contract took effect on 1 September (registered later: the dates are history, which
    # is fine; what matters is where the calendar puts them).
    spec = make_spec(
        now, playbook=None, amount="100.00", effective_date="2026-09-01", end_date="2026-12-31",
        milestones=[
            {"key": "ship", "name": "Shipping", "kind": "shipping", "owner": "li.wei", "department": "sales",
             "due": shanghai_oct2.isoformat()},
            {"key": "accept", "name": "Acceptance", "kind": "customer_acceptance", "owner": "li.wei",
             "department": "sales", "after": "ship", "due_after": "P3D"},
        ],
        installments=[{"key": "all", "due": shanghai_oct2.isoformat(), "amount": "100.00"}],
        notifications={"business_days": True, "reminders": []},
    )
    async with running_worker(ts_env.client, env_settings, tq):
        handle = await start_contract(ts_env.client, spec, tq)
        await ts_env.sleep(timedelta(seconds=5))  # let the calendar activity answer
        st = await state_of(handle)
        ship, accept = st.milestones
        assert ship.due_at == datetime(2026, 10, 8, 10, 0, tzinfo=timezone(timedelta(hours=8)))
        assert not ship.due_estimated and ship.status == "overdue"
        assert st.installments[0].due_at == ship.due_at
        # Three working days after the (moved) shipping date: 9 Oct (Fri), 10 Oct (a make-up
        # working Saturday), 12 Oct (Mon) -- not 11 Oct, a Sunday.
        assert accept.due_estimated
        assert accept.due_at == datetime(2026, 10, 12, 10, 0, tzinfo=timezone(timedelta(hours=8)))


def test_business_days_refuse_a_year_without_a_published_schedule():
    from datetime import datetime, timezone

    from api.contracts.builder import SpecError

    with pytest.raises(SpecError, match="not published"):
        make_spec(datetime(2029, 6, 1, tzinfo=timezone.utc), end_date="2031-06-01",
                  notifications={"business_days": True})


async def test_a_milestone_can_carry_its_own_reminder_offsets(ts_env, env_settings, mailbox, org_db):
    tq = f"rem-{uuid.uuid4().hex[:6]}"
    start = await ts_env.get_current_time()
    spec = make_spec(
        start, playbook=None, amount="10.00",
        milestones=[
            {"key": "own", "name": "Own offsets", "kind": "custom", "owner": "li.wei", "department": "sales",
             "due_after": "P10D", "reminders": ["P2D"]},
            {"key": "contract", "name": "Contract offsets", "kind": "custom", "owner": "li.wei",
             "department": "sales", "due_after": "P10D"},
        ],
        installments=[{"key": "all", "due_after": "P60D", "amount": "10.00"}],
        notifications={"reminders": ["P5D"]},
    )
    async with running_worker(ts_env.client, env_settings, tq):
        handle = await start_contract(ts_env.client, spec, tq)
        await projected(org_db, spec.contract_id)  # its reminder plans are in the outbox
        await advance_to(ts_env, start + timedelta(days=9, hours=12), org_db)
        keys = sorted(m["X-Contracts-Notification"].strip().split(":")[2] + m["X-Contracts-Notification"].split(":")[4]
                      for _, m in mails_about(mailbox, spec.contract_id) if "reminder" in m["X-Contracts-Notification"])
        assert keys == ["contractreminder0-P5D", "ownreminder0-P2D"]
        st = await state_of(handle)
        assert st.milestones[0].reminders == ["P2D"]
