"""The projection activities: the contract's read model and notification outbox, kept by its workflow.

``project_delta`` (the lean engine, a local activity): one transaction writes what a
``ProjectionDelta`` carries — new events, the contract's facts, the items that changed, new
payments, amendments, notices and reminder plans.  Idempotent, so a retried or replayed activity
writes nothing twice:
  * events are keyed ``(contract_id, seq)`` and inserted with ON CONFLICT DO NOTHING, notices and
    payments likewise by their keys;
  * the facts and items (and reminder plans) are applied only if the delta is at least as new
    (``version``) as what the row holds, so an old retry never overwrites a newer write;
  * a delta that builds on one handed to the API (``requires_version``) writes nothing until the
    read model holds that one (``ReadModelBehind``).

``write_handed`` is the API's side: it writes the delta an update answered with (api-projection-v1)
through the same code, and says False while the delta it builds on is not there yet.

``project_contract`` (the legacy engine, frozen with it) writes a whole snapshot.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.org import TASK_DONE
from core.serde import to_jsonable
from models import AmendmentRecord, Contract, ContractEvent, Installment, Milestone, OutboxNotice, Payment, Task
from models.dml import execute_dml, first_row
from models.outbox import CANCELLED, PENDING
from models.repository import new_contract_row
from workflows.contract.projection import READ_MODEL_BEHIND
from workflows.types import (
    AmendmentStatus,
    ContractState,
    ContractStatus,
    InstallmentStatus,
    MilestoneStatus,
    ProjectionDelta,
    ProjectionInput,
    ReminderPlan,
    ScheduledNotice,
)
from workflows.types import ContractEvent as Event

log = logging.getLogger(__name__)


class ProjectionActivities:
    def __init__(self, session_factory: sessionmaker[Session], on_notices: Callable[[], None] | None = None) -> None:
        self._sessions = session_factory
        self._engine: Engine = session_factory.kw["bind"]
        # Called after a commit that queued notices due now: wakes the outbox dispatcher in this process.
        self._on_notices = on_notices or (lambda: None)

    # ------------------------------------------------------------------ lean engine
    @activity.defn(name="project_delta")
    def project_delta(self, d: ProjectionDelta) -> int:
        """Returns how many new events were written (0 on a retry that already succeeded)."""
        try:
            return self._project_delta(d)
        except DBAPIError as exc:
            raise read_model_failure(d.contract_id, exc) from None

    def _project_delta(self, d: ProjectionDelta, also: Callable[[Connection], None] | None = None) -> int:
        # On a bare connection, not a Session: this is on every update's path (the API writes the
        # delta before it answers), and a Session's set-up and events cost more than the
        # statements.  The rare ORM work (a missing row, an amendment) gets a Session on it.
        with self._engine.begin() as conn:
            sql = projection_statements(conn.dialect.name)
            written = _insert_events(conn, sql, d.contract_id, d.events)
            row = first_row(conn, sql.version, {"cid": d.contract_id})
            if row is None:
                if d.spec is None:
                    raise RuntimeError(f"contract {d.contract_id} has no row and the delta carries no spec")
                # The API writes the row first; a workflow without one (started by an operator from
                # the CLI) gets one here rather than staying invisible.
                with Session(bind=conn) as session:
                    new_contract_row(session, d.spec, workflow_id=d.workflow_id, status="active", version=-1,
                                     now=_now())
                    session.flush()
                stored_version = -1
            else:
                stored_version = row[0]
            if d.requires_version is not None and stored_version < d.requires_version:
                # A delta handed to the API is not there yet: write nothing (the transaction rolls
                # back); the API tries again, the workflow writes every item again.
                raise ApplicationError(f"the read model of contract {d.contract_id} is at version {stored_version}, "
                                       f"this delta needs {d.requires_version}", type=READ_MODEL_BEHIND,
                                       non_retryable=True)
            newer = d.version >= stored_version
            if newer:
                _apply_delta(conn, sql, d, first=stored_version <= 0)
            # An older delta written late (handed to the API) leaves the newer reminder plans alone.
            due_now = _write_notices(conn, sql, d, first=stored_version <= 0, plans=newer)
            if also is not None:
                also(conn)
        if due_now:
            self._on_notices()
        return written

    def write_handed(self, d: ProjectionDelta, also: Callable[[Connection], None] | None = None) -> bool:
        """Write a delta an update handed to the API (the API's side of ``project_delta``):
        False while the read model lacks the delta it builds on (an earlier one still being
        written by another request): the caller waits a moment and tries again.  ``also``
        writes more in the same transaction (the request's audit entry): it commits or rolls
        back with the delta."""
        try:
            self._project_delta(d, also)
        except ApplicationError as exc:
            if exc.type == READ_MODEL_BEHIND:
                return False
            raise
        return True

    # ------------------------------------------------------------------ legacy engine
    @activity.defn(name="project_contract")
    def project_contract(self, input: ProjectionInput) -> int:
        """Returns how many new events were written (0 on a retry that already succeeded)."""
        try:
            return self._project_contract(input)
        except DBAPIError as exc:
            raise read_model_failure(input.state.spec.contract_id, exc) from None

    def _project_contract(self, input: ProjectionInput) -> int:
        state = input.state
        cid = state.spec.contract_id
        with self._sessions.begin() as session:
            conn = session.connection()
            written = _insert_events(conn, projection_statements(conn.dialect.name), cid, input.events)
            contract = session.execute(
                select(Contract).where(Contract.id == cid).with_for_update()
            ).scalar_one_or_none()
            if contract is None:
                contract = new_contract_row(
                    session, state.spec, workflow_id=input.workflow_id, status="active", version=-1, now=_now()
                )
                session.flush()
            if state.version >= contract.version:
                _apply_snapshot(session, contract, state)
        return written


def read_model_failure(contract_id: str, exc: DBAPIError) -> ApplicationError:
    """The database's own words, short, as the activity's failure (retried).  SQLAlchemy's error
    carries the statement and its parameters (a whole delta's rows): Temporal's server refuses a
    failure that large and shows operators "Failure exceeds size limit" instead of the reason."""
    reason = (str(exc.orig).strip().splitlines() or [""])[0][:300]
    log.warning("projection of contract %s failed: %s: %s", contract_id, type(exc.orig).__name__, reason)
    return ApplicationError(f"read model write failed: {type(exc.orig).__name__}: {reason}",
                            type="ReadModelUnavailable")


def _insert_for(session: Session) -> Callable[..., Any]:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


MILESTONE_COLUMNS = ("position", "name", "kind", "owner", "department", "standard", "due_rule", "depends_on", "due_at",
                     "due_estimated", "status", "progress", "completed_at", "completed_by", "overdue_since",
                     "planned_cost", "actual_cost", "satisfaction", "currency", "started_at")
INSTALLMENT_COLUMNS = ("position", "amount", "paid", "currency", "status", "due_at", "due_estimated", "paid_at")


@dataclass(frozen=True)
class _Statements:
    """The projection's statements for one dialect, built once: each delta executes them with its
    rows (executemany), so SQLAlchemy compiles each statement once per process, not per delta."""

    events: Any
    version: Any
    contract: Any
    milestones_insert: Any
    milestones_upsert: Any
    installments_insert: Any
    installments_upsert: Any
    payments: Any
    notices: Any
    reminders: Any


def _table(model: Any) -> Table:
    return cast(Table, model.__table__)


@functools.cache
def projection_statements(dialect: str) -> _Statements:
    """The projection's statements for one dialect, built once (tests/test_dml.py runs them too)."""
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    C, E, M = _table(Contract), _table(ContractEvent), _table(Milestone)
    Inst, P, O = _table(Installment), _table(Payment), _table(OutboxNotice)  # noqa: E741

    def upsert(table, columns):
        stmt = ins(table)
        return stmt.on_conflict_do_update(index_elements=["contract_id", "key"],
                                          set_={c: stmt.excluded[c] for c in columns})

    reminders = ins(O)
    return _Statements(
        events=ins(E).on_conflict_do_nothing(index_elements=["contract_id", "seq"]),
        version=select(C.c.version).where(C.c.id == bindparam("cid")).with_for_update(),
        contract=update(C).where(C.c.id == bindparam("cid")),
        milestones_insert=ins(M), milestones_upsert=upsert(M, MILESTONE_COLUMNS),
        installments_insert=ins(Inst), installments_upsert=upsert(Inst, INSTALLMENT_COLUMNS),
        payments=ins(P).on_conflict_do_nothing(index_elements=["contract_id", "reference"]),
        notices=ins(O).on_conflict_do_nothing(index_elements=["key"]),
        reminders=reminders.on_conflict_do_update(
            index_elements=["key"],
            set_={"send_at": reminders.excluded.send_at, "request": reminders.excluded.request, "status": PENDING},
            where=or_(O.c.status == PENDING, O.c.status == CANCELLED)),  # not an IN: it runs as executemany
    )


def _insert_events(conn: Connection, sql: _Statements, contract_id: str, events: list[Event]) -> int:
    if not events:
        return 0
    rows = [{"contract_id": contract_id, "seq": e.seq, "type": e.type, "at": e.at, "actor": e.actor,
             "data": to_jsonable(e.data), "key": None} for e in events]
    written = execute_dml(conn, sql.events, rows)
    if 0 <= written < len(rows):
        _check_same_events(conn, contract_id, rows)
    return max(written, 0)


def _check_same_events(conn: Connection, contract_id: str, rows: list[dict[str, Any]]) -> None:
    """A retry finds its events already written: they must be the same events.  A different event
    under the same number means the workflow's event numbering diverged from what an earlier
    execution wrote (the log keeps the first; the newer one is lost): say so loudly."""
    seqs = [r["seq"] for r in rows]
    E = ContractEvent.__table__
    stored = dict(conn.execute(select(E.c.seq, E.c.type).where(E.c.contract_id == contract_id, E.c.seq.in_(seqs))).all())
    clashes = [(r["seq"], stored[r["seq"]], r["type"]) for r in rows if stored.get(r["seq"], r["type"]) != r["type"]]
    if clashes:
        log.error("event log of contract %s diverged: (seq, stored, now) %s", contract_id, clashes)


def _apply_delta(conn: Connection, sql: _Statements, d: ProjectionDelta, *, first: bool) -> None:
    cid, f, now = d.contract_id, d.facts, _now()
    execute_dml(conn, sql.contract, {
        "cid": cid, "status": f.status.value, "amount": Decimal(f.amount), "end_at": f.end_at,
        "paid_total": Decimal(f.paid_total), "outstanding": Decimal(f.outstanding), "credit": Decimal(f.credit),
        "overdue_count": f.overdue_count, "next_due_at": f.next_due_at, "version": d.version, "closed_at": f.closed_at,
        "settled_at": f.settled_at, "close_reason": f.close_reason or None, "updated_at": now,
    })
    currency = f.currency or conn.execute(select(Contract.__table__.c.currency).where(
        Contract.__table__.c.id == cid)).scalar_one()
    if d.milestones:
        execute_dml(conn, sql.milestones_insert if first else sql.milestones_upsert,
                    [_milestone_row(cid, r.position, r.milestone, r.started_at, currency) for r in d.milestones])
    if d.removed_milestones:
        conn.execute(delete(Milestone).where(Milestone.contract_id == cid, Milestone.key.in_(d.removed_milestones)))
    if d.installments:
        execute_dml(conn, sql.installments_insert if first else sql.installments_upsert,
                    [_installment_row(cid, r.position, r.installment, currency) for r in d.installments])
    if d.removed_installments:
        conn.execute(delete(Installment).where(Installment.contract_id == cid,
                                               Installment.key.in_(d.removed_installments)))
    if d.payments:
        execute_dml(conn, sql.payments, [
            {"contract_id": cid, "reference": p.reference, "amount": Decimal(p.amount), "currency": p.currency,
             "received_at": p.received_at, "recorded_at": p.recorded_at, "recorded_by": p.by,
             "allocations": dict(p.allocations), "excess": Decimal(p.excess)}
            for p in d.payments
        ])
    if d.amendments:  # rare: the ORM is fine here
        with Session(bind=conn) as session:
            for a in d.amendments:
                record = to_jsonable(a)
                existing = session.get(AmendmentRecord, (cid, a.id))
                if existing is None:
                    session.add(AmendmentRecord(contract_id=cid, amendment_id=a.id, number=a.number,
                                                status=a.status.value, record=record, updated_at=now))
                else:
                    if record.get("impact") is None:  # let go by the workflow: the stored one stays
                        record["impact"] = existing.record.get("impact")
                    existing.status, existing.record, existing.updated_at = a.status.value, record, now
            session.flush()
    _close_tasks(conn, d)


def _close_tasks(conn: Connection, d: ProjectionDelta) -> None:
    """Inbox tasks about items this delta resolved are done: a milestone done or waived (or
    removed), an installment paid, a role's approval decided (or its amendment settled); every
    task about a contract that closed.  A task's key is its notice's (``<contract>:<item type>:
    <item key>:...``, activities/notify.py); the operator's delivery-failure tasks are not
    about an item and stay open."""
    T, cid = _table(Task), d.contract_id
    if d.facts.status != ContractStatus.ACTIVE:
        about = T.c.key.startswith(f"{cid}:", autoescape=True)
    else:
        items = [("milestone", r.milestone.key) for r in d.milestones
                 if r.milestone.status in (MilestoneStatus.DONE, MilestoneStatus.WAIVED)]
        items += [("milestone", key) for key in d.removed_milestones]
        items += [("installment", r.installment.key) for r in d.installments
                  if r.installment.status == InstallmentStatus.PAID]
        items += [("installment", key) for key in d.removed_installments]
        for a in d.amendments:
            roles = set(a.required_roles) if a.status != AmendmentStatus.PENDING else {x.role for x in a.decisions}
            items += [("approval", f"{a.id}:{role}") for role in sorted(roles)]
        if not items:
            return
        about = or_(*(T.c.key.startswith(f"{cid}:{item_type}:{key}:", autoescape=True) for item_type, key in items))
    conn.execute(update(T).where(T.c.contract_id == cid, T.c.status != TASK_DONE, about).values(status=TASK_DONE))


def _milestone_row(cid: str, position: int, m: Any, started_at: datetime | None, currency: str) -> dict[str, Any]:
    return {
        "contract_id": cid, "key": m.key, "position": position, "name": m.name, "kind": m.kind, "owner": m.owner,
        "department": m.department, "standard": m.standard, "due_rule": to_jsonable(m.due),
        "depends_on": list(m.depends_on), "due_at": m.due_at, "due_estimated": m.due_estimated,
        "status": str(m.status), "progress": m.progress, "completed_at": m.completed_at,
        "completed_by": m.completed_by, "overdue_since": m.overdue_since,
        "planned_cost": Decimal(m.planned_cost) if m.planned_cost is not None else None,
        "actual_cost": Decimal(m.actual_cost) if m.actual_cost is not None else None,
        "satisfaction": m.satisfaction, "currency": currency, "started_at": started_at,
    }


def _installment_row(cid: str, position: int, i: Any, currency: str) -> dict[str, Any]:
    return {"contract_id": cid, "key": i.key, "position": position, "amount": Decimal(i.amount),
            "paid": Decimal(i.paid), "currency": currency, "status": str(i.status), "due_at": i.due_at,
            "due_estimated": i.due_estimated, "paid_at": i.paid_at}


def _write_notices(conn: Connection, sql: _Statements, d: ProjectionDelta, *, first: bool, plans: bool = True
                   ) -> bool:
    """Queue the delta's notices and apply its reminder plans; whether something is due now."""
    now = _now()
    if not plans:
        d = replace(d, reminders=[])
    if not first:
        for plan in d.reminders:
            _cancel_unwanted(conn, d.contract_id, plan)
    due_now = False
    if d.notices:
        execute_dml(conn, sql.notices, [_outbox_row(d.contract_id, n, now) for n in d.notices])
        due_now = True
    planned = [_outbox_row(d.contract_id, n, now) for plan in d.reminders for n in plan.notices]
    if planned:
        execute_dml(conn, sql.reminders, planned)
        due_now = due_now or any(n["send_at"] <= now for n in planned)
    return due_now


def _cancel_unwanted(conn: Connection, contract_id: str, plan: ReminderPlan) -> None:
    O = _table(OutboxNotice)  # noqa: E741
    stmt = update(O).where(O.c.contract_id == contract_id, O.c.item_type == plan.item_type,
                           O.c.item_key == plan.item_key, O.c.kind == "reminder", O.c.status == PENDING)
    keep = [n.key for n in plan.notices]
    if keep:
        stmt = stmt.where(O.c.key.not_in(keep))
    conn.execute(stmt.values(status=CANCELLED, done_at=_now()))


def _outbox_row(contract_id: str, n: ScheduledNotice, now: datetime) -> dict[str, Any]:
    r = n.request
    return {"key": n.key, "contract_id": contract_id, "item_type": r.item_type, "item_key": r.item_key,
            "kind": r.kind, "send_at": n.send_at, "status": PENDING, "request": to_jsonable(r), "attempts": 0,
            "next_attempt_at": None, "lease_owner": None, "lease_until": None, "created_at": now, "done_at": None,
            "error": None}


# ---------------------------------------------------------------------- legacy snapshot


def _apply_snapshot(session: Session, contract: Contract, state: ContractState) -> None:
    from workflows.contract.payments import settled_at
    from workflows.contract.projection import stage_starts

    contract.status = state.status
    contract.amount = Decimal(state.spec.amount)  # an amendment may change it
    contract.end_at = state.spec.end_at
    contract.paid_total = Decimal(state.paid_total)
    contract.outstanding = Decimal(state.outstanding)
    contract.credit = Decimal(state.credit)
    contract.overdue_count = state.overdue_count
    contract.next_due_at = state.next_due_at
    contract.version = state.version
    contract.closed_at = state.closed_at
    contract.settled_at = settled_at(state)
    contract.close_reason = state.close_reason or None
    contract.updated_at = _now()

    # Milestones and installments are few per contract: replace them wholesale, which also
    # drops items an amendment removed.
    cid = contract.id
    session.execute(delete(Milestone).where(Milestone.contract_id == cid))
    session.execute(delete(Installment).where(Installment.contract_id == cid))
    currency = state.spec.currency
    rows = [_milestone_row(cid, pos, m, started, currency)
            for pos, (m, started) in enumerate(zip(state.milestones, stage_starts(state), strict=True))]
    if rows:
        session.execute(insert(Milestone).values(rows))
    rows = [_installment_row(cid, pos, i, currency) for pos, i in enumerate(state.installments)]
    if rows:
        session.execute(insert(Installment).values(rows))
    known = set(session.execute(select(Payment.reference).where(Payment.contract_id == cid)).scalars())
    session.add_all(
        Payment(contract_id=cid, reference=p.reference, amount=Decimal(p.amount), currency=p.currency,
                received_at=p.received_at, recorded_at=p.recorded_at, recorded_by=p.by,
                allocations=dict(p.allocations), excess=Decimal(p.excess))
        for p in state.payments
        if p.reference not in known
    )


def _now() -> datetime:
    return datetime.now(timezone.utc)
