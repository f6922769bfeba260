"""Reminders before due dates, and how far an overdue item's escalation has gone.

Reminders do not wake the contract: for every open, dated item the workflow works out its
*plan* (which reminders at which instants) and hands it to the notification outbox with the
projection; the outbox's dispatcher sends each at its time, once, and a new plan (the date moved,
the item was resolved, the contract closed) cancels what is no longer wanted.  So a contract's
history grows with what happens to it, not with the calendar.

The rules are the ones reminders always had: each item's owner at the policy's offsets (an item
may carry its own); an item registered (or handed over) after some offsets have passed gets one
catch-up reminder, the nearest, not a burst, and none for what a hand-off already told them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import cast

from core.durations import to_timedelta
from workflows.contract import schedule
from workflows.contract.notices import Item, Term, notice, outbox_key, policy
from workflows.types import (
    ApprovalState,
    ApprovalStatus,
    ContractState,
    ContractStatus,
    InstallmentState,
    InstallmentStatus,
    MilestoneState,
    MilestoneStatus,
    ReminderPlan,
    ScheduledNotice,
)

DAY = timedelta(days=1)


def offsets(state: ContractState, item: Item) -> list[str]:
    own = getattr(item, "reminders", None)  # a milestone or approval may carry its own offsets
    return list(own) if own is not None else list(policy(state).reminders)


def is_timed(item: Item) -> bool:
    """Open, with a firm date: the items reminders are for.  (By exact type, not ``isinstance``:
    the item types have no subclasses, and this runs ~30 times a workflow task, where the sandbox
    makes each ``isinstance`` a wrapped call.)"""
    if type(item) is MilestoneState:
        return item.status in schedule.OPEN_MILESTONE and not item.due_estimated and item.due_at is not None
    if type(item) is InstallmentState:
        return item.status in schedule.OPEN_INSTALLMENT and not item.due_estimated and item.due_at is not None
    if type(item) is Term:
        return True
    return cast(ApprovalState, item).status == ApprovalStatus.PENDING


def term(state: ContractState) -> Term | None:
    """The end of term as a reminder item, with the reminders that fall inside the term as
    registered (a contract registered 20 days before its end gets no "60 days left")."""
    r = state.spec.renewal
    if state.spec.policy is None or r is None or state.past_end or state.status != ContractStatus.ACTIVE:
        return None
    start = state.spec.clock_start or state.spec.effective_at
    end = state.spec.end_at
    return Term(end, state.spec.title, reminders=[o for o in r.reminders if end - to_timedelta(o) >= start])


def plan(state: ContractState, item_type: str, item: Item, now: datetime) -> ReminderPlan:
    """The reminders ``item`` still wants, as of ``now``: empty once it is resolved, undated or
    the contract is closed (the outbox then cancels what it still holds for it)."""
    out = ReminderPlan(item_type, item.key)
    if state.spec.policy is None or state.status != ContractStatus.ACTIVE or not is_timed(item):
        return out
    due = item.due_at
    if due is None or due <= now:
        return out
    told_until = getattr(item, "reminders_from", None)
    channels = state.spec.renewal.channels if isinstance(item, Term) and state.spec.renewal else \
        policy(state).reminder_channels
    catch_up: list[str] = []
    for offset in offsets(state, item):
        at = due - to_timedelta(offset)
        if at > now:
            out.notices.append(_reminder(state, item_type, item, offset, at, channels))
        elif told_until is None or at > told_until:
            catch_up.append(offset)
    if catch_up:
        nearest = min(catch_up, key=to_timedelta)
        out.notices.append(_reminder(state, item_type, item, nearest, now, channels))
    out.notices.sort(key=lambda n: n.send_at)
    return out


def _reminder(state: ContractState, item_type: str, item: Item, offset: str, at: datetime,
              channels: list[str]) -> ScheduledNotice:
    days = max(1, -(-int((item.due_at - at).total_seconds()) // 86400))  # type: ignore[operator]
    request = notice(state, "reminder", item_type, item, channels=channels, days=days, tag=f"-{offset}")
    request.planned_at_version = state.version
    return ScheduledNotice(outbox_key(request), at, request)


def reminder_items(state: ContractState) -> Iterator[tuple[str, Item]]:
    """Every item that may have reminders (timed or not: a plan for an untimed one is empty)."""
    for m in state.milestones:
        yield "milestone", m
    for i in state.installments:
        yield "installment", i
    for a in state.approvals:
        yield "approval", a
    t = term(state)
    yield "contract", t if t is not None else Term(state.spec.end_at, state.spec.title, reminders=[])


def overdue_items(state: ContractState) -> Iterator[tuple[str, Item]]:
    for m in state.milestones:
        if m.status == MilestoneStatus.OVERDUE:
            yield "milestone", m
    for i in state.installments:
        if i.status == InstallmentStatus.OVERDUE:
            yield "installment", i
    for a in state.approvals:
        if a.status == ApprovalStatus.OVERDUE:
            yield "approval", a


def escalation(state: ContractState, now: datetime) -> tuple[int, datetime | None]:
    """The highest level reached by an open overdue item, and when the next level falls due."""
    if state.spec.policy is None or state.status != ContractStatus.ACTIVE:
        return 0, None
    levels = state.spec.policy.escalation
    reached, upcoming = 0, []
    for _, item in overdue_items(state):
        if item.due_at is None:
            continue
        times = [item.due_at + to_timedelta(level.after) for level in levels]
        reached = max(reached, len([t for t in times if t <= now]))
        upcoming += [t for t in times if t > now]
    return reached, (min(upcoming) if upcoming else None)
