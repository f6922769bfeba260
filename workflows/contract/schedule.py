"""Due dates: absolute, relative to the contract's start, or to a predecessor's actual
completion; optionally counted in working days (China's official calendar).

Working-day arithmetic is not done here: it comes from the ``business_due`` activity, whose
answers are kept in ``state.calendar`` so a library upgrade never changes a replay.  Until an
answer is in, the date is a plain-day estimate (``due_estimated``) with no timer, and its key is
added to ``wanted`` for the workflow to ask for.
"""

from __future__ import annotations

from datetime import datetime

from core.durations import add_duration
from workflows.contract.journal import Journal
from workflows.contract.payments import owed
from workflows.types import (
    ApprovalStatus,
    ContractState,
    DueRule,
    InstallmentStatus,
    MilestoneState,
    MilestoneStatus,
)

RESOLVED_MILESTONE = (MilestoneStatus.DONE, MilestoneStatus.WAIVED)
OPEN_MILESTONE = (MilestoneStatus.PENDING, MilestoneStatus.IN_PROGRESS)
OPEN_INSTALLMENT = (InstallmentStatus.PENDING, InstallmentStatus.PARTIALLY_PAID)


def counts_working_days(state: ContractState) -> bool:
    policy = state.spec.policy
    return policy is not None and policy.business_days


def calendar_key(base: datetime, offset: str) -> str:
    return f"{base.isoformat()}|{offset}"


def business(state: ContractState, base: datetime, offset: str, wanted: list[str] | None) -> tuple[datetime, bool]:
    """``base + offset``; in working days when the policy says so (then an estimate until the
    calendar's answer is recorded)."""
    plain = add_duration(base, offset)
    if not counts_working_days(state):
        return plain, False
    key = calendar_key(base, offset)
    if key in state.calendar:
        return state.calendar[key], False
    if wanted is not None and key not in wanted:
        wanted.append(key)
    return plain, True


def milestone(state: ContractState, key: str) -> MilestoneState | None:
    for m in state.milestones:
        if m.key == key:
            return m
    return None


def due(state: ContractState, rule: DueRule, wanted: list[str] | None, depth: int = 0,
        bases: dict[str, datetime | None] | None = None) -> tuple[datetime | None, bool]:
    """A due date, and whether it is only an estimate (it waits on an open predecessor, or on
    the working-day calendar).  ``bases``: the open predecessors' dates found so far in this
    pass (``date_open_items``), so a chain is walked once, not once per item that waits on it."""
    if rule.at is not None:
        return business(state, rule.at, "P0D", wanted)
    if rule.after is None:
        spec = state.spec
        return business(state, spec.clock_start or spec.effective_at, rule.offset or "PT0S", wanted)
    pred = milestone(state, rule.after)
    if pred is None:
        return None, True
    if pred.status in RESOLVED_MILESTONE and pred.completed_at is not None:
        return business(state, pred.completed_at, rule.offset or "PT0S", wanted)
    if depth > len(state.milestones):
        return None, True
    if bases is not None and pred.key in bases:
        # Walked before in this pass, with the same state: the same date, and the calendar days it
        # asks for are already in ``wanted`` (in the order they were first asked for).
        base = bases[pred.key]
    else:
        base, _ = due(state, pred.due, wanted, depth + 1, bases)
        if bases is not None:
            bases[pred.key] = base
    if base is None:
        return None, True
    when, _ = business(state, base, rule.offset or "PT0S", wanted)
    return when, True


def date_open_items(state: ContractState, wanted: list[str] | None) -> None:
    """Give every open milestone and installment its current due date."""
    bases: dict[str, datetime | None] = {}
    for m in state.milestones:
        if m.status not in RESOLVED_MILESTONE:
            m.due_at, m.due_estimated = due(state, m.due, wanted, bases=bases)
            bases[m.key] = m.due_at  # what a step waiting on it starts from
    for i in state.installments:
        if i.status != InstallmentStatus.PAID:
            i.due_at, i.due_estimated = due(state, i.due, wanted, bases=bases)


def next_due_at(state: ContractState, now: datetime) -> datetime | None:
    """The earliest date still ahead among open milestones and installments (the NextDueAt
    search attribute and the list's column)."""
    upcoming = [m.due_at for m in state.milestones
                if m.status not in RESOLVED_MILESTONE and m.due_at is not None and m.due_at > now]
    upcoming += [i.due_at for i in state.installments
                 if i.status != InstallmentStatus.PAID and i.due_at is not None and i.due_at > now]
    return min(upcoming) if upcoming else None


def overdue_count(state: ContractState) -> int:
    return (sum(1 for m in state.milestones if m.status == MilestoneStatus.OVERDUE)
            + sum(1 for i in state.installments if i.status == InstallmentStatus.OVERDUE))


def next_deadline(state: ContractState, next_escalation_at: datetime | None) -> datetime | None:
    """When the workflow must next wake on its own: an open item or approval falls due, the term
    ends, or an overdue item reaches its next escalation level.  Reminders before due are not
    here: they are scheduled in the notification outbox and sent without waking the contract."""
    candidates = [x.due_at for x in state.milestones
                  if x.status in OPEN_MILESTONE and not x.due_estimated and x.due_at is not None]
    candidates += [x.due_at for x in state.installments
                   if x.status in OPEN_INSTALLMENT and not x.due_estimated and x.due_at is not None]
    candidates += [a.due_at for a in state.approvals if a.status == ApprovalStatus.PENDING]
    if not state.past_end:
        candidates.append(state.spec.end_at)
    if next_escalation_at is not None:
        candidates.append(next_escalation_at)
    return min(candidates) if candidates else None


def fall_due(state: ContractState, now: datetime, journal: Journal) -> None:
    """Mark what fell due unresolved as overdue; each starts its escalation."""
    for m in state.milestones:
        if m.status in OPEN_MILESTONE and not m.due_estimated and m.due_at is not None and m.due_at <= now:
            m.status = MilestoneStatus.OVERDUE
            m.overdue_since = m.due_at
            journal.emit("milestone.overdue", {"key": m.key, "owner": m.owner, "due_at": m.due_at.isoformat()})
            journal.item_fell_due("milestone", m.key)
    for i in state.installments:
        if i.status in OPEN_INSTALLMENT and not i.due_estimated and i.due_at is not None and i.due_at <= now:
            i.status = InstallmentStatus.OVERDUE
            i.overdue_since = i.due_at
            journal.emit("installment.overdue", {"key": i.key, "owed": owed(state, i), "due_at": i.due_at.isoformat()})
            journal.item_fell_due("installment", i.key)
    for a in state.approvals:
        if a.status == ApprovalStatus.PENDING and a.due_at <= now:
            a.status = ApprovalStatus.OVERDUE
            a.overdue_since = a.due_at
            journal.emit("approval.overdue", {"key": a.key, "owner": a.owner, "due_at": a.due_at.isoformat()})
            journal.item_fell_due("approval", a.key)
