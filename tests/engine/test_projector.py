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
