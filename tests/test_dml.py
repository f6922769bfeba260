"""models/dml.py: the hot path's DML run on the driver's cursor stores exactly what
``Connection.execute`` stores, in the caller's transaction, and fails the same way.  On SQLite and
on PostgreSQL (the ``sessions`` fixture runs each test on both)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from activities.projection import projection_statements
from models import Contract, OutboxNotice, Payment
from models.dml import execute_dml, first_row
from models.outbox import CANCELLED, PENDING, SENT
from models.repository import new_contract_row
from tests.helpers import make_spec
from workflows.contract import workflow_id_for

AT = datetime(2026, 12, 7, 9, 30, 15, 123456, tzinfo=timezone.utc)


def _contract(conn) -> str:
    spec = make_spec(AT)
    with Session(bind=conn) as session:
        new_contract_row(session, spec, workflow_id=workflow_id_for(spec.contract_id), status="active", version=0,
                         now=AT)
        session.flush()
    return spec.contract_id


def _payment(cid: str, ref: str, amount: str) -> dict:
    return {"contract_id": cid, "reference": ref, "amount": Decimal(amount), "currency": "CNY", "received_at": AT,
            "recorded_at": AT + timedelta(seconds=1), "recorded_by": "sun.li", "allocations": {"m1": amount},
            "excess": Decimal("0.00")}


def _outbox(cid: str, key: str, send_at: datetime) -> dict:
    return {"key": key, "contract_id": cid, "item_type": "milestone", "item_key": "m1", "kind": "reminder",
            "send_at": send_at, "status": PENDING, "request": {"to": ["li.wei"], "n": 1}, "attempts": 0,
            "next_attempt_at": None, "lease_owner": None, "lease_until": None, "created_at": AT, "done_at": None,
            "error": None}


def _stored_payments(conn, cid: str) -> list[tuple]:
    P = Payment.__table__
    return [tuple(r) for r in conn.execute(select(P).where(P.c.contract_id == cid).order_by(P.c.reference))]


def test_the_same_rows_as_connection_execute(sessions):
    engine = sessions.kw["bind"]
    sql = projection_statements(engine.dialect.name)
    with engine.begin() as conn:
        fast_id, orm_id = _contract(conn), _contract(conn)
        one = [_payment(fast_id, "R-1", "12.34")]
        many = [_payment(fast_id, "R-2", "0.01"), _payment(fast_id, "R-3", "99999999.99")]
        assert execute_dml(conn, sql.payments, one[0]) == 1
        assert execute_dml(conn, sql.payments, many) == 2
        conn.execute(sql.payments, [{**p, "contract_id": orm_id} for p in one + many])
        fast, orm = _stored_payments(conn, fast_id), _stored_payments(conn, orm_id)
    assert [r[1:] for r in fast] == [r[1:] for r in orm]
    assert fast[0][2] == Decimal("12.34") and fast[0][4] == AT and fast[0][7] == {"m1": "12.34"}  # typed back


def test_conflicts_count_nothing_and_literal_binds_apply(sessions):
    """ON CONFLICT DO NOTHING changes no row (the count says so); the reminder upsert's own bound
    values (its ``status = 'pending'``, its WHERE) apply as through SQLAlchemy."""
    engine = sessions.kw["bind"]
    sql = projection_statements(engine.dialect.name)
    O = OutboxNotice.__table__  # noqa: E741
    with engine.begin() as conn:
        c1 = _contract(conn)
        assert execute_dml(conn, sql.payments, _payment(c1, "R-1", "1.00")) == 1
        assert execute_dml(conn, sql.payments, _payment(c1, "R-1", "1.00")) == 0  # one row, on the cursor
        assert execute_dml(conn, sql.payments, [_payment(c1, "R-1", "1.00"), _payment(c1, "R-2", "2.00")]) == 1
        execute_dml(conn, sql.reminders, [_outbox("c1", "k-sent", AT), _outbox("c1", "k-cancelled", AT)])
        conn.execute(update(OutboxNotice).where(O.c.key == "k-sent").values(status=SENT))
        conn.execute(update(OutboxNotice).where(O.c.key == "k-cancelled").values(status=CANCELLED))
        later = AT + timedelta(days=3)
        execute_dml(conn, sql.reminders, [_outbox("c1", "k-sent", later), _outbox("c1", "k-cancelled", later)])
        rows = dict(conn.execute(select(O.c.key, O.c.status)).all())
        send_at = dict(conn.execute(select(O.c.key, O.c.send_at)).all())
    assert rows == {"k-sent": SENT, "k-cancelled": PENDING}  # a sent reminder is not planned again
    assert send_at == {"k-sent": AT, "k-cancelled": later}


def test_the_callers_transaction_and_sqlalchemy_errors(sessions):
    engine = sessions.kw["bind"]
    sql = projection_statements(engine.dialect.name)
    with engine.begin() as conn:
        c1 = _contract(conn)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        execute_dml(conn, sql.payments, _payment(c1, "R-rolled-back", "1.00"))
        raise RuntimeError("the caller fails after the write")
    with engine.connect() as conn:
        assert _stored_payments(conn, c1) == []  # rolled back with the caller's transaction
    # A driver error comes out as SQLAlchemy's, so the callers' ``except DBAPIError`` still hold.
    with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
        execute_dml(conn, sql.payments, _payment("no-such-contract", "R-1", "1.00"))  # foreign key
    assert isinstance(caught.value, DBAPIError) and "payments" in str(caught.value.statement)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from payments")).scalar() == 0


def test_a_statement_needing_python_defaults_goes_through_sqlalchemy(sessions):
    """A row that leaves out a column with a Python-side default (``attempts``) is not run on the
    bare cursor, which would store NULL or fail: SQLAlchemy fills the default."""
    engine = sessions.kw["bind"]
    sql = projection_statements(engine.dialect.name)
    row = {k: v for k, v in _outbox("c1", "k1", AT).items() if k not in ("attempts", "status")}
    with engine.begin() as conn:
        assert execute_dml(conn, sql.notices, row) == 1
        stored = conn.execute(select(OutboxNotice.__table__.c.attempts, OutboxNotice.__table__.c.status)).one()
    assert tuple(stored) == (0, PENDING)


def test_a_lookup_by_key_reads_what_sqlalchemy_reads(sessions):
    # The API's lookup of an update's target (api/contracts/service.py), built here as it is there.
    target = select(Contract.workflow_id, Contract.status, Contract.version).where(Contract.id == bindparam("id"))
    engine = sessions.kw["bind"]
    sql = projection_statements(engine.dialect.name)
    with engine.begin() as conn:
        cid = _contract(conn)
        assert first_row(conn, target, {"id": cid}) == tuple(conn.execute(target, {"id": cid}).one())
        assert first_row(conn, target, {"id": cid}) == (workflow_id_for(cid), "active", 0)
        assert first_row(conn, sql.version, {"cid": cid}) == (0,)
        assert first_row(conn, target, {"id": "no-such-contract"}) is None
        # A column whose type converts the driver's value (money) is read through SQLAlchemy.
        amount = select(Contract.amount).where(Contract.id == cid)
        found = first_row(conn, amount, {})
        assert found is not None and type(found[0]) is Decimal
