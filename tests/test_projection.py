"""The database side, on SQLite and on PostgreSQL: migrations, exact money, idempotent projection
(the lean engine's deltas, and the legacy engine's snapshots), the notification outbox's plans."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import DBAPIError

from activities.projection import ProjectionActivities
from models import Contract, ContractEvent, Installment, Milestone, OutboxNotice, Payment
from tests.helpers import make_spec
from workflows.contract import initial_state, payments, schedule, workflow_id_for
from workflows.contract.journal import Journal
from workflows.contract.projection import Projector
from workflows.types import ContractEvent as Event
from workflows.types import PaymentInput, PaymentRecord, ProjectionInput

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


def _input(state, events):
    return ProjectionInput(state, events, workflow_id_for(state.spec.contract_id))


def _initial_state(spec):
    state = initial_state(spec)
    schedule.date_open_items(state, None)
    return state


class Contract_:
    """A contract's state, journal and projector as the workflow holds them, without Temporal."""

    def __init__(self, spec, now=NOW):
        self.now = now
        self.state = _initial_state(spec)
        self.journal = Journal(self.state, lambda: self.now)
        self.projector = Projector()
        self.journal.emit("contract.created", {"title": spec.title})

    def delta(self):
        schedule.date_open_items(self.state, None)
        self.state.next_due_at = schedule.next_due_at(self.state, self.now)
        return self.projector.delta(self.state, workflow_id_for(self.state.spec.contract_id), self.journal, self.now)


def test_delta_projection_is_idempotent_small_and_never_goes_backwards(sessions):
    spec = make_spec(NOW, amount="1000.10")
    c = Contract_(spec)
    project = ProjectionActivities(sessions).project_delta
    first = c.delta()
    assert len(first.milestones) == 6 and len(first.installments) == 2 and first.spec is not None
    # The workflow's first delta creates the row even if the API never wrote one.
    assert project(first) == 1
    assert project(first) == 0  # a retry writes nothing twice
    c.projector.settle(c.state)
    assert c.delta() is None  # nothing changed: nothing to write

    payments.apply(c.state, PaymentInput("TX", "300.03", "CNY", NOW), c.journal)
    second = c.delta()
    # Only what the payment touched: the installment it paid, the payment, its event.
    assert [r.installment.key for r in second.installments] == ["deposit"]
    assert second.milestones == [] and [p.reference for p in second.payments] == ["TX"]
    assert [e.type for e in second.events] == ["installment.paid", "payment.received"] and second.spec is None
    assert project(second) == 2
    c.projector.settle(c.state)
    # A stale retry of the first delta arrives late: its events are known, its facts older.
    assert project(first) == 0

    with sessions() as session:
        row = session.get(Contract, spec.contract_id)
        assert row.version == 3 and row.paid_total == Decimal("300.03") and row.outstanding == Decimal("700.07")
        assert row.effective_at.tzinfo is not None
        assert session.execute(select(ContractEvent.seq).where(ContractEvent.contract_id == spec.contract_id)
                               .order_by(ContractEvent.seq)).scalars().all() == [1, 2, 3]
        assert session.execute(select(func.count()).select_from(Milestone)).scalar_one() == 6
        inst = {i.key: i for i in session.execute(select(Installment)).scalars()}
        assert inst["deposit"].paid == Decimal("300.03") and inst["deposit"].status == "paid"
        for model in (Milestone, Installment):
            assert set(session.execute(select(model.currency)).scalars()) == {spec.currency}
        payment = session.execute(select(Payment)).scalar_one()
        assert payment.amount == Decimal("300.03")


def test_reminder_plans_go_to_the_outbox_and_a_resolved_item_cancels_its_own(sessions):
    from workflows.contract import milestones
    from workflows.types import CompleteMilestoneInput

    spec = make_spec(NOW, amount="1000.10")
    c = Contract_(spec)
    project = ProjectionActivities(sessions).project_delta
    project(c.delta())
    c.projector.settle(c.state)
    review = next(m for m in c.state.milestones if m.key == "order_review")  # due in 2 days
    with sessions() as session:
        rows = session.execute(select(OutboxNotice).where(OutboxNotice.item_key == "order_review")).scalars().all()
    # P7D has passed at registration: one catch-up reminder now, not a burst; P1D at its time.
    assert sorted((r.key.rsplit(":", 1)[1], r.status, r.send_at) for r in rows) == [
        ("reminder0-P1D", "pending", review.due_at - timedelta(days=1)), ("reminder0-P7D", "pending", NOW)]
    estimated = {m.key for m in c.state.milestones if m.due_estimated}
    with sessions() as session:
        planned = set(session.execute(select(OutboxNotice.item_key)).scalars())
    assert not planned & estimated  # a date that waits on a predecessor is not reminded yet

    milestones.complete(c.state, CompleteMilestoneInput("order_review", "li.wei"), c.journal)
    project(c.delta())
    with sessions() as session:
        statuses = set(session.execute(select(OutboxNotice.status)
                                       .where(OutboxNotice.item_key == "order_review")).scalars())
    assert statuses == {"cancelled"}  # done: no reminder for it any more


def test_legacy_snapshot_projection_is_idempotent_and_never_goes_backwards(sessions):
    """The legacy engine's activity (runs started before lean-engine-v1 still call it)."""

def test_migrations_create_the_schema(sessions):
    with sessions() as session:
        names = set(inspect(session.get_bind()).get_table_names())
    assert {"contracts", "customers", "milestones", "installments", "payments", "contract_events"} <= names


def test_the_migrations_build_exactly_what_the_models_describe(sessions):
    """A model changed without its migration (or the reverse) shows here, not in production."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import models

    with sessions() as session:
        diff = compare_metadata(MigrationContext.configure(session.connection()), models.Base.metadata)
    assert diff == []


    spec = make_spec(NOW, amount="1000.10")
    state = _initial_state(spec)
    state.version = 2
    events = [Event(1, "contract.created", NOW, {"title": spec.title}), Event(2, "x.y", NOW, {"n": 1})]
    project = ProjectionActivities(sessions).project_contract

    # The workflow's first snapshot creates the row even if the API never wrote one.
    assert project(_input(state, events)) == 2
    assert project(_input(state, events)) == 0  # a retry writes nothing twice

    newer = _initial_state(spec)
    newer.version = 3
    newer.status = "terminated"
    newer.payments = [PaymentRecord("TX", "10.05", "CNY", NOW, NOW, "finance", {"deposit": "10.05"}, "0")]
    newer.outstanding = "990.05"
    assert project(_input(newer, [Event(3, "contract.terminated", NOW)])) == 1
    # A stale retry of the older snapshot arrives late: it must not overwrite the newer one.
    project(_input(state, events))

    with sessions() as session:
        row = session.get(Contract, spec.contract_id)
        assert row.status == "terminated" and row.version == 3
        assert row.outstanding == Decimal("990.05") and row.amount == Decimal("1000.10")
        assert row.effective_at.tzinfo is not None
        seqs = session.execute(
            select(ContractEvent.seq).where(ContractEvent.contract_id == spec.contract_id).order_by(ContractEvent.seq)
        ).scalars().all()
        assert seqs == [1, 2, 3]
        assert session.execute(select(func.count()).select_from(Milestone)).scalar_one() == 6
        assert session.execute(select(func.count()).select_from(Installment)).scalar_one() == 2
        # Items carry their contract's currency (migration 0012: the money analytics group by it).
        for model in (Milestone, Installment):
            assert set(session.execute(select(model.currency)).scalars()) == {spec.currency}
        payment = session.execute(select(Payment)).scalar_one()
        assert payment.amount == Decimal("10.05") and payment.allocations == {"deposit": "10.05"}


def test_money_is_exact(sessions):
    spec = make_spec(NOW, amount="0.30", installments=[
        {"key": "a", "due_after": "P1D", "amount": "0.10"},
        {"key": "b", "due_after": "P2D", "amount": "0.20"},
    ])
    ProjectionActivities(sessions).project_delta(Contract_(spec).delta())
    with sessions() as session:
        amounts = session.execute(select(Installment.amount).order_by(Installment.position)).scalars().all()
    assert amounts == [Decimal("0.10"), Decimal("0.20")]
    assert sum(amounts) == Decimal("0.30")  # with floats this would be 0.30000000000000004


def test_event_log_is_append_only(sessions):
    spec = make_spec(NOW)
    ProjectionActivities(sessions).project_delta(Contract_(spec).delta())
    for statement in ("UPDATE contract_events SET type = 'forged'", "DELETE FROM contract_events"):
        with pytest.raises(DBAPIError, match="append-only"), sessions.begin() as session:
            session.execute(text(statement))
    with sessions() as session:
        assert session.execute(select(ContractEvent.type)).scalars().all() == ["contract.created"]


def test_naive_datetimes_are_refused(sessions):
    spec = make_spec(NOW)
    state = _initial_state(spec)
    state.version = 1
    state.next_due_at = datetime(2026, 12, 1, 8, 0) + timedelta(0)  # no zone
    with pytest.raises(Exception, match="naive datetime"):
        ProjectionActivities(sessions).project_contract(_input(state, []))
    c = Contract_(spec)
    d = c.delta()
    d.facts.next_due_at = datetime(2026, 12, 1, 8, 0)  # no zone
    with pytest.raises(Exception, match="naive datetime"):
        ProjectionActivities(sessions).project_delta(d)


def test_a_database_failure_is_reported_in_a_few_words(sessions, tmp_path):
    """A projection the database refuses fails with the database's reason, short: SQLAlchemy's own
    error carries the statement and a whole delta's rows, a failure Temporal's server refuses to
    keep ("Failure exceeds size limit" is all an operator would see)."""
    from temporalio.exceptions import ApplicationError

    from models.db import make_engine, make_session_factory

    c = Contract_(make_spec(NOW, amount="1000.10"))
    delta = c.delta()
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # a real database, without the schema
    try:
        with pytest.raises(ApplicationError) as caught:
            ProjectionActivities(make_session_factory(engine)).project_delta(delta)
    finally:
        engine.dispose()
    failure = caught.value
    assert failure.type == "ReadModelUnavailable" and not failure.non_retryable
    assert failure.message.startswith("read model write failed: OperationalError: no such table")
    assert len(failure.message) < 400 and failure.__cause__ is None
    # The same delta on the real schema goes through (nothing was half-written).
    assert ProjectionActivities(sessions).project_delta(delta) == 1
