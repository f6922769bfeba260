"""projection: the delta holds what changed since the last one, and nothing when nothing did."""

from __future__ import annotations

from tests.engine.conftest import NOW
from workflows.contract import milestones, payments
from workflows.contract.projection import Projector
from workflows.types import CompleteMilestoneInput, PaymentInput


def _delta(c, p):
    c.date()
    return p.delta(c.state, "wf", c.journal, c.clock())


def test_first_delta_carries_everything_then_only_changes(contract):
    c = contract()
    p = Projector()
    c.journal.emit("contract.created", {})
    first = _delta(c, p)
    assert len(first.milestones) == 6 and len(first.installments) == 2 and first.spec is not None
    assert [e.type for e in first.events] == ["contract.created"] and c.journal.events == []
    p.settle(c.state)
    assert _delta(c, p) is None

    # Completed on its due date: the later steps' estimated dates stay as they were.
    c.at(c.milestone("order_review").due_at)
    milestones.complete(c.state, CompleteMilestoneInput("order_review", "li.wei"), c.journal)
    d = _delta(c, p)
    # The completed milestone and the next one (its date now firm, handed off); not the others.
    assert {r.milestone.key for r in d.milestones} == {"order_review", "production_scheduling"}
    assert d.spec is None
    assert [n.request.kind for n in d.notices] == ["handoff"]
    assert {(pl.item_type, pl.item_key) for pl in d.reminders} >= {("milestone", "order_review")}
    p.settle(c.state)

    payments.apply(c.state, PaymentInput("B1", "1.00", "CNY", NOW), c.journal)
    d = _delta(c, p)
    assert d.milestones == [] and [x.reference for x in d.payments] == ["B1"]


def test_an_abandoned_delta_gives_its_events_back(contract):
    c = contract()
    p = Projector()
    c.journal.emit("contract.created", {})
    d = _delta(c, p)
    p.abandon(d, c.journal)
    assert [e.type for e in c.journal.events] == ["contract.created"]


def _hand(c, p):
    c.date()
    return p.hand_over(c.state, "wf", c.journal, c.clock())


def test_handed_deltas_build_on_each_other_and_are_confirmed_by_version(contract):
    from datetime import timedelta

    c = contract()
    p = Projector()
    c.journal.emit("contract.created", {})
    assert _hand(c, p) is None  # a run's first delta goes through the local activity
    assert c.journal.events != [] and p.handed == []
    written = _delta(c, p).version
    p.settle(c.state)

    payments.apply(c.state, PaymentInput("B1", "1.00", "CNY", NOW), c.journal)
    one = _hand(c, p)
    assert one.requires_version == written and [x.reference for x in one.payments] == ["B1"]
    payments.apply(c.state, PaymentInput("B2", "1.00", "CNY", NOW), c.journal)
    two = _hand(c, p)
    assert two.requires_version == one.version and [x.reference for x in two.payments] == ["B2"]
    assert p.requires() == two.version and c.journal.events == []

    # The read model shows the first: only the second is still unconfirmed, and not yet missing.
    p.confirm(one.version)
    assert [h.version for h in p.handed] == [two.version]
    assert not p.missing(one.version, c.clock(), timedelta(seconds=1))
    assert p.missing(one.version, c.clock() + timedelta(seconds=1), timedelta(seconds=1))

    # Never written: a new projector carries every item again, with the lost events in order.
    fresh = p.reset(c.journal)
    assert [e.type for e in c.journal.events] == [e.type for e in two.events]
    again = fresh.delta(c.state, "wf", c.journal, c.clock())
    assert again.spec is not None and len(again.milestones) == 6
    assert {x.reference for x in again.payments} == {"B1", "B2"}


def test_a_delta_with_an_amendment_is_not_handed_over(contract):
    from workflows.contract import amendments
    from workflows.types import AmendmentChange, RequestAmendmentInput

    c = contract()
    p = Projector()
    p.delta(c.state, "wf", c.journal, c.clock())
    p.settle(c.state)
    r = RequestAmendmentInput("A1", "li.wei", "move", [AmendmentChange(kind="move_due", key="shipping",
                                                                       item_type="milestone", shift="P3D")],
                              {"manager": "zhang.min"})
    amendments.request(c.state, r, c.journal)
    events = list(c.journal.events)
    assert _hand(c, p) is None
    assert c.journal.events == events and p.handed == []  # left to the local activity, nothing taken
