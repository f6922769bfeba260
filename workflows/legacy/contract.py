"""The contract workflow as it ran before the lean engine (patch ``lean-engine-v1``): FROZEN.

Every contract started before that patch replays and runs on this code until its next
continue-as-new, which carries it onto the lean engine (workflows/contract/).  Nothing here may
change: a change would make those histories non-deterministic (tests/test_replay.py replays the
saved ones).  ``ContractWorkflow`` builds a ``LegacyContract`` when its first task carries no
``lean-engine-v1`` marker and hands it every handler.  Delete this package once
``temporal workflow list --query "ExecutionStatus='Running'"`` shows no run started before the
patch (docs/versioning.md).

What follows is the original module's text, unchanged but for the class name, the missing
decorators (the handlers are registered on ``ContractWorkflow``) and its imports.

Original docstring — ContractWorkflow: one signed contract, alive from signature until completed, terminated or expired.

It holds the contract's live state (milestones, installments, payments), guards every due
date with a durable timer, takes the outside world in through updates (validated before
they enter history) and signals (for fire-and-forget senders), and hands every change to
the projection activity so lists and reports read the database, not every workflow.

Two loops run side by side:
  * the *timer loop* sleeps until the next due date (or until something changes), marks what
    fell due as overdue and closes the contract when nothing is left;
  * the *projector* writes the snapshot and new events to the database.  It is separate so a
    database outage delays the read model, never the timers.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, CancelledError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from core.durations import add_duration, to_timedelta
    from core.money import MoneyError, parse_amount
    from workflows.legacy import amendments
    from workflows import search_attributes as sa
    from workflows.escalation import EscalationWorkflow, escalation_workflow_id
    from workflows.errors import conflict, invalid, not_found
    from workflows.types import (
        ACTIVE,
        COMPLETED,
        DONE,
        EXPIRED,
        IN_PROGRESS,
        OVERDUE,
        PAID,
        PARTIALLY_PAID,
        PENDING,
        TERMINATED,
        WAIVED,
        AgreementRequest,
        AmendmentImpact,
        AmendmentResult,
        AmendmentState,
        ApprovalRecord,
        ApprovalState,
        CompleteMilestoneInput,
        ContractVersion,
        DecideAmendmentInput,
        ItemImpact,
        RenewalRequest,
        RequestAmendmentInput,
        ContractEvent,
        ContractSpec,
        ContractState,
        ContractWorkflowInput,
        BusinessDueRequest,
        DueRule,
        EscalationInput,
        InstallmentState,
        NotifyRequest,
        MilestoneState,
        OperationResult,
        PaymentBatchInput,
        PaymentInput,
        PaymentOutcome,
        PaymentRecord,
        PaymentResult,
        ProgressInput,
        ProjectionInput,
        TerminateInput,
        WaiveMilestoneInput,
    )

FINAL_STATUSES = (COMPLETED, TERMINATED, EXPIRED)
MAX_PAYMENTS_PER_BATCH = 200
RESOLVED = (DONE, WAIVED)


class LegacyContract:
    def __init__(self, input: ContractWorkflowInput) -> None:
        self._input = input
        if input.carried is not None:
            self.state = input.carried
            self.state.run += 1
            self._pending: list[ContractEvent] = list(input.pending_events)
        else:
            self.state = _initial_state(input.spec)
            self._pending = []
        self._wake = False
        self._projecting = False
        self._dirty = True  # the snapshot differs from what the database holds
        # Reminders, escalation children and hand-offs.  Contracts started before they existed
        # replay without them (no marker in their history) and have no policy.
        self._notify = workflow.patched("notifications-v1") and input.spec.policy is not None
        self._outbox: list[NotifyRequest] = list(input.pending_notifications)
        self._notifying = False
        self._escalations: dict[str, asyncio.Task] = {}
        self._stopping: list[asyncio.Task] = []  # cancelled escalations, awaited before closing
        self._calendar_wanted: list[str] = []
        self._simulating = False  # assessing an amendment on a copy: no side effects
        self._documenting = False
        self._renewing = False
        # run() has not begun: an update delivered with the workflow's first task runs before it
        # (see _dated_for_first_task).
        self._run_started = False
        if input.carried is None:
            # Here, not in run(): an update delivered with the workflow's first task (the worker
            # was down when the contract was registered) runs before run() starts, and the log
            # must still begin with contract.created.  No command, so replay is unaffected.
            s = input.spec
            self._emit(
                "contract.created",
                {
                    "title": s.title,
                    "customer": s.customer_name,
                    "customer_external_id": s.customer_external_id,
                    "external_id": s.external_id,
                    "amount": s.amount,
                    "currency": s.currency,
                    "playbook": s.playbook,
                },
                actor=s.owner,
            )

    # ------------------------------------------------------------------ main
    async def run(self, input: ContractWorkflowInput) -> ContractState:
        self._run_started = True
        self._refresh()
        projector = asyncio.create_task(self._projector())
        notifier = asyncio.create_task(self._notifier()) if self._notify else None
        calendar = asyncio.create_task(self._calendar()) if self._notify else None
        documenter = asyncio.create_task(self._documenter())
        renewer = asyncio.create_task(self._renewer())
        if input.carried is not None:
            # Escalation children do not survive continue-as-new: restart them.  Levels already
            # sent are not sent again (the notify activity is exactly-once per level).
            for item_type, item in self._overdue_items():
                self._on_overdue(item_type, item.key)

        while self.state.status == ACTIVE:
            if self._should_continue_as_new():
                await self._continue_as_new(projector, notifier)
            self._wake = False
            delay = self._time_to_next_due()
            try:
                await workflow.wait_condition(lambda: self._wake, timeout=delay)
            except asyncio.TimeoutError:
                pass  # a due date (or the end date) has come: _refresh marks what fell due
            self._refresh()

        # Final: let in-flight updates reply, then write the last snapshot before closing.
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._refresh()
        await workflow.wait_condition(lambda: not self._outbox and not self._notifying)
        await workflow.wait_condition(lambda: all(t.done() for t in [*self._escalations.values(), *self._stopping]))
        await workflow.wait_condition(lambda: not self.state.pending_documents and not self._documenting)
        await workflow.wait_condition(lambda: not self.state.pending_renewals and not self._renewing)
        await workflow.wait_condition(lambda: not self._pending and not self._dirty and not self._projecting)
        projector.cancel()
        if notifier is not None:
            notifier.cancel()
        if calendar is not None:
            calendar.cancel()
        documenter.cancel()
        renewer.cancel()
        return self.state

    # ------------------------------------------------------------------ query
    def state_query(self) -> ContractState:
        return self.state

    # ------------------------------------------------------------------ updates
    def record_payment(self, p: PaymentInput) -> PaymentResult:
        self._check_payment(p)
        return self._apply_payment(p)

    def _validate_payment(self, p: PaymentInput) -> None:
        self._check_payment(p)

    def record_payments(self, batch: PaymentBatchInput) -> list[PaymentOutcome]:
        """A statement's lines for this contract in one round trip: each applied, found already
        recorded, or refused on its own (one bad line does not refuse the others)."""
        outcomes = []
        for p in batch.payments:
            try:
                self._check_payment(p)
            except ApplicationError as exc:
                outcomes.append(PaymentOutcome(p.reference, error_type=exc.type, error=exc.message))
                continue
            r = self._apply_payment(p)
            outcomes.append(PaymentOutcome(p.reference, r.applied, r.outstanding, r.credit, r.allocations))
        return outcomes

    def _validate_payments(self, batch: PaymentBatchInput) -> None:
        if self.state.status != ACTIVE:
            raise conflict(f"contract is {self.state.status}; payments can no longer be recorded")
        if not batch.payments or len(batch.payments) > MAX_PAYMENTS_PER_BATCH:
            raise invalid(f"a payment batch holds 1 to {MAX_PAYMENTS_PER_BATCH} payments")

    def complete_milestone(self, c: CompleteMilestoneInput) -> OperationResult:
        self._check_complete(c)
        return self._apply_complete(c)

    def _validate_complete(self, c: CompleteMilestoneInput) -> None:
        self._check_complete(c)

    def report_progress(self, p: ProgressInput) -> OperationResult:
        self._check_progress(p)
        return self._apply_progress(p)

    def _validate_progress(self, p: ProgressInput) -> None:
        self._check_progress(p)

    def waive_milestone(self, w: WaiveMilestoneInput) -> OperationResult:
        self._check_waive(w)
        return self._apply_waive(w)

    def _validate_waive(self, w: WaiveMilestoneInput) -> None:
        self._check_waive(w)

    def terminate(self, t: TerminateInput) -> OperationResult:
        self._check_terminate(t)
        return self._apply_terminate(t)

    def _validate_terminate(self, t: TerminateInput) -> None:
        self._check_terminate(t)

    def request_amendment(self, r: RequestAmendmentInput) -> AmendmentResult:
        existing = self._amendment_or_none(r.amendment_id)
        if existing is not None:
            return AmendmentResult(existing, self.state.contract_version, created=False)
        self._date_for_first_task()
        self._check_request(r)
        return self._apply_request(r)

    def _validate_request(self, r: RequestAmendmentInput) -> None:
        if self._amendment_or_none(r.amendment_id) is None:
            self._check_request(r)

    def decide_amendment(self, d: DecideAmendmentInput) -> AmendmentResult:
        self._date_for_first_task()
        self._check_decision(d)
        return self._apply_decision(d)

    def _validate_decision(self, d: DecideAmendmentInput) -> None:
        self._check_decision(d)

    # ------------------------------------------------------------------ signals
    # The same operations for senders that cannot wait for an answer.  A signal cannot be
    # refused, so an invalid one is recorded as ``signal.rejected`` and changes nothing.
    def record_payment_signal(self, p: PaymentInput) -> None:
        self._signal("record_payment", p, self._check_payment, self._apply_payment)

    def complete_milestone_signal(self, c: CompleteMilestoneInput) -> None:
        self._signal("complete_milestone", c, self._check_complete, self._apply_complete)

    def report_progress_signal(self, p: ProgressInput) -> None:
        self._signal("report_progress", p, self._check_progress, self._apply_progress)

    def waive_milestone_signal(self, w: WaiveMilestoneInput) -> None:
        self._signal("waive_milestone", w, self._check_waive, self._apply_waive)

    def terminate_signal(self, t: TerminateInput) -> None:
        self._signal("terminate", t, self._check_terminate, self._apply_terminate)

    def _signal(self, name, arg, check, apply) -> None:
        try:
            check(arg)
        except Exception as exc:  # noqa: BLE001 - every refusal is recorded, none crashes the run
            self._emit("signal.rejected", {"signal": name, "reason": str(exc)})
            self._changed()
            return
        apply(arg)

    # ------------------------------------------------------------------ payments
    def _check_payment(self, p: PaymentInput) -> None:
        s = self.state
        if s.status != ACTIVE:
            raise conflict(f"contract is {s.status}; payments can no longer be recorded")
        if not p.reference or not p.reference.strip():
            raise invalid("a payment needs a reference (bank transaction or receipt number)")
        if p.currency != s.spec.currency:
            raise invalid(f"payment is in {p.currency} but the contract is in {s.spec.currency}")
        amount = self._money(p.amount)
        if p.received_at.tzinfo is None:
            raise invalid("received_at must carry a timezone")
        previous = self._payment(p.reference)
        if previous is not None and Decimal(previous.amount) != amount:
            raise conflict(
                f"reference {p.reference!r} was already recorded for {previous.amount} {previous.currency}; "
                f"a different amount under the same reference is refused"
            )

    def _apply_payment(self, p: PaymentInput) -> PaymentResult:
        s = self.state
        if self._payment(p.reference) is not None:
            # Idempotent on the reference: the second delivery changes nothing.
            return PaymentResult(False, s.outstanding, s.credit, p.reference)
        amount = self._money(p.amount)
        remaining = amount
        allocations: dict[str, str] = {}
        for inst in sorted(self._open_installments(), key=self._installment_order):
            if remaining <= 0:
                break
            owed = Decimal(inst.amount) - Decimal(inst.paid)
            take = min(owed, remaining)
            inst.paid = str(Decimal(inst.paid) + take)
            remaining -= take
            allocations[inst.key] = str(take)
            if Decimal(inst.paid) >= Decimal(inst.amount):
                inst.status = PAID
                inst.paid_at = p.received_at
                self._emit("installment.paid", {"key": inst.key, "amount": inst.amount})
                self._on_resolved("installment", inst.key)
            elif inst.status != OVERDUE:
                inst.status = PARTIALLY_PAID
        now = workflow.now()
        s.payments.append(
            PaymentRecord(p.reference, str(amount), p.currency, p.received_at, now, p.by, allocations, str(remaining))
        )
        self._recompute_money()
        self._emit(
            "payment.received",
            {
                "reference": p.reference,
                "amount": str(amount),
                "currency": p.currency,
                "received_at": p.received_at.isoformat(),
                "allocations": allocations,
                "outstanding": s.outstanding,
            },
            actor=p.by,
        )
        if remaining > 0:
            self._emit("payment.overpaid", {"reference": p.reference, "excess": str(remaining), "credit": s.credit})
        if Decimal(s.outstanding) == 0:
            for m in s.milestones:
                if m.kind == "payment_collection" and m.status not in RESOLVED:
                    self._resolve_milestone(m, DONE, "system", "all installments paid")
        self._changed()
        return PaymentResult(True, s.outstanding, s.credit, p.reference, allocations)

    def _payment(self, reference: str) -> PaymentRecord | None:
        for rec in self.state.payments:
            if rec.reference == reference:
                return rec
        return None

    def _open_installments(self) -> list[InstallmentState]:
        return [i for i in self.state.installments if i.status != PAID]

    def _installment_order(self, inst: InstallmentState):
        # Oldest first: by due date, then by the order the contract lists them.
        index = self.state.installments.index(inst)
        return (inst.due_at or self.state.spec.end_at, index)

    def _recompute_money(self) -> None:
        s = self.state
        places = s.spec.minor_units
        total = Decimal(s.spec.amount)
        paid = sum((Decimal(p.amount) for p in s.payments), Decimal(0))
        s.paid_total = _fmt(paid, places)
        s.outstanding = _fmt(max(total - paid, Decimal(0)), places)
        s.credit = _fmt(max(paid - total, Decimal(0)), places)
        for inst in s.installments:
            inst.paid = _fmt(Decimal(inst.paid), places)

    def _money(self, value: str) -> Decimal:
        try:
            return parse_amount(value, self.state.spec.currency)
        except MoneyError as exc:
            raise invalid(str(exc))

    # ------------------------------------------------------------------ milestones
    def _milestone(self, key: str) -> MilestoneState:
        for m in self.state.milestones:
            if m.key == key:
                return m
        raise not_found(f"contract has no milestone {key!r}")

    def _check_open_milestone(self, key: str) -> MilestoneState:
        if self.state.status != ACTIVE:
            raise conflict(f"contract is {self.state.status}; its milestones can no longer change")
        m = self._milestone(key)
        if m.status in RESOLVED:
            raise conflict(f"milestone {key!r} is already {m.status}")
        return m

    def _check_complete(self, c: CompleteMilestoneInput) -> None:
        m = self._check_open_milestone(c.key)
        if not c.by or not c.by.strip():
            raise invalid("say who completes the milestone ('by')")
        if c.actual_cost is not None:
            self._money(c.actual_cost)
        if c.satisfaction is not None:
            if not isinstance(c.satisfaction, int) or not 1 <= c.satisfaction <= 5:
                raise invalid("satisfaction is a whole score from 1 to 5")
            if m.kind != "customer_acceptance":
                raise invalid("the customer's satisfaction is captured at customer acceptance")
        open_deps = [d for d in m.depends_on if self._milestone(d).status not in RESOLVED]
        if open_deps:
            raise invalid(
                f"milestone {c.key!r} depends on {', '.join(repr(d) for d in open_deps)}, still open; "
                f"complete or waive it first"
            )

    def _apply_complete(self, c: CompleteMilestoneInput) -> OperationResult:
        m = self._milestone(c.key)
        if c.actual_cost is not None:
            m.actual_cost = _fmt(self._money(c.actual_cost), self.state.spec.minor_units)
        m.satisfaction = c.satisfaction
        self._resolve_milestone(m, DONE, c.by, c.note)
        self._changed()
        return OperationResult(self.state.status, m.status, self.state.version)

    def _check_progress(self, p: ProgressInput) -> None:
        self._check_open_milestone(p.key)
        if not isinstance(p.percent, int) or not 0 <= p.percent <= 100:
            raise invalid(f"percent must be a whole number from 0 to 100, got {p.percent}")

    def _apply_progress(self, p: ProgressInput) -> OperationResult:
        m = self._milestone(p.key)
        if m.progress == p.percent and m.progress_message == p.message and workflow.patched("progress-dedupe-v1"):
            # The same report again (an ERP batch redelivered): no second event.
            return OperationResult(self.state.status, m.status, self.state.version, changed=False)
        m.progress = p.percent
        m.progress_message = p.message
        if m.status == PENDING and p.percent > 0:
            m.status = IN_PROGRESS
        self._emit(
            "milestone.progress",
            {"key": m.key, "percent": p.percent, "message": p.message, "source": p.source},
            actor=p.source or "system",
        )
        self._changed()
        return OperationResult(self.state.status, m.status, self.state.version)

    def _check_waive(self, w: WaiveMilestoneInput) -> None:
        self._check_open_milestone(w.key)
        if not w.reason or not w.reason.strip():
            raise invalid("waiving a milestone needs a written reason")
        if not w.by or not w.by.strip():
            raise invalid("say who waives the milestone ('by')")

    def _apply_waive(self, w: WaiveMilestoneInput) -> OperationResult:
        m = self._milestone(w.key)
        self._resolve_milestone(m, WAIVED, w.by, w.reason)
        self._changed()
        return OperationResult(self.state.status, m.status, self.state.version)

    def _resolve_milestone(self, m: MilestoneState, status: str, by: str, note: str) -> None:
        was_overdue = m.status == OVERDUE
        m.status = status
        m.completed_at = workflow.now()
        m.completed_by = by
        m.note = note
        if status == DONE:
            m.progress = 100
        self._emit(
            "milestone.completed" if status == DONE else "milestone.waived",
            {"key": m.key, "note": note, "late": was_overdue, "due_at": _iso(m.due_at)},
            actor=by,
        )
        self._on_resolved("milestone", m.key)
        if status == DONE:
            self._hand_off(m)

    # ------------------------------------------------------------------ amendments
    def _amendment_or_none(self, amendment_id: str) -> AmendmentState | None:
        for a in self.state.amendments:
            if a.id == amendment_id:
                return a
        return None

    def _check_request(self, r: RequestAmendmentInput) -> None:
        s = self.state
        if s.status != ACTIVE:
            raise conflict(f"contract is {s.status}; it can no longer be amended")
        if not r.amendment_id or len(r.amendment_id) > 40:
            raise invalid("an amendment needs an id of 1 to 40 characters")
        if not r.requested_by or not r.requested_by.strip():
            raise invalid("say who requests the amendment ('requested_by')")
        if not r.reason or not r.reason.strip():
            raise invalid("an amendment needs a written reason")
        amendments.check(self._dated_for_first_task(), r.changes, workflow.now())

    def _apply_request(self, r: RequestAmendmentInput) -> AmendmentResult:
        s = self.state
        now = workflow.now()
        roles = amendments.required_roles(s, r.changes)
        impact = self._assess(r.changes, roles, r.approvers)
        a = AmendmentState(
            id=r.amendment_id,
            number=len(s.amendments) + 1,
            requested_by=r.requested_by,
            reason=r.reason.strip(),
            changes=list(r.changes),
            requested_at=now,
            required_roles=roles,
            approvers={role: r.approvers.get(role) or role for role in roles},
            impact=impact,
        )
        s.amendments.append(a)
        self._emit(
            "amendment.requested",
            {"amendment_id": a.id, "number": a.number, "reason": a.reason, "required_roles": roles,
             "approvers": a.approvers, "changes": [c.clause for c in impact.clauses]},
            actor=r.requested_by,
        )
        if not roles:
            self._apply_amendment(a)  # a policy may let some changes through without approval
        else:
            within = amendments.policy_of(s).approval_within
            for role in roles:
                item = ApprovalState(
                    key=f"{a.id}:{role}", amendment_id=a.id, role=role, owner=a.approvers[role],
                    department=amendments.ROLE_DEPARTMENTS.get(role, role), due_at=add_duration(now, within),
                    reminders=list(amendments.policy_of(s).approval_reminders),
                )
                s.approvals.append(item)
                if self._notify:
                    self._notify_about("approval", "approval", item, level=0, to=["owner"], cc=[],
                                       channels=self._policy().handoff_channels)
        self._changed()
        return AmendmentResult(a, s.contract_version)

    def _assess(self, changes, roles: list[str], approvers: dict[str, str]) -> AmendmentImpact:
        """What the changes would do, computed on a copy of the state (nothing here is kept)."""
        now = workflow.now()
        before = self.state
        after = copy.deepcopy(before)
        clauses = amendments.apply(after, changes, now)
        self.state, self._simulating = after, True
        try:
            for x in [*after.milestones, *after.installments]:
                if x.status not in (DONE, WAIVED, PAID):
                    x.due_at, x.due_estimated = self._due(x.due)
        finally:
            self.state, self._simulating = before, False
        places = before.spec.minor_units

        def late(x) -> bool:
            return x.status not in (DONE, WAIVED, PAID) and not x.due_estimated and x.due_at is not None and x.due_at <= now

        items, on_time, overdue, people = [], [], [], {before.spec.owner, *approvers.values()}
        old_m = {m.key: m for m in before.milestones}
        new_m = {m.key: m for m in after.milestones}
        for key in [*old_m, *[k for k in new_m if k not in old_m]]:
            o, n = old_m.get(key), new_m.get(key)
            change = "added" if o is None else "removed" if n is None else "unchanged"
            if o is not None and n is not None:
                if o.owner != n.owner:
                    change = "owner"
                elif o.due_at != n.due_at:
                    change = "moved"
                elif o.due != n.due or o.name != n.name or o.kind != n.kind:
                    change = "replaced"
            was, will = (o is not None and o.status == OVERDUE), (n is not None and late(n))
            if change != "unchanged":
                people.update(x.owner for x in (o, n) if x is not None)
            if was and not will and n is not None:
                on_time.append(f"milestone:{key}")
            if will and not was:
                overdue.append(f"milestone:{key}")
            items.append(ItemImpact(
                "milestone", key, (n or o).name, change,
                old_due_at=o.due_at if o else None, new_due_at=n.due_at if n else None,
                shift_seconds=int((n.due_at - o.due_at).total_seconds()) if o and n and o.due_at and n.due_at else None,
                old_owner=o.owner if o else None, new_owner=n.owner if n else None,
                overdue_before=was, overdue_after=will,
            ))
        plan = []
        old_i = {i.key: i for i in before.installments}
        new_i = {i.key: i for i in after.installments}
        for key in [*old_i, *[k for k in new_i if k not in old_i]]:
            o, n = old_i.get(key), new_i.get(key)
            change = "added" if o is None else "removed" if n is None else "unchanged"
            if o is not None and n is not None:
                change = "amount" if o.amount != n.amount else "moved" if o.due_at != n.due_at else "unchanged"
            was, will = (o is not None and o.status == OVERDUE), (n is not None and late(n))
            if was and not will and n is not None:
                on_time.append(f"installment:{key}")
            if will and not was:
                overdue.append(f"installment:{key}")
            plan.append(ItemImpact(
                "installment", key, f"Installment {key}", change,
                old_due_at=o.due_at if o else None, new_due_at=n.due_at if n else None,
                shift_seconds=int((n.due_at - o.due_at).total_seconds()) if o and n and o.due_at and n.due_at else None,
                old_amount=o.amount if o else None, new_amount=n.amount if n else None,
                overdue_before=was, overdue_after=will,
            ))
        new_total = Decimal(after.spec.amount)
        paid = Decimal(before.paid_total)
        return AmendmentImpact(
            items=items,
            old_amount=_fmt(Decimal(before.spec.amount), places),
            new_amount=_fmt(new_total, places),
            amount_delta=_fmt(new_total - Decimal(before.spec.amount), places),
            old_outstanding=before.outstanding,
            new_outstanding=_fmt(max(new_total - paid, Decimal(0)), places),
            old_end_at=before.spec.end_at,
            new_end_at=after.spec.end_at,
            installments=plan,
            becomes_on_time=on_time,
            becomes_overdue=overdue,
            affected_people=sorted(p for p in people if p),
            clauses=clauses,
        )

    def _check_decision(self, d: DecideAmendmentInput) -> None:
        s = self.state
        a = self._amendment_or_none(d.amendment_id)
        if a is None:
            raise not_found(f"contract has no amendment {d.amendment_id!r}")
        if a.status != "pending":
            raise conflict(f"amendment {a.id!r} is already {a.status}")
        if s.status != ACTIVE:
            raise conflict(f"contract is {s.status}; it can no longer be amended")
        if d.decision not in ("approve", "reject", "withdraw"):
            raise invalid("decision must be 'approve', 'reject' or 'withdraw'")
        if not d.by or not d.by.strip():
            raise invalid("say who decides ('by')")
        if d.decision == "withdraw":
            if d.by != a.requested_by:
                raise conflict(f"only the requester ({a.requested_by}) can withdraw amendment {a.id!r}")
            return
        if d.role not in a.required_roles:
            raise invalid(
                f"amendment {a.id!r} needs approval from {', '.join(a.required_roles)}; {d.role!r} is not one of them"
            )
        if any(x.role == d.role and x.decision == "approved" for x in a.decisions):
            raise conflict(f"{d.role} has already approved amendment {a.id!r}")
        if d.decision == "approve" and self._missing_roles(a) == [d.role]:
            # The last approval applies the change: it must still fit the contract as it is now.
            try:
                amendments.check(self._dated_for_first_task(), a.changes, workflow.now())
            except Exception as exc:  # noqa: BLE001 - reported as a conflict with the reason
                raise conflict(f"the contract changed since amendment {a.id!r} was requested: {exc}")

    # An update delivered with the workflow's first task (the contract was registered while no
    # worker ran, or an amendment came right after creation) runs before run() has computed any
    # due date: moving a date by a shift was refused "has no date yet".  Such an update now sees
    # the dates run() is about to compute.  Only before run() starts, so every history written
    # before this change (where that update was refused, and so is not in the history) replays
    # unchanged; no patch marker is needed.
    def _dated_for_first_task(self) -> ContractState:
        """The state to check against: itself, or before run() a dated copy (a validator must
        not change the state)."""
        if self._run_started:
            return self.state
        before = self.state
        dated = copy.deepcopy(before)
        self.state, self._simulating = dated, True
        try:
            for x in [*dated.milestones, *dated.installments]:
                x.due_at, x.due_estimated = self._due(x.due)
        finally:
            self.state, self._simulating = before, False
        return dated

    def _date_for_first_task(self) -> None:
        """In the handler (which may change the state): date the open items before run() does."""
        if not self._run_started:
            for x in [*self.state.milestones, *self.state.installments]:
                x.due_at, x.due_estimated = self._due(x.due)

    def _missing_roles(self, a: AmendmentState) -> list[str]:
        done = {x.role for x in a.decisions if x.decision == "approved"}
        return [r for r in a.required_roles if r not in done]

    def _apply_decision(self, d: DecideAmendmentInput) -> AmendmentResult:
        s = self.state
        a = self._amendment_or_none(d.amendment_id)
        now = workflow.now()
        word = {"approve": "approved", "reject": "rejected", "withdraw": "withdrawn"}[d.decision]
        a.decisions.append(ApprovalRecord(d.by, d.role, word, d.comment, now))
        if d.decision == "approve":
            self._close_approvals(a, only_role=d.role)
            self._emit("amendment.approval", {"amendment_id": a.id, "role": d.role, "by": d.by, "comment": d.comment,
                                              "missing": self._missing_roles(a)}, actor=d.by)
            if not self._missing_roles(a):
                self._emit("amendment.approved", {"amendment_id": a.id, "number": a.number,
                                                  "approved_by": [x.by for x in a.decisions]}, actor=d.by)
                self._apply_amendment(a)
        else:
            a.status, a.decided_at, a.note = word, now, d.comment
            self._close_approvals(a)
            self._emit(f"amendment.{word}", {"amendment_id": a.id, "role": d.role, "by": d.by, "comment": d.comment},
                       actor=d.by)
        self._changed()
        return AmendmentResult(a, s.contract_version)

    def _close_approvals(self, a: AmendmentState, only_role: str | None = None) -> None:
        for item in list(self.state.approvals):
            if item.amendment_id == a.id and (only_role is None or item.role == only_role):
                self.state.approvals.remove(item)
                self._on_resolved("approval", item.key)

    def _apply_amendment(self, a: AmendmentState) -> None:
        """Apply an approved amendment at once: dates, owners, scope and money change together,
        escalations of items that moved stop (and restart if still late), a new version is
        recorded and the supplementary agreement is generated."""
        s = self.state
        now = workflow.now()
        watched = {}
        for item_type, item in self._overdue_items():
            if item_type in ("milestone", "installment"):
                watched[(item_type, item.key)] = (item.due_at, item.owner if item_type == "milestone" else None, item)
        clauses = amendments.apply(s, a.changes, now)
        current = {("milestone", m.key): m for m in s.milestones}
        current.update({("installment", i.key): i for i in s.installments})
        for (item_type, key), (due_at, owner, old_item) in watched.items():
            item = current.get((item_type, key))
            if item is not None and item is old_item and item.status == OVERDUE and item.due_at == due_at and (
                    item_type != "milestone" or item.owner == owner):
                continue  # untouched: its escalation goes on
            self._on_resolved(item_type, key)
            if item is not None and item.status == OVERDUE:
                # Back to open; the refresh below marks it overdue again if its new date has passed.
                item.overdue_since = None
                if item_type == "milestone":
                    item.status = IN_PROGRESS if item.progress > 0 else PENDING
                else:
                    item.status = PARTIALLY_PAID if Decimal(item.paid) > 0 else PENDING
        for m in s.milestones:  # removed milestones no longer hold others back
            m.depends_on = [d for d in m.depends_on if any(x.key == d for x in s.milestones)]
        self._recompute_money()
        s.contract_version += 1
        self._tell_affected_owners(a, now)
        a.status, a.decided_at, a.contract_version = "applied", now, s.contract_version
        approvals = [x for x in a.decisions if x.decision == "approved"]
        if not s.versions:
            s.versions.append(ContractVersion(1, s.spec.effective_at, None, "as signed"))
        s.versions.append(ContractVersion(s.contract_version, now, a.id, a.reason, clauses, approvals))
        s.pending_documents.append(AgreementRequest(
            contract_id=s.spec.contract_id, amendment_id=a.id, amendment_number=a.number,
            contract_version=s.contract_version, contract_title=s.spec.title, customer_name=s.spec.customer_name,
            customer_external_id=s.spec.customer_external_id, contract_external_id=s.spec.external_id,
            original_effective_at=s.spec.effective_at, effective_at=now, currency=s.spec.currency,
            reason=a.reason, requested_by=a.requested_by, clauses=clauses, approvals=approvals,
        ))
        self._emit("amendment.applied", {
            "amendment_id": a.id, "number": a.number, "contract_version": s.contract_version,
            "clauses": [{"clause": c.clause, "old": c.old, "new": c.new} for c in clauses],
            "amount": s.spec.amount, "outstanding": s.outstanding, "end_at": _iso(s.spec.end_at),
        })

    def _tell_affected_owners(self, a: AmendmentState, now: datetime) -> None:
        """Everyone whose milestone moved, changed hands or was added hears of it at once."""
        if not self._notify:
            return
        touched = [c.key if c.kind != "add_milestone" else c.milestone.key for c in a.changes
                   if c.kind in ("move_due", "change_owner", "add_milestone", "replace_milestone")
                   and (c.kind != "move_due" or c.item_type == "milestone")]
        for m in self.state.milestones:
            if m.key in touched and m.status not in RESOLVED:
                m.due_at, m.due_estimated = self._due(m.due)
                if m.due_at is not None:
                    self._notify_about("amended", "milestone", m, level=0, to=["owner"], cc=[],
                                       channels=self._policy().handoff_channels,
                                       tag=f"-v{self.state.contract_version}")

    async def _documenter(self) -> None:
        """Generates supplementary agreements, one at a time, in the order they were applied."""
        while True:
            await workflow.wait_condition(lambda: bool(self.state.pending_documents))
            request = self.state.pending_documents[0]
            self._documenting = True
            try:
                document_id = await workflow.execute_activity(
                    "store_agreement",
                    request,
                    result_type=str,
                    start_to_close_timeout=timedelta(seconds=30),
                    # Keeps retrying while the database is away; a template error is non-retryable.
                    retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                )
                self._emit("document.created", {"document_id": document_id, "kind": "supplementary_agreement",
                                                "amendment_id": request.amendment_id,
                                                "contract_version": request.contract_version})
            except Exception as exc:  # noqa: BLE001 - recorded for operators; the contract lives on
                self._emit("document.failed", {"amendment_id": request.amendment_id, "error": str(exc)})
            finally:
                self._documenting = False
            self.state.pending_documents.pop(0)
            self._changed()

    # ------------------------------------------------------------------ termination
    def _check_terminate(self, t: TerminateInput) -> None:
        if self.state.status != ACTIVE:
            raise conflict(f"contract is already {self.state.status}")
        if not t.reason or not t.reason.strip():
            raise invalid("terminating a contract needs a written reason")

    def _apply_terminate(self, t: TerminateInput) -> OperationResult:
        self._close(TERMINATED, t.reason, actor=t.by or "system")
        self._changed()
        return OperationResult(self.state.status, None, self.state.version)

    # ------------------------------------------------------------------ time and status
    def _refresh(self) -> None:
        """Recompute due dates and statuses at workflow time; close the contract when done."""
        s = self.state
        if s.status != ACTIVE:
            self._sync_search_attributes()
            return
        now = workflow.now()
        for m in s.milestones:
            if m.status in RESOLVED:
                continue
            m.due_at, m.due_estimated = self._due(m.due)
            if m.status != OVERDUE and not m.due_estimated and m.due_at is not None and m.due_at <= now:
                m.status = OVERDUE
                m.overdue_since = m.due_at
                self._emit("milestone.overdue", {"key": m.key, "owner": m.owner, "due_at": _iso(m.due_at)})
                self._on_overdue("milestone", m.key)
        for i in s.installments:
            if i.status == PAID:
                continue
            i.due_at, i.due_estimated = self._due(i.due)
            if i.status != OVERDUE and not i.due_estimated and i.due_at is not None and i.due_at <= now:
                i.status = OVERDUE
                i.overdue_since = i.due_at
                owed = _fmt(Decimal(i.amount) - Decimal(i.paid), s.spec.minor_units)
                self._emit("installment.overdue", {"key": i.key, "owed": owed, "due_at": _iso(i.due_at)})
                self._on_overdue("installment", i.key)
        for a in s.approvals:
            if a.status == PENDING and a.due_at <= now:
                a.status = OVERDUE
                a.overdue_since = a.due_at
                self._emit("approval.overdue", {"key": a.key, "owner": a.owner, "due_at": _iso(a.due_at)})
                self._on_overdue("approval", a.key)
        if not s.past_end and now >= s.spec.end_at:
            s.past_end = True
            self._emit("contract.term_ended", {"end_at": _iso(s.spec.end_at), "outstanding": s.outstanding})
            self._renew_if_wanted()

        all_done = all(m.status in RESOLVED for m in s.milestones)
        settled = Decimal(s.outstanding) == 0
        if all_done and settled:
            self._close(COMPLETED, "all milestones resolved and all installments paid")
        elif s.past_end and settled:
            # The term is over and no money is owed: open milestones can no longer happen.
            self._close(EXPIRED, "end date passed; open milestones: " + ", ".join(
                m.key for m in s.milestones if m.status not in RESOLVED))
        # Money still owed after the end date keeps the contract active: receivables do not expire.

        if s.status == ACTIVE:
            self._send_due_reminders(now)
            self._send_term_reminders(now)
        self._track_escalation(now)

        open_dues = [x.due_at for x in [*s.milestones, *s.installments]
                     if x.status not in (DONE, WAIVED, PAID) and x.due_at is not None]
        upcoming = [d for d in open_dues if d > now]
        s.next_due_at = min(upcoming) if upcoming else None
        s.overdue_count = sum(1 for x in [*s.milestones, *s.installments] if x.status == OVERDUE)
        self._sync_search_attributes()

    def _due(self, rule: DueRule, depth: int = 0) -> tuple[datetime | None, bool]:
        """A due date, and whether it is only an estimate (it waits on an open predecessor, or
        on the working-day calendar)."""
        if rule.at is not None:
            return self._business(rule.at, "P0D")
        if rule.after is None:
            spec = self.state.spec
            return self._business(spec.clock_start or spec.effective_at, rule.offset or "PT0S")
        pred = self._milestone(rule.after)
        if pred.status in RESOLVED and pred.completed_at is not None:
            return self._business(pred.completed_at, rule.offset or "PT0S")
        if depth > len(self.state.milestones):
            return None, True
        base, _ = self._due(pred.due, depth + 1)
        if base is None:
            return None, True
        due, _ = self._business(base, rule.offset or "PT0S")
        return due, True

    def _business(self, base: datetime, offset: str) -> tuple[datetime, bool]:
        """``base + offset``; in working days when the policy says so.  Those come from the
        calendar activity: until its answer is recorded the date is an estimate with no timer."""
        plain = add_duration(base, offset)
        policy = self.state.spec.policy
        if not (self._notify and policy is not None and policy.business_days):
            return plain, False
        key = f"{base.isoformat()}|{offset}"
        if key in self.state.calendar:
            return self.state.calendar[key], False
        if key not in self._calendar_wanted and not self._simulating:
            self._calendar_wanted.append(key)
        return plain, True

    async def _calendar(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self._calendar_wanted))
            key = self._calendar_wanted[0]
            base_text, offset = key.split("|")
            policy = self.state.spec.policy
            try:
                due = datetime.fromisoformat(await workflow.execute_activity(
                    "business_due",
                    BusinessDueRequest(datetime.fromisoformat(base_text), offset, policy.business_timezone),
                    result_type=str,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=5),
                ))
            except Exception as exc:  # noqa: BLE001 - an unpublished year: say so, never guess silently
                due = add_duration(datetime.fromisoformat(base_text), offset)
                self._emit("calendar.unavailable", {"base": base_text, "offset": offset, "error": str(exc),
                                                    "used_calendar_days": due.isoformat()})
            self.state.calendar[key] = due
            self._calendar_wanted.pop(0)
            self._changed()

    def _time_to_next_due(self) -> timedelta | None:
        now = workflow.now()
        candidates = [
            x.due_at
            for x in [*self.state.milestones, *self.state.installments, *self.state.approvals]
            if x.status in (PENDING, IN_PROGRESS, PARTIALLY_PAID) and not x.due_estimated and x.due_at is not None
        ]
        if not self.state.past_end:
            candidates.append(self.state.spec.end_at)
        if self._notify:
            candidates += [t for t in self._reminder_times() if t > now]
            if self.state.next_escalation_at is not None:
                candidates.append(self.state.next_escalation_at)
        if not candidates:
            return None  # nothing timed left: wait for the outside world
        return max(min(candidates) - now, timedelta(milliseconds=1))

    def _close(self, status: str, reason: str, actor: str = "system") -> None:
        s = self.state
        s.status = status
        s.closed_at = workflow.now()
        s.close_reason = reason
        self._emit(f"contract.{status}", {"reason": reason, "outstanding": s.outstanding}, actor=actor)
        for task in self._escalations.values():
            task.cancel()  # a closed contract chases nobody
        self._track_escalation(s.closed_at)
        self._sync_search_attributes()

    # ------------------------------------------------------------------ reminders, escalation, hand-off
    def _policy(self):
        return self.state.spec.policy

    def _open_timed_items(self):
        s = self.state
        for m in s.milestones:
            if m.status in (PENDING, IN_PROGRESS) and not m.due_estimated and m.due_at is not None:
                yield "milestone", m
        for i in s.installments:
            if i.status in (PENDING, PARTIALLY_PAID) and not i.due_estimated and i.due_at is not None:
                yield "installment", i
        for a in s.approvals:
            if a.status == PENDING:
                yield "approval", a

    def _overdue_items(self):
        for m in self.state.milestones:
            if m.status == OVERDUE:
                yield "milestone", m
        for i in self.state.installments:
            if i.status == OVERDUE:
                yield "installment", i
        for a in self.state.approvals:
            if a.status == OVERDUE:
                yield "approval", a

    def _reminder_times(self) -> list[datetime]:
        if not self._notify:
            return []
        return [
            item.due_at - _as_delta(offset)
            for _, item in self._open_timed_items()
            for offset in self._reminder_offsets(item)
        ] + [t for _, t in self._term_reminders()]

    # ------------------------------------------------------------------ end of term: reminders, renewal
    def _term_reminders(self) -> list[tuple[str, datetime]]:
        """(offset, when) of each reminder before the end date that falls inside the term as
        registered: a contract registered 20 days before its end gets no "60 days left"."""
        s = self.state
        r = s.spec.renewal
        if not self._notify or r is None or s.past_end or s.status != ACTIVE:
            return []
        start = s.spec.clock_start or s.spec.effective_at
        return [(o, s.spec.end_at - _as_delta(o)) for o in r.reminders
                if s.spec.end_at - _as_delta(o) >= start]

    def _send_term_reminders(self, now: datetime) -> None:
        s = self.state
        passed = [o for o, when in self._term_reminders() if when <= now]
        keys = [f"contract:term:{s.spec.end_at.isoformat()}:{o}" for o in passed]
        if not passed or all(k in s.reminders_sent for k in keys):
            return
        s.reminders_sent.extend(k for k in keys if k not in s.reminders_sent)
        days_left = max(1, -(-int((s.spec.end_at - now).total_seconds()) // 86400))
        self._notify_about("reminder", "contract", _Term(s.spec.end_at, s.spec.title), level=0, to=["owner"], cc=[],
                           channels=s.spec.renewal.channels, days=days_left,
                           tag=f"-{min(passed, key=_as_delta)}")

    def _renew_if_wanted(self) -> None:
        """At the end date, an auto-renewing contract starts its next term as a new contract."""
        s = self.state
        r = s.spec.renewal
        if r is None or not r.auto_renew or s.renewed_by is not None or s.status != ACTIVE:
            return
        old = s.spec
        nxt = copy.deepcopy(old)
        shift = old.end_at - old.effective_at
        nxt.contract_id = str(workflow.uuid4()).replace("-", "")[:16]
        nxt.effective_at = old.end_at
        nxt.clock_start = old.end_at
        nxt.end_at = add_duration(old.end_at, r.term)
        nxt.renewal_of = old.contract_id
        nxt.erp_order_no = None
        nxt.external_id = f"{old.external_id}/renewal-{nxt.contract_id[:6]}"[:100] if old.external_id else None
        for item in [*nxt.milestones, *nxt.installments]:
            if item.due.at is not None:  # fixed dates move with the term; offsets count anew
                item.due.at = item.due.at + shift
        s.renewed_by = nxt.contract_id
        s.pending_renewals.append(RenewalRequest(spec=nxt))
        self._emit("contract.renewed", {"next_contract_id": nxt.contract_id, "effective_at": _iso(nxt.effective_at),
                                        "end_at": _iso(nxt.end_at)})

    async def _renewer(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self.state.pending_renewals))
            request = self.state.pending_renewals[0]
            self._renewing = True
            try:
                workflow_id = await workflow.execute_activity(
                    "start_renewal",
                    request,
                    result_type=str,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                )
                self._emit("renewal.started", {"next_contract_id": request.spec.contract_id,
                                               "workflow_id": workflow_id})
            except Exception as exc:  # noqa: BLE001 - recorded for operators
                self._emit("renewal.failed", {"next_contract_id": request.spec.contract_id, "error": str(exc)})
            finally:
                self._renewing = False
            self.state.pending_renewals.pop(0)
            self._changed()

    def _reminder_offsets(self, item) -> list[str]:
        own = getattr(item, "reminders", None)  # a milestone may carry its own offsets
        return own if own is not None else self._policy().reminders

    def _send_due_reminders(self, now: datetime) -> None:
        """Before-due reminders to the item's owner.  If several offsets have passed (a contract
        registered close to a date), only the nearest one is sent: one reminder, not a burst."""
        if not self._notify:
            return
        for item_type, item in self._open_timed_items():
            if item.due_at <= now:
                continue
            passed = [o for o in self._reminder_offsets(item) if item.due_at - _as_delta(o) <= now]
            keys = [f"{item_type}:{item.key}:{item.due_at.isoformat()}:{o}" for o in passed]
            if not passed or all(k in self.state.reminders_sent for k in keys):
                continue
            self.state.reminders_sent.extend(k for k in keys if k not in self.state.reminders_sent)
            days_left = max(1, -(-int((item.due_at - now).total_seconds()) // 86400))
            self._notify_about("reminder", item_type, item, level=0, to=["owner"], cc=[],
                               channels=self._policy().reminder_channels, days=days_left,
                               tag=f"-{min(passed, key=_as_delta)}")

    def _notify_about(self, kind, item_type, item, *, level, to, cc, channels, days=0, tag="") -> None:
        self._outbox.append(
            NotifyRequest(
                **self._item_facts(item_type, item),
                kind=kind,
                due_at=item.due_at,
                level=level,
                to=list(to),
                cc=list(cc),
                channels=list(channels),
                days=days,
                tag=tag,
            )
        )
        self._emit(f"notification.{kind}", {"item_type": item_type, "key": item.key, "level": level, "to": to, "cc": cc})

    def _item_facts(self, item_type: str, item) -> dict:
        """What a notice says about an item; installments are chased by the sales owner."""
        s = self.state
        if item_type == "milestone":
            return dict(contract_id=s.spec.contract_id, item_type=item_type, item_key=item.key, item_name=item.name,
                        owner=item.owner, department=item.department, contract_title=s.spec.title,
                        customer=s.spec.customer_name, amount=None, currency=None)
        if item_type == "contract":
            return dict(contract_id=s.spec.contract_id, item_type=item_type, item_key="term",
                        item_name=f"End of term: {s.spec.title}", owner=s.spec.owner, department="sales",
                        contract_title=s.spec.title, customer=s.spec.customer_name, amount=None, currency=None)
        if item_type == "approval":
            return dict(contract_id=s.spec.contract_id, item_type=item_type, item_key=item.key, item_name=item.name,
                        owner=item.owner, department=item.department, contract_title=s.spec.title,
                        customer=s.spec.customer_name, amount=None, currency=None)
        owed = _fmt(Decimal(item.amount) - Decimal(item.paid), s.spec.minor_units)
        return dict(contract_id=s.spec.contract_id, item_type=item_type, item_key=item.key,
                    item_name=f"Installment {item.key}", owner=s.spec.owner, department="sales",
                    contract_title=s.spec.title, customer=s.spec.customer_name, amount=owed,
                    currency=s.spec.currency)

    def _hand_off(self, done: MilestoneState) -> None:
        """The next milestone's owner gets a task and a notification the moment its turn comes."""
        if not self._notify:
            return
        for nxt in self.state.milestones:
            if nxt.status in RESOLVED or done.key not in nxt.depends_on:
                continue
            if any(self._milestone(d).status not in RESOLVED for d in nxt.depends_on):
                continue  # still waiting on another predecessor
            nxt.due_at, nxt.due_estimated = self._due(nxt.due)
            self._notify_about("handoff", "milestone", nxt, level=0, to=["owner"], cc=[],
                               channels=self._policy().handoff_channels)
            # The hand-off already tells the new owner the date: reminders whose time has
            # passed by now are not sent on top of it.
            now = workflow.now()
            for offset in self._reminder_offsets(nxt):
                if nxt.due_at is not None and nxt.due_at - _as_delta(offset) <= now:
                    mark = f"milestone:{nxt.key}:{nxt.due_at.isoformat()}:{offset}"
                    if mark not in self.state.reminders_sent:
                        self.state.reminders_sent.append(mark)

    def _track_escalation(self, now: datetime) -> None:
        """Highest level reached by an open overdue item, and when the next level falls due."""
        s = self.state
        if not self._notify:
            return
        levels = self._policy().escalation
        reached, upcoming = 0, []
        if s.status == ACTIVE:
            for _, item in self._overdue_items():
                times = [item.due_at + _as_delta(level.after) for level in levels]
                reached = max(reached, sum(1 for t in times if t <= now))
                upcoming += [t for t in times if t > now]
        s.escalation_level = reached
        s.next_escalation_at = min(upcoming) if upcoming else None

    def _on_overdue(self, item_type: str, key: str) -> None:
        """An item fell due unresolved: start its EscalationWorkflow child."""
        if not self._notify or not self._policy().escalation:
            return
        item = self._item(item_type, key)
        ident = f"{item_type}:{key}"
        if ident in self._escalations and not self._escalations[ident].done():
            return
        self._escalations[ident] = asyncio.create_task(self._escalate(item_type, item))

    def _on_resolved(self, item_type: str, key: str) -> None:
        """An item was resolved: its escalation stops at once and notifies nobody after this."""
        task = self._escalations.pop(f"{item_type}:{key}", None)
        if task is None:
            return
        # Whether the child is still running at this instant is a matter of timing (asyncio task
        # state), which a live execution and a later replay can see differently; an event emitted
        # on it could shift every later event number.  Since this patch the event says "the chase
        # of this item ended because it was resolved", whatever the child was doing.
        always = workflow.patched("escalation-stopped-always-v1")
        running = not task.done()
        if running:
            task.cancel()
            self._stopping.append(task)  # awaited before the contract closes
        if running or always:
            self._emit("escalation.stopped", {"item_type": item_type, "key": key})

    async def _escalate(self, item_type: str, item) -> None:
        s = self.state
        due_at = item.due_at
        try:
            await workflow.execute_child_workflow(
                EscalationWorkflow.run,
                EscalationInput(
                    **self._item_facts(item_type, item),
                    parent_workflow_id=workflow.info().workflow_id,
                    due_at=due_at,
                    levels=list(self._policy().escalation),
                ),
                id=escalation_workflow_id(
                    workflow.info().workflow_id, item_type, item.key, int(due_at.timestamp())
                ) + f"/r{s.run}" + (f"/v{s.contract_version}" if s.contract_version > 1 else ""),
                static_summary=f"Escalation: {item_type} {item.key} of {s.spec.title}",
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken chain is recorded, the contract lives on
            cancelled_by_us = isinstance(exc, ChildWorkflowError) and isinstance(exc.cause, CancelledError)
            if cancelled_by_us and workflow.patched("quiet-cancelled-escalation-v1"):
                return  # we cancelled it (the item was resolved): not a failure
            self._emit("escalation.failed", {"item_type": item_type, "key": item.key, "error": str(exc)})

    def _item(self, item_type: str, key: str):
        if item_type == "milestone":
            return self._milestone(key)
        if item_type == "installment":
            return self._installment(key)
        for a in self.state.approvals:
            if a.key == key:
                return a
        raise not_found(f"contract has no pending approval {key!r}")

    def _installment(self, key: str) -> InstallmentState:
        for i in self.state.installments:
            if i.key == key:
                return i
        raise not_found(f"contract has no installment {key!r}")

    async def _notifier(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self._outbox))
            request = self._outbox[0]
            self._notifying = True
            try:
                await workflow.execute_activity(
                    "notify",
                    request,
                    start_to_close_timeout=timedelta(seconds=25),  # SMTP and webhook calls time out at 10 s
                    retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=5), maximum_attempts=20),
                )
            except Exception as exc:  # noqa: BLE001 - recorded; one failed notice must not stall the rest
                self._emit("notification.failed", {"kind": request.kind, "key": request.item_key, "error": str(exc)})
            finally:
                self._notifying = False
            self._outbox.pop(0)

    # ------------------------------------------------------------------ events and projection
    def _emit(self, type_: str, data: dict, actor: str = "system") -> None:
        self.state.version += 1
        self._pending.append(ContractEvent(self.state.version, type_, workflow.now(), data, actor))
        self._dirty = True

    def _changed(self) -> None:
        """Called by every handler after it changed state: recompute now and wake the timer loop."""
        self._refresh()
        self._dirty = True
        self._wake = True

    async def _projector(self) -> None:
        while True:
            await workflow.wait_condition(lambda: self._dirty or bool(self._pending))
            batch = list(self._pending)
            self._dirty = False
            self._projecting = True
            try:
                await workflow.execute_activity(
                    "project_contract",
                    ProjectionInput(self.state, batch, workflow.info().workflow_id),
                    start_to_close_timeout=timedelta(seconds=30),
                    # Keep retrying while the database is away; the next snapshot supersedes.
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                )
            finally:
                self._projecting = False
            del self._pending[: len(batch)]

    def _sync_search_attributes(self) -> None:
        s = self.state
        wanted = [
            sa.CONTRACT_STATUS.value_set(s.status),
            sa.OVERDUE_COUNT.value_set(s.overdue_count),
            sa.OUTSTANDING_AMOUNT.value_set(float(Decimal(s.outstanding))),
            sa.NEXT_DUE_AT.value_set(s.next_due_at) if s.next_due_at else sa.NEXT_DUE_AT.value_unset(),
        ]
        if self._notify:
            wanted.append(sa.ESCALATION_LEVEL.value_set(s.escalation_level))
        current = workflow.info().typed_search_attributes
        changes = []
        for update in wanted:
            have = current.get(update.key)
            want = getattr(update, "value", None)
            if have != want:
                changes.append(update)
        if changes:
            workflow.upsert_search_attributes(changes)

    # ------------------------------------------------------------------ continue-as-new
    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        limit = self._input.continue_as_new_after_events
        if limit and info.get_current_history_length() >= limit:
            return True
        return info.is_continue_as_new_suggested()

    async def _continue_as_new(self, projector: asyncio.Task, notifier: asyncio.Task | None) -> None:
        # Let running handlers finish so no update or signal is lost, and let the projector
        # finish the batch it is writing; what is still unwritten travels with the state.
        await workflow.wait_condition(
            lambda: workflow.all_handlers_finished() and not self._projecting and not self._notifying
            and not self._documenting and not self._renewing
        )
        projector.cancel()
        if notifier is not None:
            notifier.cancel()
        self._emit("contract.continued", {"run": self.state.run + 1, "history_length": workflow.info().get_current_history_length()})
        workflow.continue_as_new(
            ContractWorkflowInput(
                spec=self.state.spec,
                carried=self.state,
                pending_events=list(self._pending),
                pending_notifications=list(self._outbox),
                continue_as_new_after_events=self._input.continue_as_new_after_events,
            )
        )


@dataclass
class _Term:
    """The contract's end date, as a timed item for reminders."""

    due_at: datetime
    title: str
    key: str = "term"


def _initial_state(spec: ContractSpec) -> ContractState:
    state = ContractState(spec=spec)
    state.milestones = [
        MilestoneState(
            key=m.key,
            name=m.name,
            kind=m.kind,
            owner=m.owner,
            department=m.department,
            standard=m.standard,
            due=m.due,
            depends_on=list(m.depends_on),
            reminders=list(m.reminders) if m.reminders is not None else None,
            planned_cost=m.planned_cost,
        )
        for m in spec.milestones
    ]
    state.installments = [InstallmentState(key=i.key, amount=i.amount, due=i.due) for i in spec.installments]
    places = spec.minor_units
    state.outstanding = _fmt(Decimal(spec.amount), places)
    state.paid_total = _fmt(Decimal(0), places)
    state.credit = _fmt(Decimal(0), places)
    for i in state.installments:
        i.amount = _fmt(Decimal(i.amount), places)
        i.paid = _fmt(Decimal(0), places)
    return state


def _as_delta(text: str) -> timedelta:
    return to_timedelta(text)


def _fmt(amount: Decimal, places: int) -> str:
    return str(amount.quantize(Decimal(1).scaleb(-places)))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
