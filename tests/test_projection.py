"""The database side, on SQLite and on PostgreSQL: migrations, exact money, idempotent projection."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import DBAPIError

from activities.projection import ProjectionActivities
from models import Contract, ContractEvent, Installment, Milestone, Payment
from tests.helpers import make_spec
from workflows.contract import _initial_state, workflow_id_for
from workflows.types import ContractEvent as Event
from workflows.types import PaymentRecord, ProjectionInput

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


def _input(state, events):
    return ProjectionInput(state, events, workflow_id_for(state.spec.contract_id))


def test_migrations_create_the_schema(sessions):
    with sessions() as session:
        names = set(inspect(session.get_bind()).get_table_names())
    assert {"contracts", "customers", "milestones", "installments", "payments", "contract_events"} <= names


def test_projection_is_idempotent_and_never_goes_backwards(sessions):
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
    state = _initial_state(spec)
    state.version = 1
    ProjectionActivities(sessions).project_contract(_input(state, [Event(1, "contract.created", NOW)]))
    with sessions() as session:
        amounts = session.execute(select(Installment.amount).order_by(Installment.position)).scalars().all()
    assert amounts == [Decimal("0.10"), Decimal("0.20")]
    assert sum(amounts) == Decimal("0.30")  # with floats this would be 0.30000000000000004


def test_event_log_is_append_only(sessions):
    spec = make_spec(NOW)
    state = _initial_state(spec)
    state.version = 1
    ProjectionActivities(sessions).project_contract(_input(state, [Event(1, "contract.created", NOW)]))
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
