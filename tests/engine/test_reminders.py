"""reminders: the plan the outbox gets for each item, catch-up without a burst, escalation levels."""

from __future__ import annotations

from datetime import timedelta

from tests.engine.conftest import NOW
from workflows.contract import reminders, schedule
from workflows.contract.notices import outbox_key
from workflows.types import MilestoneStatus, TerminateInput  # noqa: F401


def offsets(plan):
    return [(n.request.tag, n.send_at) for n in plan.notices]


def test_a_dated_item_gets_a_reminder_at_each_offset_before_its_date(contract):
    c = contract(notifications={"reminders": ["P7D", "P1D"]}, milestones=[
        {"key": "ship", "name": "Ship", "kind": "shipping", "owner": "li.wei", "department": "sales",
         "due_after": "P20D"}], playbook=None, installments=[])
    ship = c.milestone("ship")
    plan = reminders.plan(c.state, "milestone", ship, NOW)
    assert offsets(plan) == [("-P7D", ship.due_at - timedelta(days=7)), ("-P1D", ship.due_at - timedelta(days=1))]
    assert [n.request.days for n in plan.notices] == [7, 1]
    assert all(n.key == outbox_key(n.request) for n in plan.notices)


def test_registered_late_one_catch_up_not_a_burst_and_none_after_a_hand_off(contract):
    c = contract()  # order review due in 2 days: P7D has passed
    review = c.milestone("order_review")
    plan = reminders.plan(c.state, "milestone", review, NOW)
    assert offsets(plan) == [("-P7D", NOW), ("-P1D", review.due_at - timedelta(days=1))]
    review.reminders_from = NOW  # a hand-off told the owner
    assert offsets(reminders.plan(c.state, "milestone", review, NOW)) == [("-P1D", review.due_at - timedelta(days=1))]


def test_nothing_for_an_item_done_undated_past_due_or_in_a_closed_contract(contract):
    c = contract()
    review, scheduling = c.milestone("order_review"), c.milestone("production_scheduling")
    assert reminders.plan(c.state, "milestone", scheduling, NOW).notices == []  # estimated date
    assert reminders.plan(c.state, "milestone", review, review.due_at).notices == []  # due now
    review.status = MilestoneStatus.DONE
    assert reminders.plan(c.state, "milestone", review, NOW).notices == []
    review.status = MilestoneStatus.PENDING
    c.state.status = "terminated"
    assert reminders.plan(c.state, "milestone", review, NOW).notices == []


def test_end_of_term_reminders_only_inside_the_term_as_registered(contract):
    c = contract(renewal={"reminders": ["P400D", "P30D"]})
    term = reminders.term(c.state)
    assert term is not None and term.reminders == ["P30D"]  # 400 days before the end is before the start
    plan = reminders.plan(c.state, "contract", term, NOW)
    assert offsets(plan) == [("-P30D", c.state.spec.end_at - timedelta(days=30))]


def test_escalation_level_and_next_level_of_overdue_items(contract):
    c = contract()
    review = c.milestone("order_review")
    c.at(review.due_at + timedelta(days=4))
    schedule.fall_due(c.state, c.clock(), c.journal)
    level, nxt = reminders.escalation(c.state, c.clock())
    assert level == 2 and nxt == review.due_at + timedelta(days=7)  # default chain: at due, P3D, P7D
