"""The projection activity: writes a contract's snapshot and new events to the database.

Idempotent by construction, so a retried or replayed activity writes nothing twice:
  * events are keyed ``(contract_id, seq)`` and inserted with ON CONFLICT DO NOTHING;
  * the snapshot carries the workflow's event counter (``version``) and is applied only if
    it is at least as new as what the row holds, so an old retry never overwrites a newer one.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity

from core.serde import to_jsonable
from models import Contract, ContractEvent, Installment, Milestone, Payment
from models.repository import new_contract_row
from workflows.types import ContractState, ProjectionInput

log = logging.getLogger(__name__)


class ProjectionActivities:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    @activity.defn(name="project_contract")
    def project_contract(self, input: ProjectionInput) -> int:
        """Returns how many new events were written (0 on a retry that already succeeded)."""
        state = input.state
        cid = state.spec.contract_id
        with self._sessions.begin() as session:
            written = _insert_events(session, cid, input)
            contract = session.execute(
                select(Contract).where(Contract.id == cid).with_for_update()
            ).scalar_one_or_none()
            if contract is None:
                # The API always writes the row first; a workflow without its row (say, started
                # by an operator from the CLI) gets one here rather than staying invisible.
                contract = new_contract_row(
                    session, state.spec, workflow_id=input.workflow_id, status="active", version=-1, now=_now()
                )
                session.flush()
            if state.version >= contract.version:
                _apply_snapshot(session, contract, state)
        return written


def _insert_events(session: Session, contract_id: str, input: ProjectionInput) -> int:
    if not input.events:
        return 0
    rows = [
        {
            "contract_id": contract_id,
            "seq": e.seq,
            "type": e.type,
            "at": e.at,
            "actor": e.actor,
            "data": to_jsonable(e.data),
        }
        for e in input.events
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(ContractEvent).values(rows).on_conflict_do_nothing(index_elements=["contract_id", "seq"])
    written = session.execute(stmt).rowcount or 0
    if written < len(rows):
        _check_same_events(session, contract_id, rows)
    return written


def _check_same_events(session: Session, contract_id: str, rows: list[dict]) -> None:
    """A retry finds its events already written: they must be the same events.  A different event
    under the same number means the workflow's event numbering diverged from what an earlier
    execution wrote (the log keeps the first; the newer one is lost): say so loudly."""
    seqs = [r["seq"] for r in rows]
    stored = dict(session.execute(
        select(ContractEvent.seq, ContractEvent.type).where(
            ContractEvent.contract_id == contract_id, ContractEvent.seq.in_(seqs))
    ).all())
    clashes = [(r["seq"], stored[r["seq"]], r["type"]) for r in rows if stored.get(r["seq"], r["type"]) != r["type"]]
    if clashes:
        log.error("event log of contract %s diverged: (seq, stored, now) %s", contract_id, clashes)


def _apply_snapshot(session: Session, contract: Contract, state: ContractState) -> None:
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
    contract.settled_at = _settled_at(state)
    contract.close_reason = state.close_reason or None
    contract.updated_at = _now()

    # Milestones and installments are few per contract: replace them wholesale, which also
    # drops items an amendment removed.
    cid = contract.id
    session.execute(delete(Milestone).where(Milestone.contract_id == cid))
    session.execute(delete(Installment).where(Installment.contract_id == cid))
    session.add_all(
        Milestone(
            contract_id=cid,
            key=m.key,
            position=pos,
            name=m.name,
            kind=m.kind,
            owner=m.owner,
            department=m.department,
            standard=m.standard,
            due_rule=to_jsonable(m.due),
            depends_on=list(m.depends_on),
            due_at=m.due_at,
            due_estimated=m.due_estimated,
            status=m.status,
            progress=m.progress,
            completed_at=m.completed_at,
            completed_by=m.completed_by,
            overdue_since=m.overdue_since,
            planned_cost=Decimal(m.planned_cost) if m.planned_cost is not None else None,
            actual_cost=Decimal(m.actual_cost) if m.actual_cost is not None else None,
            satisfaction=m.satisfaction,
            currency=state.spec.currency,
            started_at=started,
        )
        for pos, (m, started) in enumerate(zip(state.milestones, _stage_starts(state)))
    )
    session.add_all(
        Installment(
            contract_id=cid,
            key=i.key,
            position=pos,
            amount=Decimal(i.amount),
            paid=Decimal(i.paid),
            currency=state.spec.currency,
            status=i.status,
            due_at=i.due_at,
            due_estimated=i.due_estimated,
            paid_at=i.paid_at,
        )
        for pos, i in enumerate(state.installments)
    )
    known = set(session.execute(select(Payment.reference).where(Payment.contract_id == cid)).scalars())
    session.add_all(
        Payment(
            contract_id=cid,
            reference=p.reference,
            amount=Decimal(p.amount),
            currency=p.currency,
            received_at=p.received_at,
            recorded_at=p.recorded_at,
            recorded_by=p.by,
            allocations=dict(p.allocations),
            excess=Decimal(p.excess),
        )
        for p in state.payments
        if p.reference not in known
    )


def _settled_at(state: ContractState) -> datetime | None:
    """When the contract was paid in full (analytics): the ``received_at`` of the payment that
    brought the running total, in ``received_at`` order, to the contract amount."""
    total, amount = Decimal(0), Decimal(state.spec.amount)
    for p in sorted(state.payments, key=lambda p: (p.received_at, p.reference)):
        total += Decimal(p.amount)
        if amount > 0 and total >= amount:
            return p.received_at
    return None


def _stage_starts(state: ContractState) -> list[datetime]:
    """Each milestone's stage start (analytics): the latest completion of an earlier milestone
    (by position), else the contract's effective date."""
    starts, latest = [], None
    for m in state.milestones:
        starts.append(latest or state.spec.effective_at)
        if m.completed_at is not None and (latest is None or m.completed_at > latest):
            latest = m.completed_at
    return starts


def _now() -> datetime:
    return datetime.now(timezone.utc)
