"""The contract service: what the routes (and the CLI) call.  Routes stay thin; rules live here.

Writes go to the contract's workflow (updates, validated there before they enter history);
reads of one contract query the workflow; lists and event logs read the database projection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.orm import Session, defer, sessionmaker
from temporalio.client import Client, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.projection import ProjectionActivities
from api.auth.principal import CURRENT
from api.contracts import schemas
from api.contracts.builder import SpecError, build_spec
from api.platform.audit import insert_entry
from api.platform.database import DatabaseStalled, in_thread
from api.platform.problems import Problem
from core.org import default_assignees, who_is_missing
from core.serde import from_jsonable
from core.settings import Settings
from core.starter import start_contract_workflow
from core.temporal import UpdateLost, execute_update_retrying
from core.webhooks.events import event_id
from models import Contract, ContractEvent, Customer, Payment
from models.db import make_session_factory
from models.dml import first_row
from models.repository import new_contract_row
from workflows import errors as wf_errors
from workflows.contract import ContractWorkflow, ContractWorkflowInput, workflow_id_for
from workflows.types import (
    CompleteMilestoneInput,
    ContractSpec,
    ContractState,
    PaymentBatchInput,
    PaymentInput,
    PaymentOutcome,
    ProgressInput,
    ProjectionDelta,
    TerminateInput,
    WaiveMilestoneInput,
)

log = logging.getLogger("api.service")

STARTING = "starting"
_TARGET = select(Contract.workflow_id, Contract.status, Contract.version).where(Contract.id == bindparam("id"))
# An update's delta the read model cannot take yet (an earlier request's delta is still being
# written): tried again this many times, a little later each time (about a second in all).
WRITE_BACK_ATTEMPTS = 8
FINAL = ("completed", "terminated", "expired")
_MARK_STARTED = update(Contract).where(Contract.id == bindparam("cid"), Contract.status == STARTING).values(status="active")
T = TypeVar("T")
_STATUS_FOR_TYPE = {wf_errors.NOT_FOUND: 404, wf_errors.CONFLICT: 409, wf_errors.INVALID: 422}


class ContractService:
    def __init__(self, client: Client, sessions: sessionmaker[Session], settings: Settings) -> None:
        # The read model's writer for deltas the workflow hands back (the worker's own code), on a
        # session factory of its own: the audit trail's listener watches the app's, and a workflow
        # write is audited as the request (api/platform/audit.py), not as the rows it touched.
        self._projection = ProjectionActivities(make_session_factory(sessions.kw["bind"]))
        self.client = client
        self.sessions = sessions
        self.settings = settings

    # ------------------------------------------------------------------ create
    async def create(self, req: schemas.ContractCreate) -> tuple[schemas.ContractCreated, bool]:
        """Returns the contract and whether it was created now (False: same external_id seen before)."""
        now = datetime.now(timezone.utc)
        contract_id = uuid.uuid4().hex[:16]
        try:
            spec = await self.in_db(self._valid_spec, req, contract_id, now)
        except SpecError as exc:
            raise Problem(422, str(exc), slug="validation", errors=[{"field": f, "message": m} for f, m in exc.errors]) from exc
        self._check_spec_size(spec)
        # A repeat is recognised only once the request is valid: an invalid body is refused (422) whatever its
        # external_id, rather than answered with the contract it names.
        if req.external_id:
            existing = await self.in_db(self._by_external_id, req.external_id)
            if existing is not None:
                return self._created(existing), False

        # 1. The row first, as 'starting': it holds the spec, so the workflow can always be
        #    (re)started from it, and the unique external_id settles concurrent duplicates.
        for attempt in range(1, 4):
            try:
                await self.in_db(self._insert_starting, spec, now)
                break
            except IntegrityError:
                existing = await self.in_db(self._by_external_id, req.external_id) if req.external_id else None
                if existing is not None:
                    return self._created(existing), False
                if attempt == 3:
                    raise
                # Not this contract: another request registered the same new customer (CRM id) at
                # this moment, and its row won.  Again: the customer is found now.

        # 2. Then the workflow.  If Temporal is unreachable the row stays 'starting' and the
        #    reconciler starts the workflow later: a row is never left without its workflow.
        try:
            await self._start_workflow(spec)
        except RPCError as exc:
            log.warning("contract %s recorded; workflow start failed (%s), will retry", contract_id, exc)
            raise Problem(
                503,
                f"contract {contract_id} was recorded but Temporal is unreachable; its workflow will be started "
                f"automatically. Retrying with the same external_id is safe.",
                slug="temporal-unavailable",
                id=contract_id,
            ) from exc
        try:
            await self.in_db(self._mark_started, contract_id)
        except DatabaseStalled:
            # The workflow runs; the reconciler marks the row once the database answers again.
            log.warning("contract %s started; its row could not be marked active in time", contract_id)
        return schemas.ContractCreated(id=contract_id, workflow_id=workflow_id_for(contract_id), status="active",
                                       external_id=req.external_id), True

    async def in_db(self, fn: Callable[..., T], *args: Any) -> T:
        """A database call from async code: in a thread, within ``database_call_seconds``
        (api/platform/database.py)."""
        return await in_thread(self.settings.database_call_seconds, fn, *args)

    def _valid_spec(self, req: schemas.ContractCreate, contract_id: str, now: datetime) -> ContractSpec:
        """The contract's spec, its people and departments checked (SpecError if not)."""
        with self.sessions() as session:
            assignees = default_assignees(session)  # one query, not two per department-owned step
            spec = build_spec(
                req,
                contract_id=contract_id,
                now=now,
                business_tz=self.settings.business_timezone,
                department_assignee=assignees.get,
            )
            missing = who_is_missing(
                session,
                {"owner": spec.owner, **{f"milestones[{m.key}].owner": m.owner for m in spec.milestones}},
                {f"milestones[{m.key}].department": m.department for m in spec.milestones},
            )
        if missing:
            raise SpecError(missing)
        return spec

    def _insert_starting(self, spec: ContractSpec, now: datetime) -> None:
        with self.sessions.begin() as session:
            new_contract_row(
                session, spec, workflow_id=workflow_id_for(spec.contract_id), status=STARTING, version=0, now=now
            )

    def _check_spec_size(self, spec: ContractSpec) -> None:
        """Refuse (422) a spec its workflow could not start with, before its row is written: Temporal
        refuses an oversized payload, which would leave a row with no workflow (every field has a
        length cap, but many long fields together can still pass them)."""
        payloads = self.client.data_converter.payload_converter.to_payloads([ContractWorkflowInput(spec=spec)])
        size = sum(p.ByteSize() for p in payloads)
        limit = self.settings.max_contract_spec_bytes
        if size > limit:
            message = (f"the contract is too large to track: {size} bytes encoded, at most {limit}; "
                       "shorten the texts (standards, names) or split it into fewer milestones")
            raise Problem(422, message, slug="validation", errors=[{"field": "body", "message": message}])

    async def _start_workflow(self, spec: ContractSpec) -> None:
        await start_contract_workflow(self.client, spec, self.settings.task_queue)

    def _mark_started(self, contract_id: str) -> None:
        """``starting`` -> ``active``: one statement on a connection (not the row with its spec
        loaded through the audited session: the request's entry is the row's creation)."""
        with self.sessions.kw["bind"].begin() as conn:
            conn.execute(_MARK_STARTED, {"cid": contract_id})

    async def reconcile_starting(self) -> int:
        """Start the workflow of every row stuck in 'starting' (API crashed or Temporal was down)."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=self.settings.reconcile_after_seconds)

        def stuck() -> list:
            with self.sessions() as session:
                return list(session.execute(
                    select(Contract.id, Contract.spec).where(Contract.status == STARTING, Contract.created_at < cutoff)
                ).all())

        rows = await self.in_db(stuck)
        started = 0
        for contract_id, spec_json in rows:
            try:
                await self._start_workflow(from_jsonable(ContractSpec, spec_json))
            except RPCError as exc:
                log.warning("reconcile: %s still cannot start: %s", contract_id, exc)
                continue
            await self.in_db(self._mark_started, contract_id)
            started += 1
        return started

    def _by_external_id(self, external_id: str) -> Contract | None:
        with self.sessions() as session:
            return session.execute(select(Contract).where(Contract.external_id == external_id)).scalar_one_or_none()

    @staticmethod
    def _created(row: Contract) -> schemas.ContractCreated:
        status = "active" if row.status == STARTING else row.status
        return schemas.ContractCreated(id=row.id, workflow_id=row.workflow_id, status=status, external_id=row.external_id)

    # ------------------------------------------------------------------ read
    def row(self, contract_id: str) -> Contract:
        """The contract's read-model row; a 404 problem if there is none."""
        with self.sessions() as session:
            # Not the expanded spec (a JSON document of the whole contract): no caller of this needs it.
            row = session.get(Contract, contract_id, options=[defer(Contract.spec, raiseload=True)])
        if row is None:
            raise Problem(404, f"no contract with id {contract_id!r}", slug="contract-not-found")
        return row

    def _row_or_stand_in(self, contract_id: str) -> Contract:
        """The row; or, while the database cannot be reached, a stand-in naming the contract's
        workflow, so what needs only Temporal (live state, payments and other updates) keeps
        working through a database outage.  The workflow then judges the request alone."""
        try:
            return self.row(contract_id)
        except (OperationalError, InterfaceError, SQLAlchemyTimeoutError) as exc:
            log.warning("database unavailable, reaching contract %s through its workflow: %s",
                        contract_id, exc.__class__.__name__)
            return Contract(id=contract_id, workflow_id=workflow_id_for(contract_id), status="active")

    @staticmethod
    def _stand_in(contract_id: str) -> Contract:
        log.warning("database not answering, reaching contract %s through its workflow", contract_id)
        return Contract(id=contract_id, workflow_id=workflow_id_for(contract_id), status="active")

    def _target(self, contract_id: str) -> tuple[str, str, int | None]:
        """The contract's workflow id, status and read-model version, for an update: three
        columns, read straight from the table (it is on every write's path); through a database
        outage, its workflow alone (no version: the workflow writes the read model itself)."""
        try:
            with self.sessions.kw["bind"].connect() as conn:
                found = first_row(conn, _TARGET, {"id": contract_id})
        except (OperationalError, InterfaceError, SQLAlchemyTimeoutError) as exc:
            log.warning("database unavailable, reaching contract %s through its workflow: %s",
                        contract_id, exc.__class__.__name__)
            return workflow_id_for(contract_id), "active", None
        if found is None:
            raise Problem(404, f"no contract with id {contract_id!r}", slug="contract-not-found")
        workflow_id, status, version = found
        return workflow_id, status, version

    async def get(self, contract_id: str) -> schemas.ContractOut:
        try:
            row = await self.in_db(self._row_or_stand_in, contract_id)
        except DatabaseStalled:
            row = self._stand_in(contract_id)
        return self._to_out(row, await self.live_state(row))

    async def live_state(self, row: Contract) -> ContractState:
        handle = self.client.get_workflow_handle(row.workflow_id)
        try:
            return await handle.query(ContractWorkflow.state_query)
        except RPCError as exc:
            raise Problem(503, f"the contract's live state cannot be read right now: {exc.message}",
                          slug="temporal-unavailable") from exc

    def _to_out(self, row: Contract, state: ContractState) -> schemas.ContractOut:
        spec = state.spec
        return schemas.ContractOut(
            id=row.id,
            workflow_id=row.workflow_id,
            external_id=spec.external_id,
            title=spec.title,
            customer=schemas.CustomerIn(name=spec.customer_name, external_id=spec.customer_external_id),
            currency=spec.currency,
            amount=str(Decimal(spec.amount).quantize(Decimal(1).scaleb(-spec.minor_units))),
            effective_at=spec.effective_at,
            end_at=spec.end_at,
            owner=spec.owner,
            playbook=spec.playbook,
            status=state.status,
            milestones=[
                schemas.MilestoneOut(
                    key=m.key,
                    name=m.name,
                    kind=m.kind,
                    owner=m.owner,
                    department=m.department,
                    standard=m.standard,
                    status=m.status,
                    due_at=m.due_at,
                    due_estimated=m.due_estimated,
                    depends_on=m.depends_on,
                    progress=m.progress,
                    progress_message=m.progress_message,
                    completed_at=m.completed_at,
                    completed_by=m.completed_by,
                    planned_cost=m.planned_cost,
                    actual_cost=m.actual_cost,
                    satisfaction=m.satisfaction,
                )
                for m in state.milestones
            ],
            installments=[
                schemas.InstallmentOut(
                    key=i.key,
                    due_at=i.due_at,
                    due_estimated=i.due_estimated,
                    amount=i.amount,
                    paid=i.paid,
                    status=i.status,
                    paid_at=i.paid_at,
                )
                for i in state.installments
            ],
            payments=[
                schemas.PaymentOut(
                    reference=p.reference,
                    amount=p.amount,
                    currency=p.currency,
                    received_at=p.received_at,
                    recorded_at=p.recorded_at,
                    allocations=p.allocations,
                    excess=p.excess,
                )
                for p in state.payments
            ],
            paid=state.paid_total,
            outstanding=state.outstanding,
            credit=state.credit,
            overdue_count=state.overdue_count,
            next_due_at=state.next_due_at,
            version=state.version,
            closed_at=state.closed_at,
            close_reason=state.close_reason or None,
            escalation_level=state.escalation_level,
            next_escalation_at=state.next_escalation_at,
            temporal_ui=(
                f"{self.settings.temporal_ui_url}/namespaces/{self.settings.temporal_namespace}"
                f"/workflows/{row.workflow_id}"
            ),
        )

    def list_contracts(
        self,
        *,
        status: str | None,
        owner: str | None,
        customer: str | None,
        overdue: bool | None,
        limit: int,
        offset: int,
        viewer=None,
    ) -> schemas.ContractPage:
        query = select(Contract)
        if viewer is not None:
            from api.auth.policy import visible_contracts

            visible = visible_contracts(viewer)
            if visible is not None:
                query = query.where(visible)
        if status:
            query = query.where(Contract.status == status)
        if owner:
            query = query.where(Contract.owner == owner)
        if customer:
            query = query.join(Customer).where(
                # autoescape: % and _ in the query are the characters themselves, not wildcards
                or_(Contract.customer_name.icontains(customer, autoescape=True), Customer.external_id == customer)
            )
        if overdue is True:
            query = query.where(Contract.overdue_count > 0)
        elif overdue is False:
            query = query.where(Contract.overdue_count == 0)
        with self.sessions() as session:
            total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            rows = session.execute(
                query.order_by(Contract.created_at.desc(), Contract.id).limit(limit).offset(offset)
            ).scalars().all()
        return schemas.ContractPage(
            items=[
                schemas.ContractSummary(
                    id=r.id,
                    workflow_id=r.workflow_id,
                    external_id=r.external_id,
                    title=r.title,
                    customer=r.customer_name,
                    currency=r.currency,
                    amount=_money(r.amount, r),
                    outstanding=_money(r.outstanding, r),
                    owner=r.owner,
                    status="active" if r.status == STARTING else r.status,
                    overdue_count=r.overdue_count,
                    next_due_at=r.next_due_at,
                    playbook=r.playbook,
                )
                for r in rows
            ],
            total=total,
            limit=limit,
            offset=offset,
        )

    def events(self, contract_id: str, *, after_seq: int, limit: int, after: str | None = None) -> list[schemas.EventOut]:
        """Oldest first, in the order they were recorded: the workflow's events by seq and, among
        them, the reminders the outbox sent (no seq).  ``after`` (an ``event_id`` from an earlier
        answer) pages exactly, reminders included; ``after_seq`` starts after the workflow's
        event of that number (or the last one before it) and the reminders recorded before it."""
        self.row(contract_id)
        E = ContractEvent
        if after is not None:
            # Rows are numbered as they are recorded: after that row, exactly (pages never overlap).
            position = E.id > self._event_row(contract_id, after)
        else:
            # A reminder is "after seq N" when it was recorded after the last workflow event at or
            # before N, whether or not event N itself exists yet.
            anchor = (select(func.max(E.id)).where(E.contract_id == contract_id, E.seq.is_not(None),
                                                   E.seq <= after_seq).scalar_subquery())
            position = or_(E.seq > after_seq, and_(E.seq.is_(None), E.id > func.coalesce(anchor, 0)))
        with self.sessions() as session:
            rows = session.execute(
                select(E).where(E.contract_id == contract_id, position).order_by(E.id).limit(limit)
            ).scalars().all()
        return [schemas.EventOut(seq=e.seq, event_id=event_id(contract_id, e.seq, e.id), type=e.type, at=e.at,
                                 actor=e.actor, data=e.data) for e in rows]

    def _event_row(self, contract_id: str, after: str) -> int:
        """The row id of the event ``after`` names (``<contract>:<seq>`` or ``<contract>:r<row>``)."""
        prefix, _, rest = after.rpartition(":")
        E = ContractEvent
        found = None
        if prefix != contract_id or len(rest) > 18:  # longer: no number a BIGINT column holds
            pass
        elif rest.isdigit():
            found = select(E.id).where(E.contract_id == contract_id, E.seq == int(rest))
        elif rest[:1] == "r" and rest[1:].isdigit():
            found = select(E.id).where(E.contract_id == contract_id, E.seq.is_(None), E.id == int(rest[1:]))
        row_id = None
        if found is not None:
            with self.sessions() as session:
                row_id = session.execute(found).scalar_one_or_none()
        if row_id is None:
            raise Problem(422, f"after: {after!r} is not an event_id of this contract's log (give the event_id of "
                               f"the last event you received)", slug="validation",
                          errors=[{"field": "query.after", "message": "not an event of this contract"}])
        return row_id

    # ------------------------------------------------------------------ write (workflow updates)
    async def record_payment(self, contract_id: str, body: schemas.PaymentIn) -> schemas.PaymentApplied:
        try:
            result = await self.send_update(
                contract_id,
                ContractWorkflow.record_payment,
                PaymentInput(body.reference, body.amount, body.currency, body.received_at, body.by or "finance"),
            )
        except Problem as exc:
            if exc.slug not in ("contract-closed", "conflict"):
                raise
            # A client resending the payment that closed the contract (its answer was lost) must
            # hear "already recorded", as on an open contract, not that the payment failed.
            repeat = await asyncio.to_thread(self._recorded_payment, contract_id, body)
            if repeat is None:
                raise
            return repeat
        return schemas.PaymentApplied(
            applied=result.applied,
            outstanding=result.outstanding,
            credit=result.credit,
            reference=result.reference,
            allocations=result.allocations,
        )

    def _recorded_payment(self, contract_id: str, body: schemas.PaymentIn) -> schemas.PaymentApplied | None:
        """The closed contract's answer to a payment it already holds (``applied: false``); None if
        it holds no payment under that reference; 409 if it holds one of another amount."""
        with self.sessions() as session:
            row = session.get(Contract, contract_id)
            paid = session.get(Payment, (contract_id, body.reference))
            if row is None or paid is None:
                return None
            if Decimal(paid.amount) != Decimal(body.amount) or paid.currency != body.currency:
                raise Problem(409, f"reference {body.reference!r} was already recorded for {_money(paid.amount, row)} "
                                   f"{paid.currency}; a different amount under the same reference is refused",
                              slug="conflict")
            return schemas.PaymentApplied(applied=False, outstanding=_money(row.outstanding, row),
                                          credit=_money(row.credit, row), reference=body.reference, allocations={})

    async def record_payments(self, contract_id: str, items: list[schemas.PaymentIn]) -> list[PaymentOutcome]:
        """Several payments in one workflow update, in order; each with its own outcome."""
        return await self.send_update(
            contract_id,
            ContractWorkflow.record_payments,
            PaymentBatchInput([PaymentInput(b.reference, b.amount, b.currency, b.received_at, b.by or "finance")
                               for b in items]),
        )

    async def complete_milestone(self, contract_id: str, key: str, body: schemas.CompleteIn) -> schemas.OperationOut:
        r = await self.send_update(contract_id, ContractWorkflow.complete_milestone,
                                   CompleteMilestoneInput(key, body.by or "", body.note, body.actual_cost, body.satisfaction))
        return _operation(r)

    async def report_progress(self, contract_id: str, key: str, body: schemas.ProgressIn) -> schemas.OperationOut:
        r = await self.send_update(
            contract_id, ContractWorkflow.report_progress, ProgressInput(key, body.percent, body.message, body.source)
        )
        return _operation(r)

    async def waive_milestone(self, contract_id: str, key: str, body: schemas.WaiveIn) -> schemas.OperationOut:
        r = await self.send_update(contract_id, ContractWorkflow.waive_milestone,
                                   WaiveMilestoneInput(key, body.by or "", body.reason))
        return _operation(r)

    async def terminate(self, contract_id: str, body: schemas.TerminateIn) -> schemas.OperationOut:
        r = await self.send_update(contract_id, ContractWorkflow.terminate, TerminateInput(body.reason, body.by or ""))
        return _operation(r)

    async def send_update(self, contract_id: str, update: Callable, arg: Any):
        """Send a workflow update to the contract and answer its result; what the workflow refuses
        (or Temporal cannot deliver) becomes the problem the API answers.  Amendments send theirs
        through it too.  An input with ``read_model_version`` gets the version the row holds, and
        the delta the update answers with is written here before the request answers."""
        try:
            workflow_id, status, version = await self.in_db(self._target, contract_id)
        except DatabaseStalled:  # as through an outage: the workflow alone judges the request
            workflow_id, status, version = self._stand_in(contract_id).workflow_id, "active", None
        if status in FINAL:
            raise Problem(409, f"contract is {status}; it can no longer change", slug="contract-closed")
        if version is not None and hasattr(arg, "read_model_version"):
            arg = replace(arg, read_model_version=version)  # the answer brings the delta to write
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            # Re-sent if the run was continuing as new at that instant (not accepted, so safe).
            result = await execute_update_retrying(handle, update, arg, client=self.client,
                                                   rpc_timeout=timedelta(seconds=self.settings.update_timeout_seconds))
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type in _STATUS_FOR_TYPE:
                raise Problem(_STATUS_FOR_TYPE[cause.type], cause.message, slug=cause.type.lower()) from exc
            raise
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            # No answer in time (no worker up, or the connection to Temporal broke): the outcome is
            # unknown, and the update may still be applied when a worker comes back.  Every update
            # is safe to send again (payments by reference; a repeated completion is a 409).
            raise Problem(503, "the contract did not answer in time (is a worker running?); the request may still "
                               "be applied: send it again, a payment is recognised by its reference",
                          slug="temporal-unavailable") from None
        except UpdateLost as exc:
            # Not applied (Temporal lost it while a worker restarted, again and again): retry it.
            raise Problem(503, f"the request was not applied ({exc}); send it again", slug="temporal-unavailable") from exc
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                # The workflow closed between our read of the row and the update (a lost update on
                # a running workflow is re-sent by execute_update_retrying, never reported here).
                raise Problem(409, "contract is closed; it can no longer change", slug="contract-closed") from exc
            raise Problem(503, f"Temporal is unreachable: {exc.message}", slug="temporal-unavailable") from exc
        delta = getattr(result, "projection", None)
        if delta is not None:
            ctx = CURRENT.get()
            if ctx is not None and ctx.before_answer is not None:
                # The audit middleware writes it with the request's entry, before the answer leaves.
                ctx.before_answer.append(functools.partial(self._write_back_now, delta))
            else:
                await self._write_back(delta)
            result = replace(result, projection=None)
        return result

    async def _write_back(self, delta: ProjectionDelta) -> None:
        """Write the delta the update answered with, before the request answers: the next read
        sees the change.  If it cannot be written (the database is away, or the delta it builds on
        never arrives), the change stands all the same: the workflow finds the read model behind at
        its next write or request and writes every item again."""
        await asyncio.to_thread(self._write_back_now, delta)

    def _write_back_now(self, delta: ProjectionDelta, entry: dict[str, Any] | None = None) -> bool:
        """``_write_back`` in the calling thread (the audit middleware's): with ``entry``, the
        request's audit entry goes in the same transaction.  True when it did (committed)."""
        also = None if entry is None else functools.partial(insert_entry, values=entry)
        for attempt in range(WRITE_BACK_ATTEMPTS):
            try:
                if self._projection.write_handed(delta, also=also):
                    return entry is not None
            except Exception as exc:  # noqa: BLE001 - the change is made: the request must not fail on its copy
                level = logging.WARNING if isinstance(exc, DBAPIError) else logging.ERROR
                log.log(level, "contract %s: its read model could not take version %s (%s: %s); the workflow "
                        "writes it later", delta.contract_id, delta.version, exc.__class__.__name__, str(exc)[:200])
                return False
            # The delta it builds on has not arrived yet (another request is still writing it).
            time.sleep(0.005 * 2**attempt)
        log.warning("contract %s: version %s builds on %s, which its read model still lacks; the workflow writes "
                    "it later", delta.contract_id, delta.version, delta.requires_version)
        return False


def _operation(r) -> schemas.OperationOut:
    return schemas.OperationOut(
        contract_status=r.contract_status, item_status=r.item_status, version=r.version, changed=r.changed
    )


def _money(value: Decimal, row: Contract) -> str:
    places = int(row.spec.get("minor_units", 2)) if isinstance(row.spec, dict) else 2
    return str(Decimal(value).quantize(Decimal(1).scaleb(-places)))


async def get_contract_service(request: Request) -> ContractService:
    """The app's one service (made in the lifespan, with its Temporal client), for ``Depends``."""
    return request.app.state.contracts
