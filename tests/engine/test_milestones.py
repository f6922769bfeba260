"""milestones: completion rules, progress without duplicates, waivers, hand-off to the next owner."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from tests.engine.conftest import NOW
from workflows.contract import milestones
from workflows.types import CompleteMilestoneInput, MilestoneStatus, ProgressInput, WaiveMilestoneInput


def test_a_milestone_waits_for_its_predecessor(contract):
    c = contract()
    with pytest.raises(ApplicationError, match="depends on 'order_review'"):
        milestones.check_complete(c.state, CompleteMilestoneInput("production_scheduling", "li.wei"))


def test_completion_hands_the_next_milestone_to_its_owner_once(contract):
    c = contract()
    milestones.check_complete(c.state, CompleteMilestoneInput("order_review", "li.wei"))
    milestones.complete(c.state, CompleteMilestoneInput("order_review", "li.wei", "ok"), c.journal)
    assert c.milestone("order_review").status == MilestoneStatus.DONE and c.milestone("order_review").progress == 100
    assert [n.kind for n in c.journal.notices] == ["handoff"]
    assert c.journal.notices[0].item_key == "production_scheduling"
    assert c.milestone("production_scheduling").reminders_from == NOW  # what passed is not reminded on top
    assert c.journal.resolved == [("milestone", "order_review")]
    with pytest.raises(ApplicationError, match="already done"):
        milestones.check_complete(c.state, CompleteMilestoneInput("order_review", "li.wei"))


def test_the_same_progress_report_twice_records_one_event(contract):
    c = contract()
    p = ProgressInput("order_review", 40, "checking credit", "erp")
    first = milestones.report_progress(c.state, p, c.journal)
    second = milestones.report_progress(c.state, p, c.journal)
    assert first.changed and not second.changed
    assert c.event_types() == ["milestone.progress"]
    assert c.milestone("order_review").status == MilestoneStatus.IN_PROGRESS


@pytest.mark.parametrize("percent", [-1, 101, True, 50.5])
def test_progress_is_a_whole_percent(contract, percent):
    with pytest.raises(ApplicationError, match="whole number"):
        milestones.check_progress(contract().state, ProgressInput("order_review", percent))


def test_satisfaction_belongs_to_acceptance_and_a_waiver_needs_a_reason(contract):
    c = contract()
    with pytest.raises(ApplicationError, match="customer acceptance"):
        milestones.check_complete(c.state, CompleteMilestoneInput("order_review", "li.wei", satisfaction=4))
    with pytest.raises(ApplicationError, match="written reason"):
        milestones.check_waive(c.state, WaiveMilestoneInput("order_review", "li.wei", " "))


def test_payment_collection_completes_itself_when_nothing_is_owed(contract):
    from workflows.contract import payments
    from workflows.types import PaymentInput

    c = contract(amount="100.00", installments=[{"key": "all", "due_after": "P10D", "amount": "100.00"}])
    payments.apply(c.state, PaymentInput("B", "100.00", "CNY", NOW), c.journal)
    milestones.collect_if_settled(c.state, c.journal)
    assert c.milestone("payment_collection").status == MilestoneStatus.DONE
