"""The projection delta: what the read model has not been told yet.

The ``Projector`` remembers a signature of every item (and every reminder plan) as it last handed
it on, and builds the next ``ProjectionDelta`` from what differs, plus the new events, notices
and payments.  A delta is small whatever the contract's length: a payment touches the
installments it pays, a completion its milestone and the next one.  Nothing here is kept across
continue-as-new: the first delta of a run carries every item again (the writes are idempotent).

A delta made in an update from the API is *handed over*: the update answers with it and the API
writes it (api-projection-v1), so the update's task runs no local activity.  Until the workflow
knows the read model holds it (the API's next request says which version it read; a later local
activity's write finds it there), the handed delta's events and notices are kept: if one never
arrives (the API died between the answer and its write), ``reset`` puts them back and the next
delta carries every item again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from workflows.contract import payments, reminders
from workflows.contract.journal import Journal
from workflows.contract.notices import Item, outbox_key
from workflows.contract.schedule import RESOLVED_MILESTONE
from workflows.types import (
    AmendmentState,
    AmendmentStatus,
    ContractEvent,
    ContractFacts,
    ContractState,
    InstallmentRow,
    InstallmentState,
    MilestoneRow,
    MilestoneState,
    NotifyRequest,
    ProjectionDelta,
    ReminderPlan,
    ScheduledNotice,
)


def facts(state: ContractState) -> ContractFacts:
    return ContractFacts(
        status=state.status, amount=state.spec.amount, end_at=state.spec.end_at, paid_total=state.paid_total,
        outstanding=state.outstanding, credit=state.credit, overdue_count=state.overdue_count,
        next_due_at=state.next_due_at, closed_at=state.closed_at, close_reason=state.close_reason,
        settled_at=payments.settled_at(state), currency=state.spec.currency,
    )


def stage_starts(state: ContractState) -> list[datetime]:
    """Each milestone's stage start (analytics): the latest completion of an earlier milestone
    (by position), else the contract's effective date."""
    starts, latest = [], None
    for m in state.milestones:
        starts.append(latest or state.spec.effective_at)
        if m.completed_at is not None and (latest is None or m.completed_at > latest):
            latest = m.completed_at
    return starts


def _milestone_signature(m: MilestoneState, position: int, started: datetime) -> tuple[Any, ...]:
    # The stage start counts only once the milestone is resolved (the stage-time analytics read
    # completed rows): an open row is not rewritten each time an earlier one completes.
    return (position, started if m.status in RESOLVED_MILESTONE else None, m.name, m.kind, m.owner, m.department,
            m.standard, (m.due.at, m.due.offset, m.due.after), tuple(m.depends_on),
            m.due_at, m.due_estimated, m.status, m.progress, m.progress_message, m.completed_at, m.completed_by,
            m.note, m.overdue_since, m.planned_cost, m.actual_cost, m.satisfaction)


def _installment_signature(i: InstallmentState, position: int) -> tuple[Any, ...]:
    return (position, i.amount, i.paid, i.status, i.due_at, i.due_estimated, i.paid_at)


def _plan_signature(state: ContractState, item_type: str, item: Item) -> tuple[Any, ...]:
    """Everything a reminder plan depends on, but the clock: a plan is made anew only when it changes.
    (Not what an installment still owes: the outbox reads that when the reminder goes out, so a
    partial payment does not re-plan its reminders.)"""
    return (state.status, reminders.is_timed(item), item.due_at, getattr(item, "owner", None),
            getattr(item, "department", None), getattr(item, "name", None), tuple(reminders.offsets(state, item)),
            getattr(item, "reminders_from", None), state.spec.title)


def _amendment_signature(a: AmendmentState) -> tuple[Any, ...]:
    return (a.status, len(a.decisions), a.contract_version, a.impact is not None)


@dataclass(slots=True)
class Handed:
    """A delta handed to the API to write, until the read model is known to hold it."""

    version: int
    at: datetime
    events: list[ContractEvent] = field(default_factory=list)
    notices: list[NotifyRequest] = field(default_factory=list)


# The projection's failure when the read model lacks a delta this one builds on (``requires_version``).
READ_MODEL_BEHIND = "ReadModelBehind"

# Handed deltas larger than this go through the local activity as before: the answer (kept in the
# history with the update) stays small.
MAX_HANDED_ROWS = 40


class Projector:
    # An item's signature is kept as its hash: a cached contract holds ~40 of them, and the tuples
    # (20 fields for a milestone) were ~10 KB of it.  Two different signatures with one 64-bit hash
    # (odds of 1 in 2^64 per change) would leave that one change out of the read model until the
    # item changes again (the next continue-as-new rewrites every item).
    def __init__(self) -> None:
        self._sent: dict[tuple[str, ...], int] = {}  # what the read model holds, by item: hash(signature)
        self._in_flight: dict[tuple[str, ...], int | None] = {}
        self._payments_sent = 0
        self._payments_in_flight = 0
        self._facts: ContractFacts | None = None
        self._facts_in_flight: ContractFacts | None = None
        self.first = True
        self.handed: list[Handed] = []
        self._settled_version = -1  # the version of the last delta written or handed over (settled)
        self._version_in_flight = -1

    def delta(self, state: ContractState, workflow_id: str, journal: Journal, now: datetime, *,
              force: bool = False) -> ProjectionDelta | None:
        """The next delta, or None when the read model is up to date (``force``: an empty one
        then).  Takes the journal's events and notices; ``settle`` or ``abandon`` must follow."""
        sigs: dict[tuple[str, ...], int | None] = {}
        d = ProjectionDelta(state.spec.contract_id, workflow_id, state.version, facts(state))
        for position, (m, started) in enumerate(zip(state.milestones, stage_starts(state), strict=True)):
            sig = hash(_milestone_signature(m, position, started))
            if self._sent.get(("m", m.key)) != sig:
                d.milestones.append(MilestoneRow(position, m, started))
                sigs[("m", m.key)] = sig
        for position, i in enumerate(state.installments):
            sig = hash(_installment_signature(i, position))
            if self._sent.get(("i", i.key)) != sig:
                d.installments.append(InstallmentRow(position, i))
                sigs[("i", i.key)] = sig
        keys_m = {m.key for m in state.milestones}
        keys_i = {i.key for i in state.installments}
        for ident in list(self._sent):
            if ident[0] == "m" and ident[1] not in keys_m:
                d.removed_milestones.append(ident[1])
                sigs[ident] = None
            elif ident[0] == "i" and ident[1] not in keys_i:
                d.removed_installments.append(ident[1])
                sigs[ident] = None
        planned = set()
        for item_type, item in reminders.reminder_items(state):
            ident = ("plan", item_type, item.key)
            planned.add(ident)
            sig = hash(_plan_signature(state, item_type, item))
            if self._sent.get(ident) != sig:
                d.reminders.append(reminders.plan(state, item_type, item, now))
                sigs[ident] = sig
        for ident in [k for k in self._sent if k[0] == "plan" and k not in planned]:  # approval decided, item removed
            d.reminders.append(ReminderPlan(ident[1], ident[2]))
            sigs[ident] = None
        for a in state.amendments:
            sig = hash(_amendment_signature(a))
            if self._sent.get(("a", a.id)) != sig:
                d.amendments.append(a)
                sigs[("a", a.id)] = sig
        d.payments = list(state.payments[self._payments_sent:])
        d.events = list(journal.events)
        d.notices = [ScheduledNotice(outbox_key(r), journal.now(), r) for r in journal.notices]
        if self.first:
            d.spec = state.spec
        if not (sigs or d.payments or d.events or d.notices or self.first or force) and d.facts == self._facts:
            return None
        journal.events.clear()
        journal.notices.clear()
        self._in_flight = sigs
        self._payments_in_flight = len(state.payments)
        self._facts_in_flight = d.facts
        self._version_in_flight = d.version
        return d

    def settle(self, state: ContractState) -> None:
        """The delta was written: remember it, and let go of what now lives in the read model
        (a decided amendment's impact)."""
        for ident, sig in self._in_flight.items():
            if sig is None:
                self._sent.pop(ident, None)
            else:
                self._sent[ident] = sig
        self._payments_sent = self._payments_in_flight
        self._facts = self._facts_in_flight
        self._settled_version = self._version_in_flight
        self._in_flight = {}
        self.first = False
        for a in state.amendments:
            if a.status != AmendmentStatus.PENDING and a.impact is not None and ("a", a.id) in self._sent:
                a.impact = None
                self._sent[("a", a.id)] = hash(_amendment_signature(a))

    def abandon(self, delta: ProjectionDelta, journal: Journal) -> None:
        """The delta was not written (the run is ending): its events and notices go back first."""
        journal.events[:0] = delta.events
        journal.notices[:0] = [n.request for n in delta.notices]
        self._in_flight = {}

    # ---------------------------------------------------------------- handed to the API
    def hand_over(self, state: ContractState, workflow_id: str, journal: Journal, now: datetime
                  ) -> ProjectionDelta | None:
        """The next delta, for the API to write; None when there is nothing to write or it is
        better written by the local activity (a run's first delta, a large one, one with an
        amendment or a removed item)."""
        if self.first:
            return None
        base = self._settled_version
        delta = self.delta(state, workflow_id, journal, now)
        if delta is None:
            return None
        rows = len(delta.milestones) + len(delta.installments) + len(delta.reminders) + len(delta.notices) \
            + len(delta.payments)
        # Amendments too keep the local activity: settling lets a decided one's impact go from the
        # state, and only a written delta may do that.
        if rows > MAX_HANDED_ROWS or delta.amendments or delta.removed_milestones or delta.removed_installments:
            self.abandon(delta, journal)
            return None
        delta.requires_version = base
        self.settle(state)
        self.handed.append(Handed(delta.version, now, list(delta.events), [n.request for n in delta.notices]))
        return delta

    def confirm(self, version: int) -> None:
        """The read model holds ``version``: the deltas handed up to it are written."""
        self.handed = [h for h in self.handed if h.version > version]

    def missing(self, seen: int, now: datetime, grace: timedelta) -> bool:
        """The read model (at ``seen``) lacks a delta handed over more than ``grace`` ago: its
        writer is gone."""
        return any(h.version > seen and now - h.at >= grace for h in self.handed)

    def requires(self) -> int | None:
        """What a delta written now needs the read model to hold (the last one handed over)."""
        return self.handed[-1].version if self.handed else None

    def reset(self, journal: Journal) -> Projector:
        """A handed delta never reached the read model: a new projector, whose first delta carries
        every item again, with the handed deltas' events and notices put back in order."""
        journal.events[:0] = [e for h in self.handed for e in h.events]
        journal.notices[:0] = [n for h in self.handed for n in h.notices]
        return Projector()

