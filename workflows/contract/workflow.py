"""ContractWorkflow: one signed contract, alive from signature until completed, terminated or expired.

It holds the contract's live state, guards every due date with a durable timer and takes the
outside world in through updates (validated before they enter history) and signals (for
fire-and-forget senders).  The rules are pure modules over the state (schedule, payments,
milestones, amendments, reminders, renewal); this module is the run loop and the handlers.

How it keeps its history short:
  * one timer, armed for the next thing that must happen on its own (an item or approval falls
    due, the term ends, an escalation level is reached), and re-armed only when that changes;
  * after every change, a *delta* (changed items, new events, notices and reminder plans) goes to
    the read model: an update from the API answers with it and the API writes it (no local
    activity in that task); any other change goes through a local activity, in the same task;
  * reminders before due are planned here and sent by the notification outbox at their time,
    so they do not wake the contract;
  * search attributes are upserted once per task, and only the ones whose value changed.

Contracts started before this engine (no ``lean-engine-v1`` marker in their first task) run on
the frozen legacy code (workflows/legacy/) until their next continue-as-new moves them here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, SearchAttributeUpdate, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, ChildWorkflowError, FailureError

with workflow.unsafe.imports_passed_through():
    from core.durations import add_duration
    from workflows import activities
    from workflows import search_attributes as sa
    from workflows.contract import amendments, milestones, payments, reminders, renewal, schedule
    from workflows.contract.journal import Journal
    from workflows.contract.notices import Item, facts
    from workflows.contract.projection import READ_MODEL_BEHIND, Projector
    from workflows.contract.queue import WorkQueue
    from workflows.errors import conflict, invalid
    from workflows.escalation import EscalationWorkflow, escalation_workflow_id
    from workflows.legacy.contract import LegacyContract
    from workflows.types import (
        AgreementRequest,
        AmendmentResult,
        BusinessDueRequest,
        CompleteMilestoneInput,
        ContractOutcome,
        ContractSpec,
        ContractState,
        ContractStatus,
        ContractWorkflowInput,
        DecideAmendmentInput,
        EscalationInput,
        InstallmentState,
        OperationResult,
        PaymentBatchInput,
        PaymentInput,
        PaymentOutcome,
        PaymentResult,
        ProgressInput,
        RenewalRequest,
        RequestAmendmentInput,
        TerminateInput,
        WaiveMilestoneInput,
    )

LEAN = "lean-engine-v1"
# Updates from the API answer with their delta and the API writes it (no local activity in the
# update's task); see Projector.hand_over.  A handed delta the read model still lacks this long
# after is taken as lost (its writer died between the answer and the write): every item again.
# A write in flight lands in milliseconds; the grace is wide so that a request that read the row
# just before it, and queued under load, is not taken for a lost write (a needless full rewrite).
# It decides which commands a task issues: changing it needs a patch of its own.
API_PROJECTION = "api-projection-v1"
HANDED_GRACE = timedelta(seconds=5)
# An approval of an amendment assessed on an older contract version is refused (another amendment
# applied since: its impact no longer holds).  The validator always checks; the handler (which
# replays old histories, where such approvals were applied) only where this patch is recorded.
AMENDMENT_STILL_CURRENT = "amendment-still-current-v1"
# A terminated or expired contract has nothing due: its NextDueAt search attribute and the read
# model's next_due_at are cleared when it closes.  Before, they kept the date of an item that
# would never fall due (operators' ``NextDueAt < ...`` queries listed closed contracts).
CLOSED_NOTHING_DUE = "closed-nothing-due-v1"
# An amendment that would put a milestone before one it depends on (shipping moved ahead of the
# production it waits for) is refused.  The validator always checks; the handler asks this patch
# only when it finds such a move (older histories applied them).
MOVES_KEEP_ORDER = "moves-keep-order-v1"
MAX_PAYMENTS_PER_BATCH = payments.MAX_PAYMENTS_PER_BATCH
# The OutstandingAmount search attribute follows payments at most this often.  Each upsert is a
# visibility write: measured on the dev server, it doubles the server's CPU per update (4 -> 8 ms)
# and that was the largest cost of a payment.  A payment after a quiet spell is upserted at once;
# one within this span of the last upsert waits for it to end (the run loop wakes for it), or rides
# along with any other attribute's change; an amount reaching zero (paid up) goes out at once.  The
# read model always has the exact amount at once.
# It decides which commands a task issues: changing it needs a patch of its own.
SA_THROTTLE = "amount-search-attribute-throttle-v1"
AMOUNT_EVERY = timedelta(seconds=10)
# A task whose only change came from handlers that already refreshed the state at this workflow
# time (``_changed``) skips the run loop's second refresh, and, when the last of them handed its
# delta to the API, the projection's recomputing of a delta that comes out empty.  Both found
# nothing: measured, they were ~20 % of a payment's activation.  Anything else that wakes the run
# loop (a timer, an activity's result, a rejected signal: ``_wake``) refreshes as before.
# It decides which commands a task issues (the refresh may start or stop escalations, and a
# contract closes in it): older histories replay with the second refresh.
REFRESH_ONCE = "refresh-once-per-task-v1"
# A payment received more than a year before the contract took effect is refused (a mistyped year).
# The validators always check; the handlers ask this patch only when they find such a date (older
# runs applied them).
PAYMENT_DATES = "payment-dates-bounded-v1"
# The delta is written by a local activity, inside the workflow task that made the change (one
# marker in the history, and the read model is current when an update answers).  Its attempts are
# short: while the database is away the task must not be held (updates answer, timers fire), so
# after them the same delta goes to a regular activity that keeps retrying in the background.
PROJECTION_NOW: dict[str, Any] = dict(start_to_close_timeout=timedelta(seconds=5),
                                      retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200),
                                                               maximum_attempts=3))
PROJECTION_LATER: dict[str, Any] = dict(start_to_close_timeout=timedelta(seconds=30),
                                        retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)))


def workflow_id_for(contract_id: str) -> str:
    return f"contract-{contract_id}"


def initial_search_attributes(spec: ContractSpec, now: datetime | None = None) -> TypedSearchAttributes:
    """What the starter sets when it starts the workflow, so a new contract is findable at once.
    With ``now``, also the next due date and escalation level the first task would work out (the
    same pure rules; items waiting on the working-day calendar have no date yet): then that task
    has nothing to upsert, one visibility write less per new contract.  Where the starter's guess
    differs, the workflow upserts what it computed, as before."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(sa.CONTRACT_ID, spec.contract_id),
        SearchAttributePair(sa.CUSTOMER_NAME, spec.customer_name),
        SearchAttributePair(sa.CONTRACT_STATUS, ContractStatus.ACTIVE.value),
        SearchAttributePair(sa.OWNER, spec.owner),
        SearchAttributePair(sa.OVERDUE_COUNT, 0),
        SearchAttributePair(sa.OUTSTANDING_AMOUNT, float(Decimal(spec.amount))),
    ]
    if now is not None:
        state = initial_state(spec)
        schedule.date_open_items(state, [])
        next_due = schedule.next_due_at(state, now)
        if next_due is not None:
            pairs.append(SearchAttributePair(sa.NEXT_DUE_AT, next_due))
        if spec.policy is not None:
            pairs.append(SearchAttributePair(sa.ESCALATION_LEVEL, 0))
    return TypedSearchAttributes(pairs)


def initial_state(spec: ContractSpec) -> ContractState:
    """The state of a newly signed contract.  The spec's item lists are not kept: the items are
    the state's (what an amendment changes), so the state carries each once."""
    state = ContractState(spec=replace(spec, milestones=[], installments=[]))
    state.milestones = [amendments.milestone_state(m) for m in spec.milestones]
    places = spec.minor_units
    state.installments = [InstallmentState(key=i.key, amount=payments.fmt(Decimal(i.amount), places), due=i.due,
                                           paid=payments.fmt(Decimal(0), places)) for i in spec.installments]
    payments.recompute(state)
    return state


def carried_state(carried: ContractState) -> ContractState:
    """A state carried over continue-as-new, in the lean shape (a legacy run carries more)."""
    carried.spec = replace(carried.spec, milestones=[], installments=[])
    carried.reminders_sent = []  # reminders are the outbox's now; what was sent is recorded there
    carried.run += 1
    return carried


@workflow.defn(name="ContractWorkflow")
class ContractWorkflow:
    @workflow.init
    def __init__(self, input: ContractWorkflowInput) -> None:
        # Contracts whose first task carries no marker started on the legacy engine: replay them there.
        self._legacy: LegacyContract | None = None if workflow.patched("lean-engine-v1") else LegacyContract(input)
        if self._legacy is not None:
            return
        self._input = input
        self.state = carried_state(input.carried) if input.carried is not None else initial_state(input.spec)
        self._journal = Journal(self.state, workflow.now)
        self._projector = Projector()
        self._dirty = False  # the state changed since the run loop last looked
        # Since the run loop last looked, only handlers changed the state, each refreshing it at
        # this time (REFRESH_ONCE); and the last of them handed its delta to the API.
        self._fresh_at: datetime | None = None
        self._handed_at: datetime | None = None
        self._projection_wanted = True
        self._projecting = False
        self._verify_handed = False  # closing or continuing as new: handed deltas must be confirmed
        self._timer: asyncio.Task[None] | None = None
        self._timer_at: datetime | None = None
        self._amount_upserted_at: datetime | None = None  # OutstandingAmount's last upsert (SA_THROTTLE)
        self._amount_due_at: datetime | None = None  # a held-back amount goes out then
        self._escalations: dict[str, asyncio.Task[None]] = {}
        self._stopping: list[asyncio.Task[None]] = []  # cancelled escalations, awaited before closing
        self._calendar_wanted: list[str] = []
        self._calendar = WorkQueue(self._calendar_wanted, self._ask_calendar)
        self._documents = WorkQueue(self.state.pending_documents, self._store_agreement)
        self._renewals = WorkQueue(self.state.pending_renewals, self._start_renewal)
        if input.carried is not None:
            self._journal.events.extend(input.pending_events)  # a legacy run's unwritten events
            self._journal.notices.extend(input.pending_notifications)  # and its unsent notices
        else:
            s = input.spec
            self._journal.emit("contract.created", {
                "title": s.title, "customer": s.customer_name, "customer_external_id": s.customer_external_id,
                "external_id": s.external_id, "amount": s.amount, "currency": s.currency, "playbook": s.playbook,
            }, actor=s.owner)
        # Dates now, not in run(): an update delivered with the first task (a worker was down when the
        # contract was registered) runs before run() starts and must see them.  No command is issued.
        schedule.date_open_items(self.state, self._calendar_wanted)

    # ------------------------------------------------------------------ the run loop
    @workflow.run
    async def run(self, input: ContractWorkflowInput) -> ContractOutcome:
        if self._legacy is not None:
            return ContractOutcome.of(await self._legacy.run(input))
        loops = [asyncio.create_task(loop) for loop in (self._project_forever(), self._calendar.run(),
                                                         self._documents.run(), self._renewals.run())]
        if input.carried is not None:
            # Escalation children do not survive continue-as-new: start them again.  Levels already
            # sent are not sent again (the notify activity is exactly-once per level).
            for item_type, item in reminders.overdue_items(self.state):
                self._start_escalation(item_type, item)
        self._refresh()
        refreshed = True
        while self.state.status == ContractStatus.ACTIVE:
            self._publish(project=refreshed or self._handed_at != workflow.now())
            if self._should_continue_as_new():
                await self._continue_as_new()
            self._dirty = False
            self._fresh_at = self._handed_at = None
            await workflow.wait_condition(lambda: self._dirty or any(t.done() for t in loops))
            _raise_if_crashed(loops)
            refreshed = self._fresh_at != workflow.now() or not workflow.patched(REFRESH_ONCE)
            if refreshed:
                self._refresh()

        # Closed: let in-flight updates reply, finish the background work, write the last delta.
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._refresh()
        self._publish()
        await workflow.wait_condition(lambda: all(t.done() for t in [*self._escalations.values(), *self._stopping]))
        await workflow.wait_condition(lambda: self._documents.idle() and self._renewals.idle())
        self._verify_handed = self._projection_wanted = True
        await workflow.wait_condition(lambda: self._projected() or any(t.done() for t in loops))
        _raise_if_crashed(loops)
        for task in loops:
            task.cancel()
        return ContractOutcome.of(self.state)

    def _changed(self) -> None:
        """Every handler calls this after it changed the state: statuses now, the rest in the run loop."""
        self._refresh()
        self._fresh_at, self._handed_at = workflow.now(), None
        self._dirty = True

    def _wake(self) -> None:
        """Something else happened (a timer, an activity's result, a note in the journal): the run
        loop looks at everything again."""
        self._fresh_at = self._handed_at = None
        self._dirty = True

    def _refresh(self) -> None:
        """Dates, statuses and what fell due, at workflow time; close the contract when done."""
        s, now = self.state, workflow.now()
        if s.status == ContractStatus.ACTIVE:
            schedule.date_open_items(s, self._calendar_wanted)
            schedule.fall_due(s, now, self._journal)
            if not s.past_end and now >= s.spec.end_at:
                s.past_end = True
                self._journal.emit("contract.term_ended", {"end_at": s.spec.end_at.isoformat(),
                                                           "outstanding": s.outstanding})
                self._renew_if_wanted()
            all_done = all(m.status in milestones.RESOLVED for m in s.milestones)
            if all_done and payments.settled(s):
                self._close(ContractStatus.COMPLETED, "all milestones resolved and all installments paid")
            elif s.past_end and payments.settled(s):
                # The term is over and no money is owed: open milestones can no longer happen.
                self._close(ContractStatus.EXPIRED, "end date passed; open milestones: " + ", ".join(
                    m.key for m in s.milestones if m.status not in milestones.RESOLVED))
            # Money still owed after the end date keeps the contract active: receivables do not expire.
        s.escalation_level, s.next_escalation_at = reminders.escalation(s, now)
        if s.status != ContractStatus.ACTIVE and workflow.patched(CLOSED_NOTHING_DUE):
            s.next_due_at = None  # a closed contract's open items will never fall due
        else:
            s.next_due_at = schedule.next_due_at(s, now)
        s.overdue_count = schedule.overdue_count(s)
        self._settle_escalations()

    def _publish(self, project: bool = True) -> None:
        """Once per task, from the run loop: the timer, the search attributes, the projection
        (not when the task's handlers handed everything to the API: REFRESH_ONCE)."""
        s = self.state
        changes = self._search_attribute_changes()
        deadline = schedule.next_deadline(s, s.next_escalation_at) if s.status == ContractStatus.ACTIVE else None
        if self._amount_due_at is not None and s.status == ContractStatus.ACTIVE:
            deadline = min(deadline, self._amount_due_at) if deadline is not None else self._amount_due_at
        self._arm(deadline)  # before the upsert: the order the commands have always had
        if changes:
            workflow.upsert_search_attributes(changes)
        if project:
            self._projection_wanted = True

    def _arm(self, at: datetime | None) -> None:
        """One timer for the next thing that must happen on its own; left alone while that stays."""
        if at == self._timer_at and self._timer is not None and not self._timer.done():
            return
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        self._timer, self._timer_at = None, at
        if at is not None:
            self._timer = asyncio.create_task(self._sleep_until(at))

    async def _sleep_until(self, at: datetime) -> None:
        try:
            await workflow.sleep(max(at - workflow.now(), timedelta(milliseconds=1)))
        except asyncio.CancelledError:
            return
        self._wake()

    def _search_attribute_changes(self) -> list[SearchAttributeUpdate[Any]]:
        """The attributes to upsert this task (at most one upsert per task); an amount alone,
        soon after the last one, is held back (SA_THROTTLE)."""
        s = self.state
        wanted: list[SearchAttributeUpdate[Any]] = [
            sa.CONTRACT_STATUS.value_set(s.status.value),
            sa.OVERDUE_COUNT.value_set(s.overdue_count),
            sa.OUTSTANDING_AMOUNT.value_set(float(Decimal(s.outstanding))),
            sa.NEXT_DUE_AT.value_set(s.next_due_at) if s.next_due_at else sa.NEXT_DUE_AT.value_unset(),
        ]
        if s.spec.policy is not None:
            wanted.append(sa.ESCALATION_LEVEL.value_set(s.escalation_level))
        current = workflow.info().typed_search_attributes
        changes: list[SearchAttributeUpdate[Any]] = [u for u in wanted if current.get(u.key) != getattr(u, "value", None)]
        now = workflow.now()
        amount_only = [u.key for u in changes] == [sa.OUTSTANDING_AMOUNT]
        settles = not Decimal(s.outstanding) or not current.get(sa.OUTSTANDING_AMOUNT)  # to or from zero: at once
        if (amount_only and not settles and s.status == ContractStatus.ACTIVE and self._amount_upserted_at is not None
                and now < self._amount_upserted_at + AMOUNT_EVERY and workflow.patched(SA_THROTTLE)):
            self._amount_due_at = self._amount_upserted_at + AMOUNT_EVERY  # held back: _publish wakes for it
            return []
        if sa.OUTSTANDING_AMOUNT in [u.key for u in changes]:
            self._amount_upserted_at, self._amount_due_at = now, None
        elif not amount_only:
            self._amount_due_at = None  # nothing held back any more (the amount came back to its value)
        return changes

    def _close(self, status: ContractStatus, reason: str, actor: str = "system") -> None:
        s = self.state
        s.status, s.closed_at, s.close_reason = status, workflow.now(), reason
        self._journal.emit(f"contract.{status.value}", {"reason": reason, "outstanding": s.outstanding}, actor=actor)
        for task in self._escalations.values():
            task.cancel()  # a closed contract chases nobody

    # ------------------------------------------------------------------ projection
    async def _project_forever(self) -> None:
        while True:
            await workflow.wait_condition(lambda: self._projection_wanted)
            self._projection_wanted = False
            p = self._projector
            # Closing or continuing as new: a delta handed to the API must be known written first.
            delta = p.delta(self.state, workflow.info().workflow_id, self._journal, workflow.now(),
                            force=self._verify_handed and bool(p.handed))
            if delta is None:
                continue
            delta.requires_version = p.requires()
            self._projecting = True
            try:
                try:
                    await workflow.execute_local_activity(activities.project_delta, delta, **PROJECTION_NOW)
                except FailureError as exc:  # a local activity's failure is its ApplicationError itself
                    if isinstance(exc, CancelledError) or _behind(exc):
                        raise
                    await workflow.execute_activity(activities.project_delta, delta, **PROJECTION_LATER)
            except FailureError as exc:
                if not _behind(exc):
                    p.abandon(delta, self._journal)
                    raise
                # A delta handed to the API never reached the read model: every item again.
                p.abandon(delta, self._journal)
                self._projector = p.reset(self._journal)
                self._projection_wanted = True
                continue
            except BaseException:
                p.abandon(delta, self._journal)
                raise
            finally:
                self._projecting = False
            if delta.requires_version is not None:
                p.confirm(delta.requires_version)
            p.settle(self.state)
            # The written delta is not kept: this frame waits here until the next change, and the
            # delta (every reminder plan, on a contract's first) would stay cached with the contract.
            del delta

    def _projected(self) -> bool:
        return not self._projecting and not self._projection_wanted and not self._journal.events \
            and not self._journal.notices and not self._projector.handed

    def _answer(self, result: Any, seen: int | None) -> Any:
        """An update from the API (``seen``: the version its read-model row held) answers with the
        delta of what it changed, for the API to write: this task then runs no local activity.
        Otherwise (another caller, a local activity already writing, a closing contract, a delta
        the API never wrote) the run loop's local activity writes it, as before."""
        if seen is None or self._projecting or self.state.status != ContractStatus.ACTIVE \
                or not workflow.patched(API_PROJECTION):
            return result
        p, now = self._projector, workflow.now()
        p.confirm(seen)
        if p.missing(seen, now, HANDED_GRACE):
            self._projector = p.reset(self._journal)
            self._projection_wanted = True
            return result
        delta = p.hand_over(self.state, workflow.info().workflow_id, self._journal, now)
        if delta is None:
            return result
        if self._fresh_at == now:
            self._handed_at = now  # the projector holds everything up to here
        return replace(result, projection=delta)

    # ------------------------------------------------------------------ escalation
    def _settle_escalations(self) -> None:
        """Start the chase of what fell due, stop the chase of what was resolved."""
        j = self._journal
        while j.resolved or j.fell_due:
            if j.resolved:
                item_type, key = j.resolved.pop(0)
                self._stop_escalation(item_type, key)
            else:
                item_type, key = j.fell_due.pop(0)
                item = self._item(item_type, key)
                if item is not None and self.state.status == ContractStatus.ACTIVE:
                    self._start_escalation(item_type, item)

    def _item(self, item_type: str, key: str) -> Item | None:
        items: list[Any] = {"milestone": self.state.milestones, "installment": self.state.installments,
                            "approval": self.state.approvals}[item_type]  # type: ignore[assignment]
        return next((x for x in items if x.key == key), None)

    def _start_escalation(self, item_type: str, item: Item) -> None:
        policy = self.state.spec.policy
        if policy is None or not policy.escalation:
            return
        ident = f"{item_type}:{item.key}"
        if ident in self._escalations and not self._escalations[ident].done():
            return
        self._escalations[ident] = asyncio.create_task(self._escalate(item_type, item))

    def _stop_escalation(self, item_type: str, key: str) -> None:
        """The item was resolved: its escalation stops at once and notifies nobody after this."""
        task = self._escalations.pop(f"{item_type}:{key}", None)
        if task is None:
            return
        if not task.done():
            task.cancel()
            self._stopping.append(task)  # awaited before the contract closes
        self._journal.emit("escalation.stopped", {"item_type": item_type, "key": key})

    async def _escalate(self, item_type: str, item: Item) -> None:
        s = self.state
        assert s.spec.policy is not None and item.due_at is not None
        parent = workflow.info().workflow_id
        child_id = escalation_workflow_id(parent, item_type, item.key, int(item.due_at.timestamp())) + f"/r{s.run}" + (
            f"/v{s.contract_version}" if s.contract_version > 1 else "")
        try:
            await workflow.execute_child_workflow(
                EscalationWorkflow.run,
                EscalationInput(**facts(s, item_type, item), parent_workflow_id=parent, due_at=item.due_at,
                                levels=list(s.spec.policy.escalation)),
                id=child_id,
                static_summary=f"Escalation: {item_type} {item.key} of {s.spec.title}",
            )
        except asyncio.CancelledError:
            raise
        except ChildWorkflowError as exc:
            if isinstance(exc.cause, CancelledError):
                return  # we cancelled it (the item was resolved): not a failure
            self._escalation_failed(item_type, item, exc)
        except Exception as exc:  # noqa: BLE001 - a broken chain is recorded, the contract lives on
            self._escalation_failed(item_type, item, exc)

    def _escalation_failed(self, item_type: str, item: Item, exc: BaseException) -> None:
        self._journal.emit("escalation.failed", {"item_type": item_type, "key": item.key, "error": str(exc)})
        self._wake()

    # ------------------------------------------------------------------ background work
    async def _ask_calendar(self, key: str) -> None:
        base_text, offset = key.split("|")
        policy = self.state.spec.policy
        assert policy is not None
        try:
            due = datetime.fromisoformat(await workflow.execute_activity(
                activities.business_due,
                BusinessDueRequest(datetime.fromisoformat(base_text), offset, policy.business_timezone),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=5),
            ))
        except Exception as exc:  # noqa: BLE001 - an unpublished year: say so, never guess silently
            due = add_duration(datetime.fromisoformat(base_text), offset)
            self._journal.emit("calendar.unavailable", {"base": base_text, "offset": offset, "error": str(exc),
                                                        "used_calendar_days": due.isoformat()})
        self.state.calendar[key] = due
        self._changed()

    async def _store_agreement(self, request: AgreementRequest) -> None:
        try:
            document_id = await workflow.execute_activity(
                activities.store_agreement, request, start_to_close_timeout=timedelta(seconds=30),
                # Keeps retrying while the database is away; a template error is non-retryable.
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
            )
            self._journal.emit("document.created", {"document_id": document_id, "kind": "supplementary_agreement",
                                                    "amendment_id": request.amendment_id,
                                                    "contract_version": request.contract_version})
        except Exception as exc:  # noqa: BLE001 - recorded for operators; the contract lives on
            self._journal.emit("document.failed", {"amendment_id": request.amendment_id, "error": str(exc)})
        self._wake()

    async def _start_renewal(self, request: RenewalRequest) -> None:
        try:
            workflow_id = await workflow.execute_activity(
                activities.start_renewal, request, start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
            )
            self._journal.emit("renewal.started", {"next_contract_id": request.spec.contract_id,
                                                   "workflow_id": workflow_id})
        except Exception as exc:  # noqa: BLE001 - recorded for operators
            self._journal.emit("renewal.failed", {"next_contract_id": request.spec.contract_id, "error": str(exc)})
        self._wake()

    def _renew_if_wanted(self) -> None:
        s = self.state
        if not renewal.wanted(s):
            return
        nxt = renewal.next_term(s, str(workflow.uuid4()).replace("-", "")[:16])
        s.renewed_by = nxt.contract_id
        s.pending_renewals.append(RenewalRequest(spec=nxt))
        self._journal.emit("contract.renewed", {"next_contract_id": nxt.contract_id,
                                                "effective_at": nxt.effective_at.isoformat(),
                                                "end_at": nxt.end_at.isoformat()})

    # ------------------------------------------------------------------ continue-as-new
    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        limit = self._input.continue_as_new_after_events
        if limit and info.get_current_history_length() >= limit:
            return True
        return info.is_continue_as_new_suggested()

    async def _continue_as_new(self) -> None:
        # No update or signal may be lost, and the read model is brought up to date first: the
        # next run carries only the state (its first delta writes every item again, idempotently).
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() and self._calendar.idle()
                                      and self._documents.idle() and self._renewals.idle())
        self._journal.emit("contract.continued", {"run": self.state.run + 1,
                                                  "history_length": workflow.info().get_current_history_length()})
        self._verify_handed = self._projection_wanted = True
        await workflow.wait_condition(lambda: self._projected() and workflow.all_handlers_finished())
        workflow.continue_as_new(ContractWorkflowInput(
            spec=self.state.spec, carried=self.state,
            continue_as_new_after_events=self._input.continue_as_new_after_events))

    # ------------------------------------------------------------------ query
    @workflow.query
    def state_query(self) -> ContractState:
        if self._legacy is not None:
            return self._legacy.state_query()
        return self.state

    # ------------------------------------------------------------------ updates
    @workflow.update
    def record_payment(self, p: PaymentInput) -> PaymentResult:
        if self._legacy is not None:
            return self._legacy.record_payment(p)
        payments.check(self.state, p, self._dates_bounded)
        return self._answer(self._pay(p), p.read_model_version)

    @record_payment.validator
    def _validate_payment(self, p: PaymentInput) -> None:
        if self._legacy is not None:
            return self._legacy._validate_payment(p)
        payments.check(self.state, p)

    @staticmethod
    def _dates_bounded() -> bool:
        return workflow.patched(PAYMENT_DATES)

    def _pay(self, p: PaymentInput) -> PaymentResult:
        result = payments.apply(self.state, p, self._journal)
        if result.applied:
            milestones.collect_if_settled(self.state, self._journal)
            self._changed()
        return result

    @workflow.update
    def record_payments(self, batch: PaymentBatchInput) -> list[PaymentOutcome]:
        """A statement's lines for this contract in one round trip: each applied, found already
        recorded, or refused on its own (one bad line does not refuse the others)."""
        if self._legacy is not None:
            return self._legacy.record_payments(batch)
        outcomes = []
        for p in batch.payments:
            try:
                payments.check(self.state, p, self._dates_bounded)
            except ApplicationError as exc:
                outcomes.append(PaymentOutcome(p.reference, error_type=exc.type, error=exc.message))
                continue
            r = self._pay(p)
            outcomes.append(PaymentOutcome(p.reference, r.applied, r.outstanding, r.credit, r.allocations))
        return outcomes

    @record_payments.validator
    def _validate_payments(self, batch: PaymentBatchInput) -> None:
        if self._legacy is not None:
            return self._legacy._validate_payments(batch)
        if self.state.status != ContractStatus.ACTIVE:
            raise conflict(f"contract is {self.state.status}; payments can no longer be recorded")
        if not batch.payments or len(batch.payments) > MAX_PAYMENTS_PER_BATCH:
            raise invalid(f"a payment batch holds 1 to {MAX_PAYMENTS_PER_BATCH} payments")

    @workflow.update
    def complete_milestone(self, c: CompleteMilestoneInput) -> OperationResult:
        if self._legacy is not None:
            return self._legacy.complete_milestone(c)
        milestones.check_complete(self.state, c)
        return self._answer(self._done(milestones.complete(self.state, c, self._journal)), c.read_model_version)

    @complete_milestone.validator
    def _validate_complete(self, c: CompleteMilestoneInput) -> None:
        if self._legacy is not None:
            return self._legacy._validate_complete(c)
        milestones.check_complete(self.state, c)

    @workflow.update
    def report_progress(self, p: ProgressInput) -> OperationResult:
        if self._legacy is not None:
            return self._legacy.report_progress(p)
        milestones.check_progress(self.state, p)
        result = milestones.report_progress(self.state, p, self._journal)
        return self._answer(self._done(result), p.read_model_version) if result.changed else result

    @report_progress.validator
    def _validate_progress(self, p: ProgressInput) -> None:
        if self._legacy is not None:
            return self._legacy._validate_progress(p)
        milestones.check_progress(self.state, p)

    @workflow.update
    def waive_milestone(self, w: WaiveMilestoneInput) -> OperationResult:
        if self._legacy is not None:
            return self._legacy.waive_milestone(w)
        milestones.check_waive(self.state, w)
        return self._answer(self._done(milestones.waive(self.state, w, self._journal)), w.read_model_version)

    @waive_milestone.validator
    def _validate_waive(self, w: WaiveMilestoneInput) -> None:
        if self._legacy is not None:
            return self._legacy._validate_waive(w)
        milestones.check_waive(self.state, w)

    @workflow.update
    def terminate(self, t: TerminateInput) -> OperationResult:
        if self._legacy is not None:
            return self._legacy.terminate(t)
        self._check_terminate(t)
        return self._apply_terminate(t)

    @terminate.validator
    def _validate_terminate(self, t: TerminateInput) -> None:
        if self._legacy is not None:
            return self._legacy._validate_terminate(t)
        self._check_terminate(t)

    def _check_terminate(self, t: TerminateInput) -> None:
        if self.state.status != ContractStatus.ACTIVE:
            raise conflict(f"contract is already {self.state.status}")
        if not t.reason or not t.reason.strip():
            raise invalid("terminating a contract needs a written reason")

    def _apply_terminate(self, t: TerminateInput) -> OperationResult:
        self._close(ContractStatus.TERMINATED, t.reason, actor=t.by or "system")
        return self._done(OperationResult(self.state.status, None, self.state.version))

    def _done(self, result: OperationResult) -> OperationResult:
        self._changed()
        return replace(result, contract_status=self.state.status, version=self.state.version)

    @workflow.update
    def request_amendment(self, r: RequestAmendmentInput) -> AmendmentResult:
        if self._legacy is not None:
            return self._legacy.request_amendment(r)
        existing = amendments.find(self.state, r.amendment_id)
        if existing is not None:
            return AmendmentResult(existing, self.state.contract_version, created=False)
        amendments.check_request(self.state, r, workflow.now(), keep_order=lambda: workflow.patched(MOVES_KEEP_ORDER))
        a = amendments.request(self.state, r, self._journal)
        self._changed()
        return AmendmentResult(a, self.state.contract_version)

    @request_amendment.validator
    def _validate_request(self, r: RequestAmendmentInput) -> None:
        if self._legacy is not None:
            return self._legacy._validate_request(r)
        if amendments.find(self.state, r.amendment_id) is None:
            amendments.check_request(self.state, r, workflow.now())

    @workflow.update
    def decide_amendment(self, d: DecideAmendmentInput) -> AmendmentResult:
        if self._legacy is not None:
            return self._legacy.decide_amendment(d)
        amendments.check_decision(self.state, d, workflow.now(),
                                  still_current=d.decision == "approve" and workflow.patched(AMENDMENT_STILL_CURRENT),
                                  keep_order=lambda: workflow.patched(MOVES_KEEP_ORDER))
        a = amendments.decide(self.state, d, self._journal)
        self._changed()
        return AmendmentResult(a, self.state.contract_version)

    @decide_amendment.validator
    def _validate_decision(self, d: DecideAmendmentInput) -> None:
        if self._legacy is not None:
            return self._legacy._validate_decision(d)
        amendments.check_decision(self.state, d, workflow.now())

    # ------------------------------------------------------------------ signals
    # The same operations for senders that cannot wait for an answer.  A signal cannot be
    # refused, so an invalid one is recorded as ``signal.rejected`` and changes nothing.
    @workflow.signal
    def record_payment_signal(self, p: PaymentInput) -> None:
        if self._legacy is not None:
            return self._legacy.record_payment_signal(p)
        self._signal("record_payment", p, lambda: payments.check(self.state, p, self._dates_bounded),
                     lambda: self._pay(p))

    @workflow.signal
    def complete_milestone_signal(self, c: CompleteMilestoneInput) -> None:
        if self._legacy is not None:
            return self._legacy.complete_milestone_signal(c)
        self._signal("complete_milestone", c, lambda: milestones.check_complete(self.state, c),
                     lambda: self._done(milestones.complete(self.state, c, self._journal)))

    @workflow.signal
    def report_progress_signal(self, p: ProgressInput) -> None:
        if self._legacy is not None:
            return self._legacy.report_progress_signal(p)
        self._signal("report_progress", p, lambda: milestones.check_progress(self.state, p),
                     lambda: self._done(milestones.report_progress(self.state, p, self._journal)))

    @workflow.signal
    def waive_milestone_signal(self, w: WaiveMilestoneInput) -> None:
        if self._legacy is not None:
            return self._legacy.waive_milestone_signal(w)
        self._signal("waive_milestone", w, lambda: milestones.check_waive(self.state, w),
                     lambda: self._done(milestones.waive(self.state, w, self._journal)))

    @workflow.signal
    def terminate_signal(self, t: TerminateInput) -> None:
        if self._legacy is not None:
            return self._legacy.terminate_signal(t)
        self._signal("terminate", t, lambda: self._check_terminate(t), lambda: self._apply_terminate(t))

    def _signal(self, name: str, arg: object, check: Callable[[], None], apply: Callable[[], object]) -> None:
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - every refusal is recorded, none crashes the run
            self._journal.emit("signal.rejected", {"signal": name, "reason": str(exc)})
            self._wake()
            return
        apply()



def _behind(exc: BaseException) -> bool:
    """The projection found the read model without a delta handed to the API (the local
    activity's own failure, or the regular activity's cause)."""
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    return isinstance(cause, ApplicationError) and cause.type == READ_MODEL_BEHIND


def _raise_if_crashed(loops: list[asyncio.Task[None]]) -> None:
    """A background loop never ends on its own: if one did, it hit a bug.  Raising it here fails
    the workflow task (retried, and shown in the Temporal UI), never silently stops the loop."""
    for task in loops:
        if task.done():
            task.result()
            raise RuntimeError("a contract background loop ended")
