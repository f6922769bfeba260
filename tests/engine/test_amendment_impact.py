"""amendments: which roles approve, what a change would do (only the touched items), how it applies."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.exceptions import ApplicationError

from tests.engine.conftest import NOW
from workflows.contract import amendments
from workflows.types import AmendmentChange, DecideAmendmentInput, RequestAmendmentInput

MOVE = AmendmentChange(kind="move_due", key="order_review", item_type="milestone", shift="P3D")
REPORT_3 = AmendmentChange(kind="move_due", key="report_3", item_type="milestone", shift="P3D")


def test_roles_follow_the_kind_of_change(contract):
    c = contract()
    assert amendments.required_roles(c.state, [MOVE]) == ["manager"]
    assert amendments.required_roles(c.state, [AmendmentChange(kind="change_amount", amount="130000.00")]) == [
        "finance", "legal"]


def test_the_impact_lists_only_what_the_change_touches(contract):
    c = contract(milestones=[{"key": f"report_{k}", "name": "Report", "kind": "custom", "owner": "li.wei",
                              "department": "sales", "due_after": f"P{10 + k}D"} for k in range(40)])
    impact = amendments.assess(c.state, [REPORT_3], {"manager": "zhang.min"}, NOW)
    assert [(x.key, x.change, x.shift_seconds) for x in impact.items] == [("report_3", "moved", 3 * 86400)]
    assert impact.installments == []
    assert [cl.clause for cl in impact.clauses] == ["milestone.report_3.due"]
    assert c.milestone("report_3").due_at == NOW + timedelta(days=13)  # assessed on a copy
    # Moving the first step moves the estimates of everything after it: all of those are listed.
    moved = amendments.assess(c.state, [MOVE], {"manager": "zhang.min"}, NOW)
    assert {x.key for x in moved.items} == {"order_review", "production_scheduling", "shipping",
                                            "customer_acceptance", "invoicing", "payment_collection"}


def test_contradicting_changes_are_refused(contract):
    c = contract()
    with pytest.raises(ApplicationError, match="already has a milestone"):
        amendments.check(c.state, [AmendmentChange(kind="add_milestone", milestone=c.spec.milestones[0])], NOW)
    with pytest.raises(ApplicationError, match="cannot absorb"):
        amendments.check(c.state, [AmendmentChange(kind="change_amount", amount="1.00")], NOW)


def test_request_approve_apply_queues_the_agreement_and_a_new_version(contract):
    c = contract()
    r = RequestAmendmentInput("AMD-1", "li.wei", "customer asked", [MOVE], {"manager": "zhang.min"})
    amendments.check_request(c.state, r, NOW)
    a = amendments.request(c.state, r, c.journal)
    assert a.status == "pending" and [x.key for x in c.state.approvals] == ["AMD-1:manager"]
    d = DecideAmendmentInput("AMD-1", "approve", "zhang.min", "manager")
    amendments.check_decision(c.state, d, NOW)
    amendments.decide(c.state, d, c.journal)
    assert a.status == "applied" and c.state.contract_version == 2
    assert c.milestone("order_review").due_at == NOW + timedelta(days=5)
    assert [x.amendment_id for x in c.state.pending_documents] == ["AMD-1"] and c.state.approvals == []
    types = c.event_types()
    assert types.index("amendment.approval") < types.index("amendment.approved") < types.index("amendment.applied")
    assert "notification.amended" in types  # the owner hears of the new date
    with pytest.raises(ApplicationError, match="already applied"):
        amendments.check_decision(c.state, d, NOW)


def test_an_amendment_assessed_before_another_was_applied_can_no_longer_be_approved(contract):
    """Two pending "order review +3 days": applying the first moves it 3 days; approving the second
    would move it 3 more while its impact (and the approvers) said from the original date."""
    c = contract()
    first = amendments.request(c.state, RequestAmendmentInput("AMD-1", "li.wei", "a", [MOVE], {}), c.journal)
    second = amendments.request(c.state, RequestAmendmentInput("AMD-2", "li.wei", "b", [MOVE], {}), c.journal)
    assert first.based_on_version == second.based_on_version == 1
    amendments.decide(c.state, DecideAmendmentInput("AMD-1", "approve", "zhang.min", "manager"), c.journal)
    assert c.state.contract_version == 2 and c.milestone("order_review").due_at == NOW + timedelta(days=5)
    approve = DecideAmendmentInput("AMD-2", "approve", "zhang.min", "manager")
    with pytest.raises(ApplicationError, match="assessed on contract version 1.*now version 2|version 2, so"):
        amendments.check_decision(c.state, approve, NOW)
    # Rejecting or withdrawing it stays possible; the handler replaying an old history skips the check.
    amendments.check_decision(c.state, DecideAmendmentInput("AMD-2", "reject", "zhang.min", "manager"), NOW)
    amendments.check_decision(c.state, DecideAmendmentInput("AMD-2", "withdraw", "li.wei"), NOW)
    amendments.check_decision(c.state, approve, NOW, still_current=False)
    # Requested again, against version 2, it is approved and moves the date from where it is now.
    third = amendments.request(c.state, RequestAmendmentInput("AMD-3", "li.wei", "b", [MOVE], {}), c.journal)
    assert third.based_on_version == 2
    assert third.impact is not None and third.impact.items[0].old_due_at == NOW + timedelta(days=5)
    amendments.check_decision(c.state, DecideAmendmentInput("AMD-3", "approve", "zhang.min", "manager"), NOW)


def test_a_notice_keeps_its_key_when_its_task_runs_again_later(contract):
    """A workflow task whose local activity wrote a notice may never be recorded (the worker died):
    the task runs again from the same state, later.  The approval's due date moves with the clock,
    its outbox key does not: it is the number of the event that logged it, so one notice goes out."""
    from workflows.contract.notices import outbox_key

    r = RequestAmendmentInput("AMD-1", "li.wei", "customer asked", [MOVE], {"manager": "zhang.min"})
    keys, dues = [], []
    for later in (timedelta(0), timedelta(seconds=7)):
        c = contract()
        c.at(NOW + later)
        amendments.request(c.state, r, c.journal)
        [approval] = [n for n in c.journal.notices if n.kind == "approval"]
        keys.append(outbox_key(approval).removeprefix(c.state.spec.contract_id))
        dues.append(approval.due_at)
    assert dues[0] != dues[1] and keys[0] == keys[1]
    assert keys[0].startswith(":approval:AMD-1:manager:n")


def _move(key: str, shift: str) -> AmendmentChange:
    return AmendmentChange(kind="move_due", key=key, item_type="milestone", shift=shift)


def test_a_move_that_puts_a_milestone_before_one_it_depends_on_is_refused(contract):
    c = contract()  # goods sale: order review -> production scheduling -> shipping -> ...
    shipping, production = c.milestone("shipping"), c.milestone("production_scheduling")
    early = (shipping.due_at - production.due_at).days + 1  # one day before production's date
    with pytest.raises(ApplicationError, match="'shipping' would fall due .* before 'production_scheduling'"):
        amendments.check(c.state, [_move("shipping", f"-P{early}D")], NOW)
    # Its own predecessor moved along in the same amendment: the order holds.
    amendments.check(c.state, [_move("production_scheduling", "-P3D"), _move("shipping", f"-P{early}D")], NOW)
    # Moving a predecessor past a milestone with a date of its own breaks the order too.
    amendments.check(c.state, [_move("shipping", "P1D")], NOW)  # fixed date now, a day later
    fixed = c.state
    amendments.apply(fixed, [_move("shipping", "P1D")], NOW)
    c.date()
    gap = (c.milestone("shipping").due_at - c.milestone("production_scheduling").due_at).days
    with pytest.raises(ApplicationError, match="'shipping' would fall due .* before 'production_scheduling'"):
        amendments.check(c.state, [_move("production_scheduling", f"P{gap + 1}D")], NOW)
    # ... and so does pushing back the start of the chain ahead of it (production follows order review).
    with pytest.raises(ApplicationError, match="'shipping' would fall due"):
        amendments.check(c.state, [_move("order_review", "P30D")], NOW)
    # On a contract whose dates all follow one another, later is fine: the milestones after it follow.
    amendments.check(contract().state, [_move("order_review", "P30D")], NOW)


def test_an_order_broken_before_the_amendment_does_not_block_other_changes(contract):
    c = contract()
    early = (c.milestone("shipping").due_at - c.milestone("production_scheduling").due_at).days + 1
    amendments.apply(c.state, [_move("shipping", f"-P{early}D")], NOW)  # as an older run applied it
    c.date()
    assert amendments.order_broken(c.state, c.state) is None
    amendments.check(c.state, [_move("invoicing", "P5D")], NOW)
    # The handler replaying such an older request does not enforce it (its patch is not there).
    amendments.check(c.state, [_move("customer_acceptance", "-P60D")], NOW, keep_order=lambda: False)
